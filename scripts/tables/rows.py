"""Shared helpers for the generated tables: reading the result rows under docs/results/ and formatting them.

A results file is JSON: one row (an object), or a list of rows. A row is a measurement's fields (``top1``,
``wall_s``, ...) plus its provenance:

    command   the command as typed, no absolute paths ("" where a row was transcribed from a doc)
    seed      the seed it ran with (null where the command has no seed)
    date      UTC date or time it was made (ISO 8601), or "unknown"
    commit    the vitkit commit it ran on (or "<sha>+dirty"), or "unknown"
    torch     the torch version, or "unknown"
    machine   {"cpu": lscpu model name, "cores": threads used, "bf16_native": bool, "gpu": name or null},
              any field "unknown" where nobody recorded it; or the string "unknown"

and, where it applies, ``weights`` (the exact shipped weights it used, a versioned name such as
``ViT-Mini_8-tiny-imagenet.v1``) and ``source`` (for rows transcribed from a doc: the doc and the commit).

    load(pattern)    every row of every file matching the glob (relative to docs/results/), each with "file"
    pct(x, digits)   a fraction in [0, 1] -> "85.95 %" (a fraction, never a percent: 0.8595 -> "85.95 %")
    machine(row)     a short label for the row's machine: "Intel Xeon 2.80GHz, 2 cores, fp32 (no bf16)"
    mean_sd(values)  (mean, sample standard deviation; 0.0 for one value)
    table(header, rows, align)  markdown table text, no trailing newline
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
PROVENANCE = ("command", "seed", "date", "commit", "torch", "machine")


def read(path: Path) -> list[dict]:
    """The rows of one results file, each with "file" (its path relative to docs/results/)."""
    data = json.loads(Path(path).read_text())
    rows = data if isinstance(data, list) else [data]
    rel = Path(path).resolve().relative_to(RESULTS.resolve()).as_posix()
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{rel}: row {i} is {type(row).__name__}, expected an object")
        out.append({**row, "file": rel})
    return out


def load(pattern: str) -> list[dict]:
    """Every row of every JSON file under docs/results/ matching the glob `pattern` (e.g. "transfer/*.json",
    "**/*.json"), files in sorted order, rows in file order; each row carries "file". No match is an error: a
    table must not render empty because a file moved."""
    files = sorted(p for p in RESULTS.glob(pattern) if p.is_file() and p.suffix == ".json")
    if not files:
        raise FileNotFoundError(f"no results file under docs/results matches {pattern!r}")
    return [row for p in files for row in read(p)]


def one(pattern: str, **match) -> dict:
    """The single row of `pattern` whose fields equal `match`; an error if there is none or more than one."""
    rows = [r for r in load(pattern) if all(r.get(k) == v for k, v in match.items())]
    if len(rows) != 1:
        raise LookupError(f"{pattern} {match}: {len(rows)} rows, expected 1")
    return rows[0]


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction (0.8595, never a percent) as "85.95 %"; None -> "-"."""
    if x is None:
        return "-"
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"pct takes a fraction in [0, 1], got {x}")
    return f"{100 * x:.{digits}f} %"


def num(x: float | None, digits: int = 0) -> str:
    """A number with thousands separators ("1,374"), `digits` decimals; None -> "-"."""
    return "-" if x is None else f"{x:,.{digits}f}"


def machine(row: dict) -> str:
    """A short label for the machine a row ran on, e.g. "Intel Xeon 2.80GHz, 2 cores, fp32 (no bf16)",
    "AMD EPYC, 2 cores, bf16 native", "NVIDIA H100 80GB HBM3"; "unknown machine" where none was recorded."""
    m = row.get("machine", "unknown")
    if not isinstance(m, dict):
        return "unknown machine"
    if m.get("gpu"):
        return str(m["gpu"])
    cpu = m.get("cpu", "unknown")
    cpu = "unknown CPU" if cpu in (None, "unknown") else str(cpu)
    for noise in ("(R)", "(TM)", " CPU", " Processor", " 64-Core", " 48-Core", " 32-Core", " 16-Core"):
        cpu = cpu.replace(noise, "")
    cpu = " ".join(cpu.replace("@", "").split())
    parts = [cpu]
    if isinstance(m.get("cores"), int):
        parts.append(f"{m['cores']} cores")
    bf16 = m.get("bf16_native")
    if bf16 is True:
        parts.append("bf16 native")
    elif bf16 is False:
        parts.append("fp32 (no bf16)")
    return ", ".join(parts)


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample standard deviation with n - 1) of `values`; the deviation is 0.0 for a single value."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_sd of no values")
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A markdown table. `align` has one letter per column, "l" or "r" (default: all left)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    for r in rows:
        r = [str(c) for c in r]
        if len(r) != len(header):
            raise ValueError(f"row {r} has {len(r)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(r) + " |")
    return "\n".join(lines)

"""The results rows under docs/results/ and the tables rendered from them (scripts/render_tables.py): the pages
match their rows, every results file parses, no committed doc holds a path of the machine it was written on, and
every row a table reads carries its provenance (scripts/tables/rows.py PROVENANCE)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
# The tables whose every row must carry its provenance. The other pages' tables still read legacy rows written
# before the provenance fields existed; a page joins this tuple once its rows carry them.
TABLES_WITH_PROVENANCE = ("readme.",)
ABSOLUTE = re.compile(r"(?<![\w.])/(?:work|tmp|home|Users)/|\.\./shared")


def _render_tables():
    spec = importlib.util.spec_from_file_location("render_tables_under_test", ROOT / "scripts" / "render_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_tables_check_passes():
    lines: list[str] = []
    differ, problems = _render_tables().render(check=True, out=lines.append)
    assert (differ, problems) == (0, 0), "\n".join(lines)


def test_render_tables_check_cli_exit_code():
    proc = subprocess.run([sys.executable, "scripts/render_tables.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_results_json_parses():
    files = sorted(RESULTS.rglob("*.json"))
    assert len(files) > 200
    bad = []
    for p in files:
        try:
            data = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            bad.append(f"{p.relative_to(ROOT)}: {e}")
            continue
        if not isinstance(data, (dict, list)):
            bad.append(f"{p.relative_to(ROOT)}: a {type(data).__name__}, expected an object or a list of rows")
    assert not bad, "\n".join(bad)


def _committed_docs() -> list[Path]:
    out = subprocess.check_output(["git", "ls-files", "docs", "README.md", "CHANGELOG.md"], cwd=ROOT, text=True)
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_absolute_path_pattern():
    assert ABSOLUTE.search('"dataset": "/work/shared/data/x"') and ABSOLUTE.search("python3 ../shared/tools/a.py")
    assert ABSOLUTE.search("at /tmp/run1") and ABSOLUTE.search("/home/u/x") and ABSOLUTE.search("(/Users/me)")
    assert not ABSOLUTE.search("imagefolder:cifar10-100 runs/tmp/x docs/results/work/a.json")


def test_no_absolute_paths_in_committed_docs():
    files = _committed_docs()
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".json" for p in files)
    bad = []
    for p in files:
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue  # images
        for n, line in enumerate(text.splitlines(), 1):
            if ABSOLUTE.search(line):
                bad.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def table_rows():
    """Every row that the README's tables read: rows.read recorded while those table functions run."""
    render = _render_tables()
    functions = render.table_functions()
    rows_module = sys.modules["rows"]
    seen: dict[tuple[str, int], dict] = {}
    original = rows_module.read

    def recording(path):
        got = original(path)
        for i, row in enumerate(got):
            seen[(row["file"], i)] = row
        return got

    rows_module.read = recording
    try:
        for name, fn in functions.items():
            if name.startswith(TABLES_WITH_PROVENANCE):
                fn()
    finally:
        rows_module.read = original
    return rows_module.PROVENANCE, seen


def test_table_rows_carry_provenance(table_rows):
    provenance, seen = table_rows
    files = {f for f, _ in seen}
    assert {"parity/official-jax.json", "untuned/baselines.json", "quickstart/amd-epyc-bf16-seed0.json"} <= files
    missing = [f"{f} row {i}: lacks {', '.join(k for k in provenance if k not in row)}"
               for (f, i), row in sorted(seen.items()) if any(k not in row for k in provenance)]
    assert not missing, "\n".join(missing)
    bad_machine = [f"{f} row {i}: machine {row['machine']!r}" for (f, i), row in sorted(seen.items())
                   if row["machine"] != "unknown" and not (isinstance(row["machine"], dict)
                                                           and {"cpu", "cores", "bf16_native", "gpu"} <= set(row["machine"]))]
    assert not bad_machine, "\n".join(bad_machine)


def test_parity_rows_within_the_tests_tolerances():
    rows = json.loads((RESULTS / "parity" / "official-jax.json").read_text())
    by = {r["precision"]: r for r in rows}
    assert by["float32"]["max_abs_diff"] <= 5e-5 and by["float64"]["max_abs_diff"] <= 1e-9
    assert by["float32"]["cases"] == by["float64"]["cases"] == 7


def test_untuned_baselines_transcribed():
    rows = json.loads((RESULTS / "untuned" / "baselines.json").read_text())
    got = {(r["set"], r["baseline"]): r["top1"] for r in rows}
    assert got == {("untuned-cifar10-10", "1nn"): 0.2195, ("untuned-cifar10-10", "cnn"): 0.282,
                   ("untuned-cifar10-30", "1nn"): 0.2395, ("untuned-cifar10-30", "cnn"): 0.4265,
                   ("untuned-cifar10-60", "1nn"): 0.257, ("untuned-cifar10-60", "cnn"): 0.465}

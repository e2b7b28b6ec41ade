"""Render every generated results table in README.md, docs/*.md and benchmarks/README.md from docs/results/.

    python scripts/render_tables.py           rewrite the marked tables that differ (atomically, per file)
    python scripts/render_tables.py --check   change nothing; print the tables that differ; exit 1 if any does
    python scripts/render_tables.py [--check] docs/reproduction.md ...   only these pages

In markdown a generated table sits between two marker lines, and nothing else edits what is between them:

    <!-- table:transfer.finetune -->
    | ... rendered ... |
    <!-- /table -->

Table functions live in scripts/tables/<page>.py, one module per doc page, each defining
`TABLES: dict[str, Callable[[], str]]` (names prefixed by the page, e.g. "transfer.finetune"; each returns the
markdown table, no trailing newline). Every module in scripts/tables/ is imported except those whose name starts
with "_" or "rows"; scripts/tables/ is on sys.path, so a module imports the helpers as `from rows import load, pct`.

Problems, each printed as one line and making the run exit 1 (nothing is written when there is one): a marker
naming no table function, a table function that raises, an unclosed or nested marker, a table function used by no marker, two modules defining
the same name, a name not prefixed by its module's page.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vitkit.flags import write_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLES_DIR = ROOT / "scripts" / "tables"
OPEN = re.compile(r"^<!-- table:([A-Za-z0-9_.-]+) -->$")
CLOSE = "<!-- /table -->"


def pages() -> list[Path]:
    """The markdown files that may hold generated tables."""
    return [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
            if p.is_file()]


def table_functions() -> dict[str, Callable[[], str]]:
    """Every table function of every module in scripts/tables/ (see the module docstring)."""
    if str(TABLES_DIR) not in sys.path:
        sys.path.insert(0, str(TABLES_DIR))
    found: dict[str, Callable[[], str]] = {}
    owner: dict[str, str] = {}
    for path in sorted(TABLES_DIR.glob("*.py")):
        name = path.stem
        if name.startswith(("_", "rows")):
            continue
        module = importlib.import_module(name)
        tables = getattr(module, "TABLES", None)
        if not isinstance(tables, dict):
            raise SystemExit(f"scripts/tables/{path.name}: no TABLES dict")
        for key, fn in tables.items():
            if not key.startswith(name + "."):
                raise SystemExit(f"scripts/tables/{path.name}: table {key!r} is not prefixed {name + '.'!r}")
            if key in found:
                raise SystemExit(f"scripts/tables/{path.name}: table {key!r} is also defined in {owner[key]}")
            found[key], owner[key] = fn, path.name
    return found


def blocks(text: str, where: str) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(name, first line inside, line of the closing marker) for each marked table of `text`, and the problems."""
    lines = text.split("\n")
    out, problems, start = [], [], None
    for i, line in enumerate(lines):
        m = OPEN.match(line.strip())
        if m:
            if start is not None:
                problems.append(f"{where}:{i + 1}: table marker inside table {start[0]!r} (opened at line {start[1]})")
            start = (m.group(1), i + 1)
        elif line.strip() == CLOSE:
            if start is None:
                problems.append(f"{where}:{i + 1}: {CLOSE} without an opening marker")
            else:
                out.append((start[0], start[1], i))
                start = None
        elif line.lstrip().startswith("<!-- table:"):
            problems.append(f"{where}:{i + 1}: malformed table marker {line.strip()!r} "
                            "(expected '<!-- table:NAME -->')")
    if start is not None:
        problems.append(f"{where}:{start[1]}: table {start[0]!r} has no closing {CLOSE}")
    return out, problems


def render(check: bool, out=print, only: list[Path] | None = None) -> tuple[int, int]:
    """Render (or with `check`, compare) every marked table; print what differs and every problem.
    (tables that differed, problems); without `check`, the differing tables are rewritten unless there is a
    problem. `only`: just these pages (and no check for table functions used nowhere)."""
    functions = table_functions()
    problems: list[str] = []
    used: set[str] = set()
    new_texts: dict[Path, str] = {}
    differ = 0
    for page in pages():
        if only is not None and page.resolve() not in {p.resolve() for p in only}:
            continue
        where = page.relative_to(ROOT).as_posix()
        text = page.read_text()
        found, bad = blocks(text, where)
        problems += bad
        lines = text.split("\n")
        for name, first, close in reversed(found):
            used.add(name)
            if name not in functions:
                problems.append(f"{where}:{first}: table {name!r} has no table function in scripts/tables/")
                continue
            try:
                rendered = functions[name]().rstrip("\n").split("\n")
            except Exception as e:  # a table that cannot render is one line, and the run fails
                problems.append(f"{where}:{first}: table {name!r} failed to render: {type(e).__name__}: {e}")
                continue
            if lines[first:close] != rendered:
                differ += 1
                out(f"{where}:{first}: table {name!r} differs from what scripts/tables renders")
                if check:
                    for d in difflib.unified_diff(lines[first:close], rendered, "committed", "rendered", lineterm="", n=0):
                        out("    " + d)
                lines[first:close] = rendered
        if "\n".join(lines) != text:
            new_texts[page] = "\n".join(lines)
    for name in sorted(set(functions) - used) if only is None else []:
        problems.append(f"scripts/tables: table {name!r} is used by no marker in README.md, docs/*.md or "
                        "benchmarks/README.md")
    for p in problems:
        out(p)
    if not check and not problems:
        for page, text in new_texts.items():
            write_atomic(page, lambda f, text=text: f.write(text.encode()))
            out(f"rewrote {page.relative_to(ROOT).as_posix()}")
    return differ, len(problems)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    p.add_argument("pages", nargs="*", type=Path, help="only these markdown files (default: every page)")
    args = p.parse_args(argv)
    known = {q.resolve() for q in pages()}
    for q in args.pages:
        if q.resolve() not in known:
            print(f"render_tables.py: {q} is not one of the pages (README.md, docs/*.md, benchmarks/README.md)",
                  file=sys.stderr)
            return 2
    differ, problems = render(args.check, only=args.pages or None)
    return 1 if problems or (args.check and differ) else 0


if __name__ == "__main__":
    sys.exit(main())

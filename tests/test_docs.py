"""The documentation's commands and figures stay true: CI runs the README's test command verbatim, and measured
figures (test counts, durations) live in one place, benchmarks/README.md, not scattered through the README."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", quick, re.S)]


def test_ci_runs_the_readmes_test_command_verbatim():
    commands = readme_commands()
    assert len(commands) == 2 and commands[1].endswith("python -m pytest -q")
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert commands[1] in ci


def test_test_suite_figures_live_only_in_benchmarks_readme():
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"\b\d+ (passed|tests\b)|tests \(\d+ of them\)|suite runs in", readme)
    assert "benchmarks/README.md#test-suite-and-install" in readme
    bench = (ROOT / "benchmarks" / "README.md").read_text()
    section = bench[bench.index("## Test suite and install"):]
    assert re.search(r"\d+ passed", section) and re.search(r"20\d\d-\d\d-\d\d", section)  # a count, and its date

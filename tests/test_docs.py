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


USER_PAGES = ["README.md", "CHANGELOG.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def test_readme_is_a_front_page():
    """nanoGPT's and litgpt's front pages are under 15,000 characters; the details live in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200 and len(text) <= 15000, (len(text.splitlines()), len(text))
    for page in ("docs/training.md", "docs/transfer.md", "docs/interop.md", "docs/analysis.md",
                 "docs/reproduction.md", "CHANGELOG.md"):
        assert f"({page})" in text and (ROOT / page).is_file(), page


def test_user_pages_describe_the_current_state_without_team_paths():
    """A reader cannot find "the issue", a session or a path only the team has; history is in CHANGELOG.md."""
    notebook = re.compile(r"\b(the issue|this session|last session|previous session|session \d|today'?s?)\b", re.I)
    for page in USER_PAGES:
        text = (ROOT / page).read_text()
        assert "../shared" not in text and not re.search(r"(?<![\w.])/(work|home|Users)/", text), page
        if page != "CHANGELOG.md":
            hits = [m.group(0) for m in notebook.finditer(text)]
            assert not hits, f"{page}: {hits[:5]}"

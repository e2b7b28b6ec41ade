"""The results rows under docs/results/ and the tables rendered from them (scripts/render_tables.py): the pages
match their rows, every results file parses, no committed doc holds a path of the machine it was written on, and
every row a table reads carries its provenance (scripts/tables/rows.py PROVENANCE)."""

from __future__ import annotations

import importlib.util
import json
import os
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


# The renderer's rules and scripts/record.py (restored from d320fc9).
def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render_tables = _module("render_tables", ROOT / "scripts" / "render_tables.py")
rows = _module("rows", ROOT / "scripts" / "tables" / "rows.py")
record = _module("record", ROOT / "scripts" / "record.py")


def test_committed_tables_are_what_the_rows_render():
    said = []
    differ, problems = render_tables.render(check=True, out=said.append)
    assert (differ, problems) == (0, 0), "\n".join(said)


def test_reproduction_tables_render_the_study_rows():
    sys.path.insert(0, str(ROOT / "scripts" / "tables"))
    import reproduction

    text = reproduction.data_scale()
    # the BiT 25 % cell of docs/results/data-scale/results.json, by hand: top1 0.1346, wall 3332.x s
    cell = [r for r in rows.load("data-scale/results.json") if r["model"] == "BiT-R14x1-S" and r["fraction"] == 0.25]
    assert len(cell) == 1 and cell[0]["top1"] == 0.1346
    assert "| BiT-R14x1-S | 25 % (12,600) | 13.46 % |" in text and "| 3,332 s |" in text
    assert "| masked patch prediction |" in reproduction.mpp() and "| 44.55 % |" in reproduction.mpp()


def test_blocks_find_markers_and_name_every_problem():
    text = "a\n<!-- table:x.one -->\n| old |\n<!-- /table -->\n<!-- table:x.two -->\n<!-- table:x.three -->\n"
    found, problems = render_tables.blocks(text, "p.md")
    assert found == [("x.one", 2, 3)]
    assert any("inside table 'x.two'" in p for p in problems) and any("'x.three' has no closing" in p for p in problems)
    _, bad = render_tables.blocks("<!-- table: spaced -->\n", "p.md")
    assert bad == ["p.md:1: malformed table marker '<!-- table: spaced -->' (expected '<!-- table:NAME -->')"]


def _one_page(monkeypatch, tmp_path, text: str, functions: dict):
    """The renderer pointed at one page holding `text` under tmp_path, with `functions` as its table functions."""
    page = tmp_path / "page.md"
    page.write_text(text)
    monkeypatch.setattr(render_tables, "pages", lambda: [page])
    monkeypatch.setattr(render_tables, "ROOT", tmp_path)
    monkeypatch.setattr(render_tables, "table_functions", lambda: functions)
    return page


def test_unknown_marker_and_unused_function_fail_the_check(monkeypatch, tmp_path):
    _one_page(monkeypatch, tmp_path, "<!-- table:nowhere.t -->\n<!-- /table -->\n", {"page.used": lambda: "| a |"})
    said = []
    assert render_tables.render(check=True, out=said.append) == (0, 2)
    assert any("'nowhere.t' has no table function" in s for s in said)
    assert any("'page.used' is used by no marker" in s for s in said)


def test_render_rewrites_only_between_markers(monkeypatch, tmp_path):
    page = _one_page(monkeypatch, tmp_path, "intro\n<!-- table:page.t -->\n| stale |\n<!-- /table -->\nend\n",
                     {"page.t": lambda: "| a |\n|---|\n| 1 |"})
    assert render_tables.render(check=True, out=lambda s: None) == (1, 0)
    assert "| stale |" in page.read_text()  # --check changes nothing
    assert render_tables.render(check=False, out=lambda s: None) == (1, 0)
    assert page.read_text() == "intro\n<!-- table:page.t -->\n| a |\n|---|\n| 1 |\n<!-- /table -->\nend\n"
    assert render_tables.render(check=True, out=lambda s: None) == (0, 0)


def test_helpers():
    assert rows.pct(0.8595) == "85.95 %" and rows.pct(0.3056, 1) == "30.6 %" and rows.pct(None) == "-"
    with pytest.raises(ValueError):
        rows.pct(85.95)  # a percent, not a fraction
    m, sd = rows.mean_sd([0.40, 0.42, 0.44])
    assert m == pytest.approx(0.42) and sd == pytest.approx(0.02)
    assert rows.mean_sd([0.5]) == (0.5, 0.0)
    row = {"machine": {"cpu": "Intel(R) Xeon(R) CPU @ 2.80GHz", "cores": 2, "bf16_native": False, "gpu": None}}
    assert rows.machine(row) == "Intel Xeon 2.80GHz, 2 cores, fp32 (no bf16)"
    assert rows.machine({"machine": "unknown"}) == "unknown machine"
    assert rows.table(["a", "b"], [[1, "x"]], "lr") == "| a | b |\n|---|---:|\n| 1 | x |"


def test_record_writes_a_row_with_provenance_and_refuses_to_overwrite(tmp_path, monkeypatch):
    # the interpreter by name on PATH: its absolute path may lie outside the repository (a venv elsewhere)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    code = ("import json, sys; print('log line'); print(json.dumps({'top1': 0.5, "
            "'checkpoint': sys.argv[1] + '/' + 'runs/r/checkpoint', 'data': '/' + 'elsewhere/set'}))")
    out = tmp_path / "row.json"
    row = record.record(out, [Path(sys.executable).name, "-c", code, str(ROOT)], seed=3, weights="ViT-Mini_8-tiny-imagenet.v1")
    saved = json.loads(out.read_text())
    assert saved == row
    assert saved["top1"] == 0.5 and saved["seed"] == 3 and saved["weights"] == "ViT-Mini_8-tiny-imagenet.v1"
    assert saved["checkpoint"] == "runs/r/checkpoint" and saved["data"] == "<outside the repository>/set"
    assert set(rows.PROVENANCE) <= set(saved) and saved["machine"]["cores"] >= 1
    assert isinstance(saved["machine"]["bf16_native"], bool) and saved["date"].endswith("Z")
    assert str(ROOT) not in out.read_text() and saved["command"].endswith(" .")
    with pytest.raises(record.UserError, match="exists"):
        record.record(out, [Path(sys.executable).name, "-c", "print('{}')"])
    with pytest.raises(record.UserError, match="absolute path /etc/hosts outside the repository"):
        record.record(tmp_path / "new.json", ["cat", "/etc/hosts"])
    assert not (tmp_path / "new.json").exists()


def test_record_cli_bad_input_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "record.py"), "--out", str(tmp_path / "r.json"), "--",
                        Path(sys.executable).name, "-c", "print('no json')"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("record.py: the command printed no JSON")
    assert not (tmp_path / "r.json").exists()

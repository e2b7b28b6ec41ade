"""benchmarks/compare_runs.py: the step-by-step comparison of two runs' metrics.jsonl."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"


def _run(d: Path, losses, extra=""):
    d.mkdir()
    lines = [json.dumps({"step": i + 1, "loss": x, "grad_norm": 1.0}) for i, x in enumerate(losses)]
    (d / "metrics.jsonl").write_text("\n".join(lines + [json.dumps({"step": 2, "top1": 0.5})]) + "\n" + extra)


def _compare(a, b):
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_identical_and_drifting_runs(tmp_path):
    _run(tmp_path / "a", [5.0, 4.5, 4.25])
    _run(tmp_path / "b", [5.0, 4.5, 4.25, 4.0], extra='{"step": 5, "lo')  # longer, last line cut by a kill
    _run(tmp_path / "c", [5.0, 4.5, 4.125])
    same = _compare(tmp_path / "a", tmp_path / "b")
    assert same.returncode == 0 and "3 common steps (1-3): 3 identical" in same.stdout
    drift = _compare(tmp_path / "a", tmp_path / "c")
    assert drift.returncode == 1 and "2 identical" in drift.stdout and "0.125 at step 3" in drift.stdout


def test_bad_input_is_one_line(tmp_path):
    _run(tmp_path / "a", [5.0])
    r = _compare(tmp_path / "a", tmp_path / "missing")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "missing/metrics.jsonl" in r.stderr

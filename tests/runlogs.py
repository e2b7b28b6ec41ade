"""Reading a run directory's logs in tests (metrics.jsonl step count, TensorBoard scalars), and a paced
`vitkit train` for tests that kill a run mid-way."""

from __future__ import annotations

import sys
from pathlib import Path

# `vitkit train ARGS` that sleeps SECONDS after each step (train()'s on_step), so that a kill lands mid-run
_PACED = ("import sys, time; from vitkit.cli import build_parser; from vitkit.train.cli import settings_from_args; "
          "from vitkit.train.loop import train; "
          "train(settings_from_args(build_parser('train').parse_args(['train', *sys.argv[2:]])), "
          "on_step=lambda record: time.sleep(float(sys.argv[1])))")


def paced_train(seconds: float, *args) -> list:
    """The command line of a `vitkit train *args` that sleeps `seconds` after every step."""
    return [sys.executable, "-c", _PACED, str(seconds), *map(str, args)]


def steps_logged(out: Path) -> int:
    """Training steps in out/metrics.jsonl so far (0 before the file exists)."""
    try:
        return sum('"loss"' in line for line in (out / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def tensorboard_scalars(out: Path, tag: str) -> list:
    """(step, value) pairs TensorBoard would show for `tag` in out/tensorboard (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), purge_orphaned_data=True).Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def metrics(out: Path) -> list:
    """Every record of out/metrics.jsonl."""
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def uninterrupted_and_resumed(root: Path, steps: int, crash_after: int, **settings) -> tuple[list, list]:
    """train() `steps` steps into root/ref; then the same run into root/cut, killed (an exception from on_step)
    after step `crash_after` and resumed with --resume. Both runs' metrics records, for an exact-resume check."""
    import pytest

    from vitkit.train.loop import TrainSettings, train

    train(TrainSettings(**settings, steps=steps, out=str(root / "ref")))

    class Crash(Exception):
        pass

    def crash(record):
        if record["step"] == crash_after:
            raise Crash

    with pytest.raises(Crash):
        train(TrainSettings(**settings, steps=steps, out=str(root / "cut")), on_step=crash)
    train(TrainSettings(**settings, steps=steps, out=str(root / "cut"), resume=True))
    return metrics(root / "ref"), metrics(root / "cut")

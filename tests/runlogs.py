"""Reading a run directory's logs in tests: metrics.jsonl step count and TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path


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

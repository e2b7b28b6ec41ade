"""Compare two runs of the same command step by step: are their training curves the same bits?

    python benchmarks/compare_runs.py RUN_A RUN_B

Reads each run's metrics.jsonl (the training loop's per-step log) and prints, over the steps both runs logged, how
many have the same loss and gradient norm to the bit, and the largest difference. A re-run of a seeded command on
the same machine and torch build should match exactly; on another machine, thread count or torch build the float
reduction order changes and the curves drift apart slowly (then compare final top-1 within noise instead).
Exit status 0 when every common step matches, 1 otherwise, 2 on bad input.
"""

import argparse
import json
import sys
from pathlib import Path


def steps(run: Path) -> dict:
    path = run / "metrics.jsonl"
    if not path.is_file():
        print(f"compare_runs: {path}: no such file (expected a vitkit train --out directory)", file=sys.stderr)
        sys.exit(2)
    out = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if "loss" in r and "step" in r:
            out[r["step"]] = r  # a resumed run logs steps after its checkpoint again: the last one counts
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args()
    a, b = steps(args.a), steps(args.b)
    common = sorted(set(a) & set(b))
    if not common:
        print(f"compare_runs: {args.a} and {args.b} have no logged step in common", file=sys.stderr)
        return 2
    same = [s for s in common if a[s]["loss"] == b[s]["loss"] and a[s].get("grad_norm") == b[s].get("grad_norm")]
    worst = max(common, key=lambda s: abs(a[s]["loss"] - b[s]["loss"]))
    print(f"{len(common)} common steps ({common[0]}-{common[-1]}): {len(same)} identical to the bit (loss and "
          f"gradient norm); largest loss difference {abs(a[worst]['loss'] - b[worst]['loss']):.3g} at step {worst}")
    return 0 if len(same) == len(common) else 1


if __name__ == "__main__":
    sys.exit(main())

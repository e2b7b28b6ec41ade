"""Record one measurement as a result row under docs/results/.

    python scripts/record.py --out docs/results/<topic>/<name>.json [--seed N] [--note TEXT] \
        [--weights NAME.vN] -- <command ...>

Runs the command (no shell), keeps its last stdout line that parses as a JSON object (vitkit's `--json` output)
as the result, and writes one row: the result's fields plus its provenance (scripts/tables/rows.py):
command as typed (paths under the repository made relative; any other absolute path is refused), seed, date
(UTC), commit (`git rev-parse HEAD`, "+dirty" when the tree has changes), torch and vitkit versions, wall_s,
machine (lscpu model name, the threads torch uses, bf16 native by vitkit.runtime.native_bf16, the GPU's name or
null), note and weights when given. Absolute paths inside the result (a checkpoint, a run folder) are made
relative to the repository, or replaced by "<outside the repository>/NAME". It refuses to overwrite a file; the
file appears only complete (vitkit.flags.partial_file, then rename).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vitkit.errors import UserError  # noqa: E402

ABSOLUTE = re.compile(r"(?<![\w.:/-])(/[\w.+-]+(?:/[\w.+@-]*)+|[A-Za-z]:\\\S+)")


def relative(text: str, refuse: bool) -> str:
    """`text` with absolute paths under the repository made relative; any other one refused (`refuse`) or
    replaced by "<outside the repository>/NAME"."""
    def sub(m):
        p = m.group(1)
        for path, root in ((Path(p), ROOT), (Path(p).resolve(), ROOT.resolve())):
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix() or "."
        if True:
            if refuse:
                raise UserError(f"record.py: the command holds the absolute path {p} outside the repository; "
                                "expected a relative path or an environment variable such as $VITKIT_DATA")
            return f"<outside the repository>/{Path(p).name}"
    return ABSOLUTE.sub(sub, text)


def scrub(value, refuse=False):
    """`relative` applied to every string of a JSON value."""
    if isinstance(value, str):
        return relative(value, refuse)
    if isinstance(value, list):
        return [scrub(v, refuse) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, refuse) for k, v in value.items()}
    return value


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict:
    import torch

    from vitkit.runtime import native_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    device = torch.device("cuda" if gpu else "cpu")
    return {"cpu": cpu_model(), "cores": torch.get_num_threads(), "bf16_native": bool(native_bf16(device)),
            "gpu": gpu}


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise UserError("record.py: the command printed no JSON object line on stdout (expected vitkit's --json output)")


def record(out: Path, command: list[str], seed=None, note=None, weights=None) -> dict:
    out = Path(out)
    if out.exists():
        raise UserError(f"record.py: --out {out} exists; expected a new file (results are never overwritten)")
    if out.suffix != ".json":
        raise UserError(f"record.py: --out {out}: expected a .json file")
    if not command:
        raise UserError("record.py: no command given after --")
    typed = relative(" ".join(command), refuse=True)
    import torch

    from vitkit.version import __version__

    t0 = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise UserError(f"record.py: the command exited with {proc.returncode}; nothing recorded")
    result = scrub(last_json(proc.stdout))
    provenance = {"command": typed, "seed": seed,
                  "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "commit": commit(), "torch": torch.__version__, "vitkit": __version__,
                  "wall_s": round(wall, 1), "machine": machine()}
    if note:
        provenance["note"] = note
    if weights:
        provenance["weights"] = weights
    row = {**result, **provenance}
    if any(k in result and result[k] != provenance[k] for k in provenance if k not in ("wall_s", "seed")):
        row["result_overridden"] = {k: result[k] for k in provenance if k in result}
    from vitkit.flags import write_atomic

    def write(f):
        f.write((json.dumps(row, indent=1) + "\n").encode())
        if out.exists():  # checked last, just before the rename
            raise UserError(f"record.py: --out {out} appeared while the command ran; not overwritten")

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, write)
    return row


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("record.py: expected `-- <command ...>` after the options", file=sys.stderr)
        return 2
    i = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int)
    p.add_argument("--note")
    p.add_argument("--weights", help="the exact shipped weights used, e.g. ViT-Mini_8-tiny-imagenet.v1")
    args = p.parse_args(argv[:i])
    try:
        record(args.out, argv[i + 1:], args.seed, args.note, args.weights)
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"recorded {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

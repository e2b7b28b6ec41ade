"""What averaging the weights of a fine-tuning run would give, measured without adding it to the trainer.

    python benchmarks/weight_averaging.py OUT.json -- --init R+ViT-Mini_8-tiny-imagenet --dataset imagefolder:SET

runs one `vitkit train` with the flags after `--` (so with exactly the defaults those flags get), and at its last
step also evaluates, on the same test split, averages of its weights:

* ``emaD``: an exponential moving average with decay D per step, started from the initial weights (no bias
  correction, so a long horizon keeps part of the pre-trained weights: 0.998^600 = 0.30);
* ``tailF``: the uniform average of the weights after each of the last fraction F of the steps (SWA-like);
* ``wiseA``: A * final + (1 - A) * initial weights (WiSE-FT, Wortsman et al. 2022, arXiv 2109.01903; the new head
  starts at zero, so its part is the final head scaled by A).

OUT.json gets {"raw": plain top-1, name: top-1 of that average}. The run itself is unchanged (its result, checkpoint
and metrics are what `vitkit train` gives). It hooks vitkit.train.loop's `fit` and `after_step` instead of adding
an --ema flag because the measurements (docs/transfer.md, "Weight averaging") did not justify one.
"""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout

import torch

import vitkit.train.loop as L
from vitkit.cli import main

DECAYS = (0.98, 0.99, 0.995, 0.998, 0.999)
TAILS = (0.5, 0.25)
WISE = (0.5, 0.7, 0.85)


def floats(module) -> dict:
    return {k: v.detach().float().clone() for k, v in module.state_dict().items() if v.dtype.is_floating_point}


def main_(out_json: str, argv: list) -> int:
    init, ema, tail, res = {}, {}, {}, {}
    fit, after_step = L.fit, L.after_step

    def fit_hook(run, data, plan, parts, *a, **k):
        init.update(floats(parts.core))
        ema.update({d: {n: v.clone() for n, v in init.items()} for d in DECAYS})
        return fit(run, data, plan, parts, *a, **k)

    def after_step_hook(run, data, plan, parts, progress, *a):
        live = floats(parts.core)
        for d, e in ema.items():
            for n, v in e.items():
                v.mul_(d).add_(live[n], alpha=1 - d)
        for f in TAILS:
            if progress.step > plan.total * (1 - f):
                t = tail.setdefault(f, [0, {n: torch.zeros_like(v) for n, v in live.items()}])
                t[0] += 1
                for n, v in t[1].items():
                    v.add_(live[n])
        if progress.step == plan.total:
            dtypes = {n: v.dtype for n, v in parts.core.state_dict().items()}
            cands = {f"ema{d}": e for d, e in ema.items()}
            cands.update({f"tail{f}": {n: v / t[0] for n, v in t[1].items()} for f, t in tail.items()})
            cands.update({f"wise{a_}": {n: a_ * v + (1 - a_) * init[n] for n, v in live.items()} for a_ in WISE})
            for name, w in cands.items():
                parts.core.load_state_dict({n: v.to(dtypes[n]) for n, v in w.items()}, strict=False)
                res[name] = L.evaluate(run, data, parts)["top1"]
            parts.core.load_state_dict({n: v.to(dtypes[n]) for n, v in live.items()}, strict=False)
            parts.model.train()
        return after_step(run, data, plan, parts, progress, *a)

    L.fit, L.after_step = fit_hook, after_step_hook
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["train", "--json"] + argv)
    if rc == 0:
        res["raw"] = json.loads(buf.getvalue().strip().splitlines()[-1])["top1"]
        with open(out_json, "w") as f:
            json.dump(res, f, indent=1)
        print(json.dumps(res))
    return rc


if __name__ == "__main__":
    if "--" not in sys.argv[2:]:
        sys.exit(__doc__)
    sys.exit(main_(sys.argv[1], sys.argv[sys.argv.index("--") + 1:]))

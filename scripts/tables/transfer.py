"""The generated tables of docs/transfer.md: fine-tuning and few-shot transfer of the shipped models, against
training from scratch and two references, and the measurements behind each transfer default.

Each table reads its rows from docs/results/ by file; a table names the weights its rows used (the versioned
shipped names: R+ViT-Mini_8-tiny-imagenet.v2, ViT-Mini_8-tiny-imagenet.v1, and the retired
R+ViT-Mini_8-tiny-imagenet.v1 where a table compares with it).
"""

from __future__ import annotations

from rows import load, mean_sd, num, pct, table

TUNING = ("cifar10-100", "hymenoptera", "cifar10-1k")
UNTUNED = (10, 30, 60)
SEEDS = (0, 1, 2)
SFX = {0: "", 1: "-seed1", 2: "-seed2"}
V2, VIT, RETIRED = "R+ViT-Mini_8-tiny-imagenet.v2", "ViT-Mini_8-tiny-imagenet.v1", "R+ViT-Mini_8-tiny-imagenet.v1"


def _one(pattern: str) -> dict:
    rows = load(pattern)
    if len(rows) != 1:
        raise LookupError(f"{pattern}: {len(rows)} rows, expected 1")
    return rows[0]


def top1(pattern: str) -> float:
    return _one(pattern)["top1"]


def baseline(set_: str, which: str) -> float:
    """The 1-NN ("nn1") or small-CNN ("cnn") reference on a set, as a fraction, from either row layout."""
    pattern = "untuned/baselines.json" if set_.startswith("untuned") else f"transfer/baselines-{set_}.json"
    for r in load(pattern):
        if r.get("set") != set_:
            continue
        if which in r:
            return r[which]
        if r.get("baseline") == {"nn1": "1nn", "cnn": "cnn"}[which]:
            return r["top1"]
    raise LookupError(f"no {which} baseline for {set_}")


def p(x: float, digits: int = 2) -> str:
    return pct(x, digits)


def seeds(values: list[float]) -> str:
    """"40.15 / 41.15 / 40.52 % (40.61)": per seed, then the mean."""
    m, _ = mean_sd(values)
    return " / ".join(f"{100 * v:.2f}" for v in values) + f" % ({100 * m:.2f})"


def gap(a: float, b: float) -> str:
    return f"{100 * (a - b):+.2f}"


# where each kind of run lives
def ft_cur(s, seed):
    return f"finetune-sweep-kd/{s}-dp02ra29-s{seed}.json"


def ft_dp01(s, seed):
    return f"finetune-sweep-kd/{s}-dp01ra29-s{seed}.json"


def ft_before(s, seed):
    return f"transfer-same-machine/kd{SFX[seed]}/finetune-{s}.json"


def scratch_tuning(s, seed):
    return f"transfer-same-machine/scratch{SFX[seed]}/scratch-{s}.json"


def scratch_dp01(s, seed):
    return f"finetune-sweep-kd/scratch-{s}-dp0.1-s{seed}.json"


def untuned(kind, n, seed):
    return f"untuned/{kind}-untuned-cifar10-{n}-s{seed}.json"


def _comparison(names, ft, sc, extra=None):
    """Rows per set: references, from scratch per seed, fine-tuned per seed, gap; then the mean row."""
    rows, means = [], {"nn1": [], "cnn": [], "sc": [], "ft": [], "x": []}
    for label, s in names:
        f = [top1(ft(s, k)) for k in SEEDS]
        c = [top1(sc(s, k)) for k in SEEDS]
        nn1, cnn = baseline(s, "nn1"), baseline(s, "cnn")
        row = [label, p(nn1), p(cnn), seeds(c)]
        if extra:
            x = [top1(extra(s, k)) for k in SEEDS]
            row.append(seeds(x))
            means["x"].append(mean_sd(x)[0])
        fm, cm = mean_sd(f)[0], mean_sd(c)[0]
        row += [seeds(f), f"**{gap(fm, cm)}**"]
        rows.append(row)
        for k, v in (("nn1", nn1), ("cnn", cnn), ("sc", cm), ("ft", fm)):
            means[k].append(v)
    m = {k: mean_sd(v)[0] for k, v in means.items() if v}
    last = ["mean", p(m["nn1"]), p(m["cnn"]), p(m["sc"])] + ([p(m["x"])] if extra else []) + [
        f"**{p(m['ft'])}**", f"**{gap(m['ft'], m['sc'])}**"]
    rows.append(last)
    return rows


def t_untuned() -> str:
    rows = _comparison([(f"untuned-cifar10-{n} ({10 * n} train images)", n) for n in UNTUNED],
                       lambda n, k: untuned("ft", n, k), lambda n, k: untuned("scratch", n, k))
    return table(["folder", "1-NN pixels", "small CNN", "from scratch, seeds 0 / 1 / 2 (mean)",
                  f"fine-tuned from {V2}, seeds 0 / 1 / 2 (mean)", "gap"], rows, "lrrrrr")


def _untuned_baseline_fix():
    # baseline() is called with the folder number for untuned sets: map it to the folder's name
    global baseline
    inner = baseline

    def wrapped(set_, which):
        return inner(f"untuned-cifar10-{set_}" if isinstance(set_, int) else set_, which)
    baseline = wrapped


_untuned_baseline_fix()


def t_tuning() -> str:
    rows = _comparison([(f"{s} ({num(_one(ft_cur(s, 0))['n_train'])} train images)", s) for s in TUNING],
                       ft_cur, scratch_tuning)
    return table(["set", "1-NN pixels", "small CNN", "from scratch, seeds 0 / 1 / 2 (mean)",
                  f"fine-tuned from {V2}, seeds 0 / 1 / 2 (mean)", "gap"], rows, "lrrrrr")


def t_large() -> str:
    k5m, k5s = _one("finetune-sweep-kd/cifar10-5k-mild-s0.json"), _one("finetune-sweep-kd/cifar10-5k-strong-s0.json")
    k20m = _one("transfer-same-machine/kd-20k-sized/finetune-cifar10-20k.json")
    k20s = _one("transfer-same-machine/kd-20k-strong/finetune-cifar10-20k.json")
    sc20 = _one("transfer-same-machine/scratch-20k/scratch-cifar10-20k.json")

    def cell(r):
        return f"{p(r['top1'])} ({r['steps']:,} steps, {num(r['wall_s'])} s)"
    rows = [("cifar10-5k (5,000)", "-", "-", "-", f"**{cell(k5m)}**", cell(k5s)),
            ("cifar10-20k (20,000)", p(baseline("cifar10-20k", "nn1")), p(baseline("cifar10-20k", "cnn")), cell(sc20),
             f"**{cell(k20m)}**", cell(k20s))]
    return table(["set (train images)", "1-NN pixels", "small CNN", "from scratch",
                  f"fine-tuned from {V2}: the plan (RandAugment 2,5, no stochastic depth)",
                  "the small-set recipe instead (stochastic depth 0.2, RandAugment 2,9)"], rows, "lrrrrr")


def t_handwriting() -> str:
    opt = {(r["set"], r["steps"], r["optimizer"], r["lr"]): r["top1"] for r in load("transfer-doc/finetune-optimizer.json")}
    rows = []
    for s, short in (("mnist-1k", "m1k"), ("fashion-mnist-1k", "fm1k")):
        adamw = opt.get((s, 600, "adamw", 1e-3))
        rows.append((s, p(baseline(s, "nn1")), p(baseline(s, "cnn")), p(top1(f"scratch-lr/{short}-lr3e-4.json")),
                     p(top1(f"transfer-same-machine/kd-handwriting/finetune-{s}.json")),
                     p(top1(f"transfer/finetune-{s}.json")), "-" if adamw is None else p(adamw)))
    return table(["set (1,000 train images)", "1-NN pixels", "small CNN", "from scratch (lr 3e-4, fp32)",
                  f"fine-tuned from {V2}", f"fine-tuned from {VIT} (SGD 0.01)", f"{VIT}, `--optimizer adamw --lr 1e-3`"],
                 rows, "lrrrrrr")


def t_fewshot() -> str:
    rows = []
    for s in ("cifar10-1k", "hymenoptera"):
        r = _one(f"fewshot-distilled/{s}.json")
        sh = r["fewshot"]["shots"]
        rows.append((V2, s, p(sh["5"]["mean"]), p(sh["10"]["mean"]), p(r["baselines"]["linear_probe_ridge"]["acc"])))
    for s in ("cifar10-100", "cifar10-1k", "cifar10-20k", "hymenoptera", "mnist-1k", "fashion-mnist-1k"):
        r = _one(f"transfer/fewshot-{s}.json")
        rows.append((VIT, s, p(r["5shot"]), "-" if "10shot" not in r else p(r["10shot"]),
                     "-" if "linear_probe" not in r else p(r["linear_probe"])))
    return table(["features of", "set", "5-shot", "10-shot", "linear probe, all training images"], rows, "llrrr")


def t_time() -> str:
    (r,) = load("time-defaults/times.json")
    rows = []
    for kind, label in (("scratch", "from scratch"), ("finetune", f"fine-tuned from {RETIRED} (the same architecture as {V2})")):
        x = r[kind]
        plan = x["plan"].split(": ", 1)[-1]
        rows.append((label, f"{x['steps']:,}", plan, f"{num(x['wall_s'])} s"))
    return table(["run (10,200 photos, 102 classes)", "steps", "the plan's first line", "wall time"], rows, "lrll")


def t_regularisation() -> str:
    arms = [("RandAugment 2,5, no stochastic depth (before)", ft_before), ("stochastic depth 0.1, RandAugment 2,9", ft_dp01),
            ("**stochastic depth 0.2, RandAugment 2,9 (the plan)**", ft_cur)]
    rows = []
    for s in TUNING:
        rows.append([f"{s}, seeds 0 / 1 / 2"] + [seeds([top1(f(s, k)) for k in SEEDS]) for _, f in arms])
    per_seed = [[mean_sd([top1(f(s, k)) for s in TUNING])[0] for k in SEEDS] for _, f in arms]
    rows.append(["three-set mean, per seed"] + [seeds(v) for v in per_seed])
    sc = mean_sd([top1(scratch_tuning(s, k)) for s in TUNING for k in SEEDS])[0]
    rows.append([f"gap to from scratch ({p(sc)})"] + [gap(mean_sd(v)[0], sc) for v in per_seed])
    return table(["set", *(a for a, _ in arms)], rows, "lrrr")


def t_scratch_lr() -> str:
    rows = []
    for label, old, new in (("cifar10-100, seed 0", "transfer-avx2/scratch-cifar10-100.json", "scratch-lr/lr3e-4.json"),
                            ("cifar10-100, seed 1", "scratch-lr/c100-seed1.json", "scratch-lr/c100-lr3e-4-seed1.json"),
                            ("hymenoptera", "transfer-avx2/scratch-hymenoptera.json", "scratch-lr/hym-lr3e-4.json"),
                            ("cifar10-1k", "transfer-avx2/scratch-cifar10-1k.json", "scratch-lr/c1k-lr3e-4.json"),
                            ("fashion-mnist-1k", "transfer-avx2/scratch-fashion-mnist-1k.json", "scratch-lr/fm1k-lr3e-4.json"),
                            ("mnist-1k", "transfer-avx2/scratch-mnist-1k.json", "scratch-lr/m1k-lr3e-4.json"),
                            ("fashion-mnist-100 (not used to choose)", "scratch-lr/fm100-lr1e-3.json", "scratch-lr/fm100-default.json")):
        s = label.split(",")[0].split(" ")[0]
        try:
            nn1 = p(baseline(s, "nn1"))
        except (FileNotFoundError, LookupError):
            nn1 = "-"
        rows.append((label, p(top1(old)), f"**{p(top1(new))}**", nn1))
    for label, f in (("cifar10-100, seed 0, lr 1e-3 with `--weight-decay 0.3`", "scratch-lr/wd03.json"),
                     ("cifar10-100, seed 0, lr 1e-3 with `--batch-size 16`", "scratch-lr/b16.json"),
                     ("cifar10-100, seed 0, lr 1e-3 with `--steps 2400`", "scratch-lr/steps2400.json")):
        rows.append((label, p(top1(f)), "-", p(baseline("cifar10-100", "nn1"))))
    return table(["from scratch on", "AdamW lr 1e-3 (the recipe's)", "**lr 3e-4 (the plan)**", "1-NN pixels"], rows, "lrrr")


def t_scratch_drop_path() -> str:
    rows = []
    for label, base, dp in (
            ("the three tuning sets, 3 seeds", [scratch_tuning(s, k) for s in TUNING for k in SEEDS],
             [scratch_dp01(s, k) for s in TUNING for k in SEEDS]),
            ("the three untuned folders, 3 seeds", [untuned("scratch", n, k) for n in UNTUNED for k in SEEDS],
             [untuned("scratch-dp0.1", n, k) for n in UNTUNED for k in SEEDS])):
        b, d = [top1(f) for f in base], [top1(f) for f in dp]
        lower = sum(y < x for x, y in zip(b, d))
        rows.append((label, p(mean_sd(b)[0]), p(mean_sd(d)[0]), gap(mean_sd(d)[0], mean_sd(b)[0]), f"{lower} of {len(b)}"))
    return table(["from scratch on", "defaults", "`--drop-path 0.1`", "difference", "runs lower with 0.1"], rows, "lrrrr")


def t_tried() -> str:
    """One change at a time: (change, weights and baseline, set, seeds, with, baseline, difference)."""
    rows = []

    def add(change, against, s, with_files, base_files):
        w, b = [top1(f) for f in with_files], [top1(f) for f in base_files]
        wm, bm = mean_sd(w)[0], mean_sd(b)[0]
        rows.append((change, against, s, str(len(w)), p(wm), p(bm), gap(wm, bm)))
    cur = f"{V2}, the plan"
    for flag, tag, sets in (("`--drop-path 0.3`", "dp03", TUNING), ("`--steps 1200`", "dp02st1200", TUNING),
                            ("`--batch-size 32`", "bs32", ("cifar10-100", "hymenoptera"))):
        for s in sets:
            add(flag, cur, s, [f"finetune-sweep-kd/{s}-{tag}-s0.json"], [ft_cur(s, 0)])
    before = f"{V2}, before stochastic depth 0.2"
    for s in TUNING:
        add("`--drop-path 0.1` alone", before, s, [f"finetune-sweep-kd/{s}-dp0.1-s0.json"], [ft_before(s, 0)])
    for s in ("cifar10-100", "cifar10-1k"):
        add("`--randaugment 2,9` alone", before, s, [f"finetune-sweep-kd/{s}-ra29-s0.json"], [ft_before(s, 0)])
    add("`--image-size 96`", before, "cifar10-100", ["finetune-sweep-kd/cifar10-100-px96-s0.json"], [ft_before("cifar10-100", 0)])
    for s in ("cifar10-100", "hymenoptera"):
        add("`--layer-decay 0.75`", before, s, [f"finetune-sweep/{s}-kd-ld075-s{k}.json" for k in (0, 1)],
            [ft_before(s, k) for k in (0, 1)])
    (wa,) = load("finetune-sweep-kd/weight-averaging.json")
    for arm, label in (("ema0.998", "EMA 0.998 of the weights"), ("tail0.5", "uniform average of the last half"),
                       ("wise0.7", "WiSE-FT 0.7")):
        w = [r["top1"][arm] for r in wa["runs"].values()]
        b = [r["top1"]["raw"] for r in wa["runs"].values()]
        rows.append((label, before, "the three tuning sets", str(len(w)), p(mean_sd(w)[0]), p(mean_sd(b)[0]),
                     gap(mean_sd(w)[0], mean_sd(b)[0])))
    (tta,) = load("transfer-same-machine/tta-flip.json")
    for side, label in (("kd", f"fine-tuned ({before})"), ("scratch", "from scratch, the plan")):
        f = [v for k, d in tta["top1"].items() if k.startswith(side + "/") for v in d["flip"]]
        n = [v for k, d in tta["top1"].items() if k.startswith(side + "/") for v in d["none"]]
        rows.append(("`--tta flip` at evaluation", label, "the three tuning sets", str(len(f)), pct(mean_sd(f)[0] / 100),
                     pct(mean_sd(n)[0] / 100), f"{mean_sd(f)[0] - mean_sd(n)[0]:+.2f}"))
    old = f"{RETIRED}, RandAugment 2,5"
    xeon = top1("transfer-xeon/finetune-cifar10-100.json")
    for r in load("transfer-doc/finetune-tried-retired.json"):
        rows.append((f"`{r['flag']}`", old, r["set"], "1", p(r["top1"]), p(xeon), gap(r["top1"], xeon)))
    base30 = {s: top1(f"transfer-same-machine/30ep/finetune-{s}.json") for s in ("cifar10-100", "hymenoptera")}
    for tag, label in (("rrc", "`--crop rrc`"), ("lpft-C1", "LP-FT, probe C = 1"), ("lpft-C01", "LP-FT, probe C = 0.1")):
        for s in ("cifar10-100", "hymenoptera"):
            try:
                r = _one(f"finetune-sweep/{s}-{tag}.json")
            except FileNotFoundError:
                continue
            rows.append((label, old, s, "1", p(r["top1"]), p(base30[s]), gap(r["top1"], base30[s])))
    no_ra = f"{RETIRED}, no RandAugment"
    for tag, label in (("lr003", "`--lr 0.003`"), ("lr03", "`--lr 0.03`"), ("steps1200", "`--steps 1200`"), ("ra", "`--randaugment 2,5`")):
        for s in ("cifar10-100", "hymenoptera"):
            r = _one(f"finetune-sweep/{s}-{tag}.json")
            b = top1(f"transfer-rvit/finetune-{s}.json")
            rows.append((label, no_ra, s, "1", p(r["top1"]), p(b), gap(r["top1"], b)))
    for s, sc in (("cifar10-100", "transfer/scratch-cifar10-100.json"), ("hymenoptera", "transfer/scratch-hymenoptera.json")):
        r = _one(f"finetune-sweep/sc-{s}-ra.json")
        rows.append(("`--randaugment 2,5` from scratch", "from scratch, lr 1e-3", s, "1", p(r["top1"]), p(top1(sc)),
                     gap(r["top1"], top1(sc))))
    return table(["change", "compared with", "set", "runs", "with the change", "without", "difference"], rows, "lllrrrr")


def t_optimizer() -> str:
    rows = [(r["set"], f"{r['steps']}", f"{r['optimizer'].upper() if r['optimizer'] == 'sgd' else 'AdamW'} {r['lr']:g}",
             p(r["top1"])) for r in load("transfer-doc/finetune-optimizer.json")]
    return table(["set", "steps", f"fine-tuning {VIT} with", "top-1"], rows, "lrlr")


def t_pretraining() -> str:
    transfer = {}
    for name, folders in ((RETIRED, ("30ep", "30ep-seed1")), ("50 epochs, stochastic depth 0.1", ("dp50",)),
                          (V2, ("kd", "kd-seed1"))):
        v = [top1(f"transfer-same-machine/{d}/finetune-{s}.json") for d in folders for s in TUNING]
        transfer[name] = f"{p(mean_sd(v)[0])} ({len(folders)} seed{'s' if len(folders) > 1 else ''})"
    v96 = [top1(f"tin-hires96/transfer/finetune-{s}.json") for s in TUNING]
    transfer["8 more epochs at 96 px"] = f"{p(mean_sd(v96)[0])} (1 seed, another machine)"
    rows = []
    for r in load("transfer-doc/pretraining.json"):
        name = f"**{r['name']}**" if r.get("shipped") else r["name"] + (" (retired)" if r.get("retired") else "")
        rows.append((name, r["how"], num(r["params"]), p(r["top1"]),
                     "-" if r.get("step_hours") is None else f"{r['step_hours']:.2f} h", transfer.get(r["name"], "-")))
    return table(["model", "how", "parameters", "Tiny ImageNet val top-1", "summed step time (2 cores)",
                  "fine-tuned, three tuning sets, mean (RandAugment 2,5, no stochastic depth)"], rows, "llrrrr")


TABLES = {
    "transfer.pretraining": t_pretraining,
    "transfer.untuned": t_untuned,
    "transfer.tuning": t_tuning,
    "transfer.large": t_large,
    "transfer.handwriting": t_handwriting,
    "transfer.fewshot": t_fewshot,
    "transfer.time": t_time,
    "transfer.regularisation": t_regularisation,
    "transfer.scratch_lr": t_scratch_lr,
    "transfer.scratch_drop_path": t_scratch_drop_path,
    "transfer.tried": t_tried,
    "transfer.optimizer": t_optimizer,
}

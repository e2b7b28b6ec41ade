"""Full Fashion-MNIST (60k train / 10k test) from scratch on CPU: time to >= 90 % test top-1.

    python benchmarks/fmnist_from_scratch.py                 # the tuned settings below
    python benchmarks/fmnist_from_scratch.py --epochs 8 --compile --json results.json

Both CPU cores are used best by two single-thread processes (intra-op threading scales poorly for a model this
small: one 2-thread process trains at ~940 img/s, two 1-thread DDP ranks at ~1,200 img/s together):

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fmnist_from_scratch.py --epochs 16

Measured that way on 2 idle cores: 89.69 % test top-1 in 806 s (13.4 min), 1,196 img/s, 0.4 % of step time
waiting for data -- short of the 90 %-in-10-minutes target. A GPU run of the same settings (same numerics) needs
~20 epochs for 90.3 % (15: 89.6 %), i.e. ~17 min at this speed on 2 cores.

The same run as a command line (the script only fixes the settings and prints a summary):

    vitkit train --dataset fashion-mnist --model ViT-Mini/7 --epochs 6 --batch-size 128 --lr 1e-3 \
        --warmup-epochs 0.5 --crop none --label-smoothing 0.1 --eval-every 100000 --out runs/fmnist

Prints the wall time (process start to result, including data loading and the final evaluation), the test
accuracy, the training throughput and the fraction of step time spent waiting for data (fetching, augmenting
and normalising batches on the main process). The target of the perf issue: >= 90 % within 10 minutes on 2 CPU
cores (stretch: 5 minutes). A CPU shared with other jobs makes every number here slower; the script prints the
load average before and after so that a reader can tell.

Measured (2026-11-24, ViT-Mini/7, these defaults, 2 CPU cores shared with other jobs, load average 3-5):
87.87 % test top-1 after 6 epochs in 810 s (13.5 min; evaluating after every epoch), 463 img/s, 1.0 % of step
time waiting for data. The target is missed: accuracy per epoch, measured with the same settings on a GPU
(the numbers carry over; only the speed differs): 4 epochs 87.1 %, 6: 88.0 %, 8: 89.0 %, 10: 89.1 %, 15: 89.6 %,
20: 90.3 %. 90 % needs ~20 epochs = 1.2M images, ~26 min at the ~780 img/s of 2 idle cores. Tried at 6 epochs
without gain: lr 5e-4 / 2e-3 (batch 256), no label smoothing, pad-crops (85.6 %), ViT-Mini/4 (88.1 %, 2-3x
the cost). torch.compile did not pay on this CPU (compilation took 60-80 s on the loaded box).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

T0 = time.perf_counter()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-Mini/7")
    p.add_argument("--epochs", type=float, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--crop", default="none", choices=["pad", "rrc", "none"])
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="torch.compile (compilation time counts in the total)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/fmnist-from-scratch")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result to FILE")
    args = p.parse_args(argv)

    from vitkit.train.loop import TrainSettings, train

    load_before = os.getloadavg()
    s = TrainSettings(dataset="fashion-mnist", model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, crop=args.crop, flip=args.flip,
                      precision=args.precision, compile=args.compile, data_dir=args.data_dir, out=args.out,
                      eval_every=args.eval_every or 10**9, save_every=10**9, progress=args.progress)
    r = train(s)
    wall = time.perf_counter() - T0
    r.update(wall_s=round(wall, 1), load_before=[round(x, 2) for x in load_before],
             load_after=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count(),
             settings={k: v for k, v in s.to_dict().items() if k in ("model", "epochs", "batch_size", "lr",
                                                                    "label_smoothing", "crop", "flip", "precision",
                                                                    "compile")})
    r.pop("per_class", None)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank gets the result; rank 0 reports it
        return 0
    print(f"Fashion-MNIST from scratch: {r['model']}, {r['epochs']} epochs, {r['steps']} steps")
    print(f"  test top-1       {100 * r['top1']:.2f}%   (top-5 {100 * r['top5']:.2f}%, {r['n']} images)")
    print(f"  wall time        {wall:.0f} s  ({wall / 60:.1f} min, target <= 10 min, stretch <= 5 min)")
    print(f"  training speed   {r['img_per_s']:.0f} img/s")
    print(f"  data wait        {100 * r['data_wait_frac']:.1f}% of step time")
    print(f"  load average     {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")
    print(f"  {'PASS' if r['top1'] >= 0.90 and wall <= 600 else 'MISS'}: >= 90% within 10 minutes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

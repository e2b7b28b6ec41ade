r"""Full Fashion-MNIST (60k train / 10k test) from scratch on 2 CPU cores: time to >= 90 % test top-1.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fmnist_from_scratch.py             # 13 epochs
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fmnist_from_scratch.py --epochs 7   # < 5 min
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fmnist_from_scratch.py \
        --model ViT-Mini/7 --epochs 16                                                   # the pure ViT, ~9 min

Two single-thread DDP ranks use 2 cores best for models this small (one 2-thread process trains at ~940 img/s).
Default model: the paper's hybrid (section 3.1), R+ViT-Mini/8 -- the ResNet root block (7x7/2 weight-standardised
conv to 64 channels, GroupNorm, ReLU, 3x3/2 max pool) feeding 2x2 patches of its 8x8 feature map to a ViT-Mini
(width 192, 6 layers, 3 heads), images resized 28 -> 32 px: the same 4x4 token grid as ViT-Mini/7 and 2.73M
parameters (Mini/7: 2.68M), at 0.82x its training speed. Recipe for both: batch 256 (2 ranks x 128), AdamW lr 7e-4 /
weight decay 0.05 / betas (0.9, 0.999), half an epoch of warmup then cosine, label smoothing 0.1, horizontal flips,
no crops, bf16 autocast, exact-erf GELU, explicit attention, fused AdamW. After training, rank 0 also evaluates
the same checkpoint with flip test-time augmentation (TTA: the mean of the probabilities for each image and its
mirror), reported on its own line; the PASS/MISS verdicts are on plain top-1.

Prints the wall time (process start to the end of the final evaluation, data loading included), the test
accuracy, the training throughput and the fraction of step time spent waiting for data (fetching, augmenting and
normalising batches on the main process), and the load average before and after, so that a reader can tell a
run on a shared machine.

Measured (2026-11-24, 2 idle cores, AMD EPYC Zen 4, torch 2.13 CPU), fourth session:

    model          epochs  plain top-1  flip TTA  wall    img/s  data wait
    R+ViT-Mini/8   13      91.71 %      92.17 %   497 s   1,584  0.7 %     (the default: >= 90 % in 10 min, PASS)
    R+ViT-Mini/8   13      91.84 %      92.19 %   523 s   1,504  0.7 %     (--seed 1; other work at its start)
    R+ViT-Mini/8   7       90.78 %      91.44 %   270 s   1,584  0.8 %     (>= 90 % in 5 min, PASS)
    R+ViT-Mini/8   7       90.86 %      91.50 %   271 s   1,578  0.7 %     (--seed 1; load average 1.6 before)

The pure ViT cannot reach 90 % plain top-1 in this budget: ViT-Mini/7, 16 epochs, 89.63 % (90.14 % with flip TTA)
in 536 s (session 3; session 2: the bit-identical result in 548 s), and 8 epochs 88.45 % (88.84 %) in 291 s.
Twenty-two full-length recipe and model variants of the pure ViT (below) stay at 88.9-89.8 %; the root block
gives +2 points at equal training time. That is the paper's own finding (section 4.2 and Fig. 5: "hybrids
slightly outperform ViT at small computational budgets, but the difference vanishes for larger models"), here at
the smallest budget, where the gap is widest; a convolutional stem also gives small data the locality prior that
patches alone lack.

What was tried (full 60k/10k, erf GELU, fused AdamW, label smoothing 0.1, flips, warmup 0.5 epoch, cosine; "1
proc" = one single-thread process, same numerics as the 2-rank run but not timed; plain top-1 from the training
loop's bf16 evaluation, TTA computed on the checkpoint as `vitkit eval --tta flip --precision bf16`). ViT-Mini/7
unless a change says otherwise:

    batch  lr     epochs  change          plain top-1  flip TTA  run
    128    1e-3   14      -               89.49 %      89.86 %   1 proc
    128    5e-4   14      -               89.56 %      90.00 %   1 proc (train loss 0.54 vs 0.65: fits more)
    128    2e-3   14      -               85.55 %      86.62 %   1 proc (unstable: train loss still 0.80)
    128    1e-3   14      pad-crop 2 px   88.53 %      88.82 %   1 proc (underfits in this budget)
    256    1e-3   16      -               89.58 %      90.11 %   1 proc
    256    7e-4   16      -               89.73 %      90.48 %   1 proc
    256    7e-4   16      weight decay .1 89.59 %      90.30 %   1 proc
    256    7e-4   16      betas .9,.99    89.24 %      89.90 %   1 proc
    256    5e-4   16      -               89.11 %      89.82 %   2 ranks, 582 s (the machine was shared briefly)
    256    7e-4   16      - (--model ViT-Mini/7 --epochs 16)
                                          89.63 %      90.14 %   2 ranks, 548 s (536 s in session 3)
    256    7e-4   17      --epochs 17     89.23 %      90.15 %   2 ranks, 636 s (light other work on the machine)
    256    7e-4   16      --seed 1        89.28 %      90.38 %   2 ranks, 568 s
    (third session: other models and regularisers at the best setting above, 1 proc each)
    256    7e-4   16      --classifier gap 89.34 %     -         1 proc
    256    7e-4   16      --dropout 0.1   89.22 %      -         1 proc (train loss 0.67 vs 0.58: underfits;
                                                                 1.6x slower with F.dropout, 1.2-1.4x with vitkit's)
    256    7e-4   16      patch 4, width 96, 6 layers, mlp 384 (0.68M params, 49 tokens, 909 img/s/proc
                          vs Mini/7's 895)        89.13 %   -    1 proc
    256    7e-4   16      patch 4, width 128, 4 layers, mlp 512 (0.80M params, 882 img/s/proc)
                                                  89.17 %   -    1 proc
    256    7e-4   16      --label-smoothing 0  89.13 %  -         1 proc
    256    7e-4   16      --no-flip       88.92 %      -         1 proc (overfits: train loss 0.53)
    (fourth session, 1 proc each)
    256    7e-4   16      6 heads of 32 instead of 3 of 64          89.39 %   -   1 proc
    256    7e-4   16      width 256, 4 layers, 4 heads (3.18M)      89.15 %   -   1 proc
    256    7e-4   16      --random-erase 0.25 (Zhong et al.)        89.79 %   -   1 proc
    256    7e-4   16      --random-erase 0.1                        89.56 %   -   1 proc
    256    7e-4   13      R+ViT-Mini/8 (root 64 ch., 892 img/s/proc vs Mini/7's 1,092 in one probe)
                                                  91.77 %   -    1 proc
    256    7e-4   14.5    root at width 0.5 (32 ch., 1,002 img/s/proc)
                                                  91.34 %   -    1 proc

For the pure ViT, the same settings gave 89.73 % (1 process), 89.63 % (2 ranks, seed 0) and 89.28 % (2 ranks,
seed 1), so the differences between its best rows are at noise level (about +-0.2). The compute-matched patch-4
models see 3x the tokens but are too narrow (train loss 0.63 vs 0.58), dropout underfits in 16 epochs, no flips
overfits, random erasing and the other shapes change nothing beyond noise.
Speed: batch 256 runs at 1,702-1,805 img/s against 1,447 at batch 128 (DDP's gloo all-reduce of the 10.7 MB
fp32 gradient takes 7.4 ms per step, and two independent single-thread processes reach 1,800 img/s together),
so 16 epochs at batch 256 fit where 14 at batch 128 would.
Per single-thread process at batch 64 (`vitkit train ... --steps 150`, median step): 743 img/s before the second
session's changes, 805 with fused AdamW, 916 with erf GELU as well, 984 with torch.compile too (compile adds
only ~1 % under DDP and costs ~15 s, so it is off). Earlier (tanh GELU, looped AdamW, batch 128): 89.69 % in
806 s; on a GPU with those settings 90.3 % needed 20 epochs.

The default run as vitkit command lines:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m vitkit train --dataset fashion-mnist \
        --model R+ViT-Mini/8 --epochs 13 --batch-size 256 --lr 7e-4 --warmup-epochs 0.5 --crop none --gelu erf \
        --eval-every 100000000 --out runs/fmnist
    vitkit eval runs/fmnist/checkpoint --dataset fashion-mnist --precision bf16 --tta flip
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
    p.add_argument("--model", default="R+ViT-Mini/8", help="e.g. ViT-Mini/7 for the pure ViT (with --epochs 16)")
    p.add_argument("--image-size", type=int, default=None, help="default: 28, or the variant's (32 for R+ViT-Mini/8)")
    p.add_argument("--epochs", type=float, default=13)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--crop", default="none", choices=["pad", "rrc", "none"])
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--gelu", default="erf", choices=["erf", "tanh"],
                   help="erf: exact GELU, 6x faster than the tanh form in PyTorch's CPU kernels")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the CPU/GPU has bf16 instructions (the figures above), else fp32")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help="skip the extra flip test-time-augmentation evaluation (reported apart from plain top-1)")
    p.add_argument("--compile", action="store_true", help="torch.compile (compilation time counts in the total)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/fmnist-from-scratch")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result to FILE")
    args = p.parse_args(argv)

    from vitkit.perf import keep_freed_memory
    from vitkit.train.loop import TrainSettings, train

    keep_freed_memory()  # as `vitkit train` does (vitkit/perf.py)
    load_before = os.getloadavg()
    s = TrainSettings(dataset="fashion-mnist", model=args.model, image_size=args.image_size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                      weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, crop=args.crop, flip=args.flip, gelu=args.gelu,
                      precision=args.precision, compile=args.compile, data_dir=args.data_dir, out=args.out,
                      seed=args.seed, eval_every=args.eval_every or 10**9, save_every=10**9, progress=args.progress)
    r = train(s)
    wall = time.perf_counter() - T0
    if args.tta and int(os.environ.get("RANK", "0")) == 0:  # the same checkpoint, each image and its mirror
        import vitkit
        from vitkit.data.datasets import load_dataset
        from vitkit.eval.evaluate import evaluate

        rt = evaluate(vitkit.load(r["checkpoint"]), load_dataset("fashion-mnist", "test", data_dir=args.data_dir),
                      batch_size=500, precision=args.precision, tta="flip")
        r.update(top1_tta_flip=rt["top1"], wall_with_tta_s=round(time.perf_counter() - T0, 1))
    r.update(wall_s=round(wall, 1), load_before=[round(x, 2) for x in load_before],
             load_after=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count(),
             settings={k: v for k, v in s.to_dict().items() if k in ("model", "image_size", "epochs", "batch_size",
                                                                    "lr", "label_smoothing", "crop", "flip",
                                                                    "precision", "compile", "gelu", "seed")})
    r.pop("per_class", None)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank gets the result; rank 0 reports it
        return 0
    print(f"Fashion-MNIST from scratch: {r['model']}, {r['epochs']} epochs, {r['steps']} steps")
    print(f"  test top-1       {100 * r['top1']:.2f}%   (top-5 {100 * r['top5']:.2f}%, {r['n']} images)")
    print(f"  wall time        {wall:.0f} s  ({wall / 60:.1f} min, target <= 10 min, stretch <= 5 min; process start "
          f"to the end of the final evaluation)")
    print(f"  training speed   {r['img_per_s']:.0f} img/s")
    print(f"  data wait        {100 * r['data_wait_frac']:.1f}% of step time")
    print(f"  load average     {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")
    for limit in (10, 5):
        print(f"  {'PASS' if r['top1'] >= 0.90 and wall <= 60 * limit else 'MISS'}: >= 90% within {limit} minutes "
              f"(plain top-1)")
    if "top1_tta_flip" in r:
        print(f"  with flip TTA    {100 * r['top1_tta_flip']:.2f}%   (same checkpoint, mean of the image's and its "
              f"mirror's probabilities; {r['wall_with_tta_s']:.0f} s including this extra evaluation)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exact resume: a run SIGKILLed mid-way and resumed with --resume logs the same per-step losses, bit for bit
(fp32 on CPU, same thread count), as a run that was never interrupted -- with dropout, RandAugment and mixup on,
so the torch RNG and the augmentation generator must both be restored."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import torch

from runlogs import paced_train, steps_logged, tensorboard_scalars

from vitkit import cli
from vitkit.checkpoint.io import load_train_state

ARGS = ["--model", "ViT-testing/4", "--steps", "14", "--batch-size", "32", "--limit-train", "192", "--limit-test",
        "64", "--precision", "fp32", "--save-every", "3", "--eval-every", "4", "--dropout", "0.1", "--mixup", "0.2",
        "--randaugment", "2,5", "--warmup-steps", "2", "--no-progress"]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    return env


def _vitkit(*args, **env):
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, env=_env(**env),
                          timeout=240)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    threads = torch.get_num_threads()
    try:  # the uninterrupted reference, in this process with the subprocesses' thread count
        torch.set_num_threads(1)
        assert cli.main(["train", *ARGS, "--out", str(ref)]) == 0
    finally:
        torch.set_num_threads(threads)

    # Slow the run down (a sleep after each step, through train()'s on_step) so that it is surely killed mid-way,
    # between checkpoints.
    proc = subprocess.Popen(paced_train(0.25, *ARGS, "--out", cut), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 180
    while steps_logged(cut) < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = steps_logged(cut)
    assert 8 <= killed_at < 14, f"the run was not killed mid-way (steps logged: {killed_at})"
    # the checkpoint is behind the log: the steps logged after it must be redone (and their lines replaced)
    state_step = load_train_state(cut / "checkpoint")["step"]  # (or the .old one, if killed mid-write)
    assert state_step % 3 == 0 and state_step <= killed_at

    r = _vitkit("train", "--out", str(cut), "--resume")  # settings come from the checkpoint
    assert r.returncode == 0, r.stderr
    a, b = _records(ref), _records(cut)
    losses_a = [(x["step"], x["loss"]) for x in a if "loss" in x]
    losses_b = [(x["step"], x["loss"]) for x in b if "loss" in x]
    assert [s for s, _ in losses_b] == list(range(1, 15))
    assert losses_a == losses_b  # bitwise: exact float equality
    assert [x for x in a if "top1" in x] == [x for x in b if "top1" in x]
    assert len({loss for _, loss in losses_a}) > 10  # the curve is not trivially constant
    if importlib.util.find_spec("tensorboard") is None:
        return
    # TensorBoard shows each step once: the killed run's steps after the checkpoint are purged
    tb = tensorboard_scalars(cut, "train/loss")
    assert [s for s, _ in tb] == list(range(1, 15))
    assert all(abs(v - loss) <= 1e-6 * abs(loss) for (_, v), (_, loss) in zip(tb, losses_a))


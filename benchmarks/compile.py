"""``train.compile``: when does ``torch.compile`` of the training loss pay?

One digits cell of the sweep's settings (8x8 digits, batch 64, U-Nets of ``--channels``), trained
``--steps`` steps by ``memorize.train.train`` twice in the same run: eager, then with
``train.compile: true``. From the loss log's clock (a row every 100 steps): the steady time per
step over the steps after the first 200 (compilation and any recompiles are over by then), the
one-time cost (time to step 200 less 200 steady steps) and the break-even budget (the one-time
cost over the time saved per step; none where compiling does not save time per step). Inductor's
on-disk cache goes to a fresh temporary directory (unless ``TORCHINDUCTOR_CACHE_DIR`` is set), so
the one-time cost is a cold compilation's, as a new cluster node would pay it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import pandas as pd
import torch

from benchmarks.common import add_device_argument, report, result_name
from benchmarks.pack import cells
from memorize.train import train

WARM = 200  # steps after which the clock counts as steady


def time_cell(channels: int, steps: int, compiled: bool, device: str) -> dict:
    cfg = cells(channels, 1, steps)[0]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compiled, device=device,
                                                             checkpoint_every=steps, eval_every=steps))
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, tmp, progress=False)
        log = pd.read_csv(f"{tmp}/loss.csv").set_index("step")["seconds"]
    per_step = (log[steps] - log[WARM]) / (steps - WARM)
    return {"channels": channels, "compile": compiled, "steps": steps, "seconds": log[steps],
            "ms_per_step": 1000 * per_step, "one_time_s": log[WARM] - WARM * per_step,
            "train_loss": summary["train_loss"]}


def run(channels: list[int], steps: int, device: str) -> list[dict]:
    rows = []
    for c in channels:
        eager, compiled = time_cell(c, steps, False, device), time_cell(c, steps, True, device)
        saved = (eager["ms_per_step"] - compiled["ms_per_step"]) / 1000
        compiled["speedup_per_step"] = eager["ms_per_step"] / compiled["ms_per_step"]
        compiled["break_even_steps"] = (compiled["one_time_s"] - eager["one_time_s"]) / saved if saved > 0 else None
        eager["speedup_per_step"], eager["break_even_steps"] = 1.0, None
        rows += [eager, compiled]
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=1000, help=f"per run (> {WARM})")
    parser.add_argument("--threads", type=int, default=2)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a cold compilation, whatever ran on this machine before
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="memorize-inductor-")
    if args.steps <= WARM:
        parser.error(f"--steps: expected more than {WARM}, got {args.steps}")
    return report(result_name("compile", args.device), run(args.channels, args.steps, args.device),
                  "one_time_s: compilation and warm-up; break_even_steps: budget above which compiling saves time")


if __name__ == "__main__":
    main()

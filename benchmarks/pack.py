"""Cells trained together (memorize.pack) against the same cells trained one after another.

The digits sweep's cells (8x8 digits, batch 64, U-Nets of 8 / 16 / 32 channels, the digits.yaml
training settings) at ``--cells`` different (N, seed) pairs, each trained ``--steps`` steps with
its checkpoints, log and evaluation rows: once with ``memorize.train.train`` per cell, once with
``memorize.pack.train_packed`` for all of them. Reports training throughput in cell-steps per
second and the ratio (training only: sampling, scoring and comparing are not packed).

``--sweep`` instead runs a slice of ``sweeps/digits.yaml`` as ``memorize sweep run`` does, with the
local executor and this machine's threads, four times in the same run: each cell alone and with
``--pack`` (one model size, ``--channels``, every N of the spec, seeds 0 and 1), each one job at a
time with all threads (``--parallel 1``, the sweep's default) and ``--parallel`` jobs at a time with
the threads divided: cells per hour, wall clock, everything included (process start-up, sampling,
scoring, comparing).

``--step`` times only the forward and backward pass of one training step per cell, alone (each
cell's own network) against vmapped over the stacked weights and against the wide network whose
layers are grouped by cell (memorize.models.wide, what packs use): what packing gains on the
arithmetic itself; and the wide network in channels-last layout beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import add_device_argument, report, result_name
from memorize.config import CellConfig, from_dict
from memorize.pack import train_packed
from memorize.sweep import load_spec, run_sweep
from memorize.sweep.local import available_cores, threads_per_cell
from memorize.train import train

SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "digits.yaml"

BASE = {"data": {"name": "digits", "n_heldout": 197},
        "model": {"arch": "unet", "channel_mult": [1, 2], "blocks_per_level": 1},
        "train": {"batch_size": 64, "lr": 0.001, "warmup_steps": 100, "checkpoint_every": 400, "eval_every": 400,
                  "log_every": 100}}


def cells(channels: int, n: int, steps: int, device: str = "cpu") -> list[CellConfig]:
    sizes = [8, 24, 64, 192, 1600]
    base = from_dict(CellConfig, {**BASE, "model": {**BASE["model"], "channels": channels},
                                  "train": {**BASE["train"], "device": device}})
    return [dataclasses.replace(base, seed=i // len(sizes),
                                data=dataclasses.replace(base.data, n_train=sizes[i % len(sizes)]),
                                train=dataclasses.replace(base.train, steps=steps)) for i in range(n)]


def sweep_slice(channels: int, pack: int, parallel: int, device: str = "cpu") -> list[dict]:
    """The slice run four ways, one after another: alone and packed, each one job at a time with all the
    threads, and ``parallel`` jobs at a time with the threads divided (packed on the CPU: the packs
    balanced to fill the slots, memorize.sweep.launch.pack_units). Ratios against the first (the
    sweep's defaults) and against the faster of the two unpacked runs."""
    spec = load_spec(SPEC, overrides={"base.train.device": device})  # every stage of a cell runs there
    spec = dataclasses.replace(spec, grid={**spec.grid, "model.channels": [channels], "seed": [0, 1]})
    rows = []
    for k, jobs in ((1, 1), (1, parallel), (pack, 1), (pack, parallel)):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            done = run_sweep(spec, Path(tmp), "local", parallel=jobs, progress=False, pack=k)
            wall = time.perf_counter() - start
        if done["failed"]:
            raise SystemExit(f"{done['failed']} cells failed")
        rows.append({"channels": channels, "cells": done["launched"], "pack": k, "parallel": jobs,
                     "threads per job": threads_per_cell("local", jobs), "seconds": wall,
                     "cells per hour": 3600 * done["launched"] / wall})
    best_alone = min(r["seconds"] for r in rows if r["pack"] == 1)
    for r in rows:
        r["x alone"] = rows[0]["seconds"] / r["seconds"]
        r["x best alone"] = best_alone / r["seconds"]
    return rows


def forward_backward(channels: int, n: int, repeats: int = 10, device: str = "cpu") -> list[dict]:
    """Milliseconds per cell of one forward + backward pass on one batch, alone vs vmapped vs wide (best of 3),
    and the wide network with every convolution's input in channels-last layout (converted where an
    operation between them returned the standard layout: the layout the packs do not use, timed to show
    why); the pass's floating-point operations (torch's flop counter: matrix products and convolutions)
    and the rate the wide network reaches."""
    import copy

    from memorize.models.wide import widen
    from memorize.pack import StackedCells
    from memorize.train import CellTraining

    with tempfile.TemporaryDirectory() as tmp:
        trainings = [CellTraining(cfg, Path(tmp) / str(i)) for i, cfg in enumerate(cells(channels, n, 10, device))]
        batches = [c.draw() for c in trainings]
        vmapped, wide, base = StackedCells(trainings), StackedCells(trainings), copy.deepcopy(trainings[0].denoiser.net)
        vmapped.wide = False  # no wide network: vmap over functional_call
        channels_last = StackedCells(trainings)
        channels_last.wide = widen(base, n)
        for layer in channels_last.wide.modules():  # a no-op where the input is channels-last already
            if isinstance(layer, torch.nn.Conv2d):
                layer.register_forward_pre_hook(
                    lambda _, args: (args[0].contiguous(memory_format=torch.channels_last),))

        def alone() -> None:
            for c, b in zip(trainings, batches):
                c.denoiser.loss(b.x0, b.sigma, b.noise, b.labels).mean().backward()
                c.denoiser.net.zero_grad(set_to_none=True)

        def packed(stack: StackedCells) -> None:
            stack.losses(batches, base).sum().backward()
            for p in stack.params.values():
                p.grad = None

        with FlopCounterMode(display=False) as counter:  # one cell's forward and backward pass
            b = batches[0]
            trainings[0].denoiser.loss(b.x0, b.sigma, b.noise, b.labels).mean().backward()
        trainings[0].denoiser.net.zero_grad(set_to_none=True)

        def sync() -> None:  # a GPU's queued work finished before the clock is read
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()

        times = {}
        runs = (("alone", alone), ("vmapped", lambda: packed(vmapped)), ("wide", lambda: packed(wide)),
                ("channels-last", lambda: packed(channels_last)))
        for name, fn in runs * 3:
            fn()  # warm-up
            sync()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            sync()
            ms = 1000 * (time.perf_counter() - start) / repeats / n
            times[name] = min(times.get(name, ms), ms)
    return [{"channels": channels, "cells": n, "alone ms/cell": times["alone"], "vmapped ms/cell": times["vmapped"],
             "wide ms/cell": times["wide"], "wide channels-last ms/cell": times["channels-last"],
             "x alone": times["alone"] / times["wide"], "x vmapped": times["vmapped"] / times["wide"],
             "x channels-last": times["channels-last"] / times["wide"],
             "GFLOP/cell": counter.get_total_flops() / 1e9,
             "wide GFLOP/s": counter.get_total_flops() / 1e6 / times["wide"]}]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--channels", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, default=2)
    add_device_argument(parser)
    parser.add_argument("--sweep", action="store_true", help="the digits sweep slice, alone vs packed")
    parser.add_argument("--pack", type=int, default=10, help="--sweep: cells per pack")
    parser.add_argument("--parallel", type=int, default=available_cores(),
                        help="--sweep: jobs at a time in the runs that divide the threads (default: this machine's cores)")
    parser.add_argument("--step", action="store_true",
                        help="forward + backward only, alone vs vmapped vs wide (and wide in channels-last)")
    args = parser.parse_args(argv)
    if args.step:
        torch.set_num_threads(args.threads)
        return report(result_name("pack_step", args.device),
                      [r for c in args.channels for r in forward_backward(c, args.cells, device=args.device)],
                      f"{args.threads} threads; one forward + backward pass per cell, batch of the sweep")
    if args.sweep:
        return report(result_name("pack_sweep", args.device),
                      sweep_slice(args.channels[0], args.pack, args.parallel, args.device),
                      f"{SPEC.name}, local executor, at most {args.pack} cells per pack")
    torch.set_num_threads(args.threads)
    rows = []
    for channels in args.channels:
        cfgs = cells(channels, args.cells, args.steps, args.device)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            for i, cfg in enumerate(cfgs):
                train(cfg, Path(tmp) / f"alone{i}", progress=False)
            alone = time.perf_counter() - t
            t = time.perf_counter()
            train_packed(cfgs, [Path(tmp) / f"packed{i}" for i in range(len(cfgs))])
            packed = time.perf_counter() - t
        steps = args.cells * args.steps
        rows.append({"channels": channels, "cells": args.cells, "steps per cell": args.steps,
                     "alone cell-steps/s": steps / alone, "packed cell-steps/s": steps / packed,
                     "x alone": alone / packed})
    return report(result_name("pack", args.device), rows,
                  f"{args.threads} threads; training only, data loading and set-up included")


if __name__ == "__main__":
    main()

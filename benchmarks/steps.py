"""Training steps: the project's loop with and without CUDA graphs, against bare loops of the same network.

One cell of the digits sweep (8x8 digits, batch 64, the U-Net of ``--channels`` channels, the sweep's
training settings), each figure beside its baseline from the same run:

- ``loop``: steps per second of the project's own step (:meth:`memorize.train.CellTraining.take_step`:
  the cell's draws, the step, the checks, the log) with ``train.cuda_graph`` auto and off, after a
  warm-up (on a GPU, the capture happens in it);
- ``bare``: the same network, batch and AdamW in a bare eager loop (no draws, no reads), and on a GPU
  that step captured in one CUDA graph and replayed back to back: the GPU's own time per step;
- ``busy``: the share of the loop's wall time the GPU spends in kernels (torch's profiler, kernels
  only), and the bare graph's time per step over the loop's;
- ``pack``: ``--cells`` cells trained together (:func:`memorize.pack.train_packed`) against one of them
  alone, in cell-steps per second;
- ``amp``: the loop with bf16 autocast (``train.amp``) against float32, on this cell and on a larger one
  (:func:`large_cell`: 32x32 images, a 3-level U-Net with attention, batch 128); each the faster of two
  runs taken in turns (:func:`best_rates`), since the first of two runs back to back can run slower.

On the CPU the graph rows are left out. Results go to ``results/steps[_gpu].csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_device_argument, report, result_name, write_rows
from benchmarks.pack import cells
from memorize.config import CellConfig
from memorize.pack import train_packed
from memorize.train import CellTraining


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def loop_rate(cfg: CellConfig, steps: int, warmup: int, profile: bool = False) -> dict:
    """Steps per second of ``take_step`` after ``warmup`` steps; with ``profile``, the GPU's busy share."""
    with tempfile.TemporaryDirectory() as tmp:
        cell = CellTraining(dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, steps=warmup + 2 * steps + 1, checkpoint_every=10**6, eval_every=10**6)), Path(tmp))
        runner = cell.step_runner()
        for _ in range(warmup):
            cell.take_step(runner)
        _sync(cfg.train.device)
        start = time.perf_counter()
        for _ in range(steps):
            cell.take_step(runner)
        _sync(cfg.train.device)
        row = {"steps per second": steps / (time.perf_counter() - start), "mode": runner.mode}
        if profile and torch.device(cfg.train.device).type == "cuda":
            row["gpu busy"] = busy_share(lambda: [cell.take_step(runner) for _ in range(steps)])
    return row


def best_rates(cfgs: dict[str, CellConfig], steps: int, warmup: int, rounds: int = 2) -> dict[str, dict]:
    """:func:`loop_rate` of each config, measured in turns for ``rounds`` rounds, the order reversed every other
    round (so that none of them always runs first, into a cold cache or allocator): each one's fastest."""
    best: dict[str, dict] = {}
    names = list(cfgs)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            rate = loop_rate(cfgs[name], steps, warmup)
            if name not in best or rate["steps per second"] > best[name]["steps per second"]:
                best[name] = rate
    return best


def busy_share(fn) -> float:
    """The share of ``fn``'s wall time the GPU spends in kernels (torch's profiler, device activity only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                  and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())
    return kernels / 1e6 / wall


def bare_rates(cfg: CellConfig, steps: int) -> dict:
    """The cell's network, batch and AdamW in a bare eager loop; on a GPU also that step in one CUDA graph."""
    device = cfg.train.device
    with tempfile.TemporaryDirectory() as tmp:
        cell = CellTraining(cfg, Path(tmp))
        den = cell.denoiser
        b = cell.draw()
    cuda = torch.device(device).type == "cuda"

    def step(opt):
        opt.zero_grad(set_to_none=True)
        den.loss(b.x0, b.sigma, b.noise, b.labels).mean().backward()
        opt.step()

    opt = torch.optim.AdamW(den.parameters(), lr=1e-3, fused=cuda)
    for _ in range(10):
        step(opt)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(opt)
    _sync(device)
    rates = {"bare eager": steps / (time.perf_counter() - start)}
    if cuda:
        opt = torch.optim.AdamW(den.parameters(), lr=1e-3, capturable=True, foreach=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(opt)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            den.loss(b.x0, b.sigma, b.noise, b.labels).mean().backward()
            opt.step()
        for _ in range(10):
            graph.replay()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3 * steps):
            graph.replay()
        torch.cuda.synchronize()
        rates["bare graph"] = 3 * steps / (time.perf_counter() - start)
    return rates


def pack_rates(channels: int, n: int, steps: int, device: str) -> dict:
    """Cell-steps per second: ``n`` cells trained together against the first of them alone (training only,
    set-up included in both, so longer runs favour the pack a little)."""
    cfgs = cells(channels, n, steps, device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        from memorize.train import train

        train(cfgs[0], Path(tmp) / "alone", progress=False)
        _sync(device)
        alone = steps / (time.perf_counter() - start)
        start = time.perf_counter()
        summaries = train_packed(cfgs, [Path(tmp) / f"packed{i}" for i in range(n)])
        _sync(device)
        packed = n * steps / (time.perf_counter() - start)
    return {"alone": alone, "packed": packed, "mode": summaries[0]["step_mode"]}


def large_cell(device: str, amp: bool) -> CellConfig:
    """A larger cell than the digits sweep's: the digits resized to 32x32, a 3-level U-Net of 32 / 64 / 64
    channels with 2 blocks per level and attention at 16x16 (about the training benchmark's), batch 128."""
    cfg = cells(32, 1, 10, device)[0]
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, resize=32, n_train=256),
                               model=dataclasses.replace(cfg.model, channels=32, channel_mult=(1, 2, 2),
                                                         blocks_per_level=2, attention_resolutions=(16,)),
                               train=dataclasses.replace(cfg.train, batch_size=128, amp=amp))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    add_device_argument(parser)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per figure (default 300)")
    parser.add_argument("--cells", type=int, default=8, help="cells of the pack (default 8)")
    parser.add_argument("--quick", action="store_true", help="a few steps each: the plumbing, not the figures")
    args = parser.parse_args(argv)
    device, steps = args.device, (10 if args.quick else args.steps)
    cuda = torch.device(device).type == "cuda"
    base = cells(args.channels, 1, 10, device)[0]
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, amp=False))
    off = dataclasses.replace(base, train=dataclasses.replace(base.train, cuda_graph="off"))
    warmup = 5 if args.quick else 30
    rows: list[dict] = []

    def row(figure: str, value: float, unit: str, baseline: str = "", base_value: float = np.nan, note: str = ""):
        rows.append({"figure": figure, "value": value, "unit": unit, "baseline": baseline,
                     "baseline value": base_value, "x baseline": value / base_value if base_value else np.nan,
                     "note": note})
        write_rows(result_name("steps", device), rows)  # each figure when measured: a run cut short keeps them

    graph = loop_rate(base, steps, warmup, profile=True)
    eager = loop_rate(off, steps, warmup, profile=True)
    bare = bare_rates(base, steps)
    what = f"{args.channels}-channel digits cell, batch 64"
    row("loop, train.cuda_graph auto", graph["steps per second"], "steps/s", "loop, off",
        eager["steps per second"], f"{what}; {graph['mode']}")
    row("loop, train.cuda_graph off", eager["steps per second"], "steps/s", "bare eager loop", bare["bare eager"],
        what)
    if cuda:
        row("loop, train.cuda_graph auto", graph["steps per second"], "steps/s", "bare graph", bare["bare graph"],
            "the bare graph: the GPU's own time per step, back to back")
        row("gpu busy, graph", graph["gpu busy"], "share of wall time", "gpu busy, eager", eager["gpu busy"],
            "torch profiler, kernel time over wall time")
        row("gpu busy by timing, graph", graph["steps per second"] / bare["bare graph"], "share", "eager",
            eager["steps per second"] / bare["bare graph"], "bare graph's time per step over the loop's")
    packed = pack_rates(args.channels, args.cells, steps, device)
    row(f"{args.cells} cells packed", packed["packed"], "cell-steps/s", "one cell alone", packed["alone"],
        f"{args.channels} channels, {steps} steps with set-up; {packed['mode']}")
    for name, cfg in (("digits", base), ("32x32, batch 128", large_cell(device, False))):
        amp = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=True))
        rates = best_rates({"float32": cfg, "bf16": amp}, steps, warmup)
        b16, f32 = rates["bf16"], rates["float32"]
        row(f"bf16 autocast, {name}", b16["steps per second"], "steps/s", "float32", f32["steps per second"],
            f"best of 2 in turns; {b16['mode']}" + ("" if cuda else "; on the CPU train.amp does nothing"))
    return report(result_name("steps", device), rows)


if __name__ == "__main__":
    main()

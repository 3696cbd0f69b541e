"""Sampling benchmark: images per second of each sampler at a fixed number of denoiser evaluations.

Every sampler gets the same budget of network evaluations (NFE): Heun spends two per step but one on
the last, so it gets (NFE + 1) / 2 steps; the others one per step. The denoiser is a U-Net on
CIFAR-shaped images. A second table shows what per-sample seeding (sample i identical at any batch
size) costs: the same Euler-Maruyama run with the noise drawn per sample vs in one batched call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import report
from memorize.config import ModelConfig, SampleConfig
from memorize.diffusion import Denoiser
from memorize.models import build_network
from memorize.sampling import SampleNoise, generate, sample_seeds


class BatchedNoise(SampleNoise):
    """One generator for the whole batch: faster, but sample i then depends on the batch."""

    def __init__(self, seeds, shape, device="cpu", dtype=torch.float32):
        super().__init__(seeds[:1], shape, device, dtype)
        self.n = len(seeds)

    def __call__(self) -> torch.Tensor:
        return torch.randn((self.n, *self.shape), generator=self.generators[0]).to(self.device, self.dtype)


def run(num: int, nfe: int, resolution: int, channels: int) -> list[dict]:
    torch.manual_seed(0)
    shape = (3, resolution, resolution)
    net = build_network(ModelConfig(channels=channels, channel_mult=(1, 2, 2)), shape)
    denoiser = Denoiser(net).eval()
    seeds = sample_seeds(0, np.arange(num))
    rows = []
    for sampler in ("heun", "ddim", "ddpm", "euler_maruyama"):
        steps = (nfe + 1) // 2 if sampler == "heun" else nfe
        cfg = SampleConfig(sampler=sampler, steps=steps, num=num, batch_size=num)
        start = time.perf_counter()
        generate(denoiser, shape, seeds, cfg, progress=False)
        seconds = time.perf_counter() - start
        rows.append({"sampler": sampler, "steps": steps, "nfe": nfe, "images": num, "seconds": seconds,
                     "images_per_s": num / seconds})
    # the cost of per-sample noise streams, on the most noise-hungry sampler
    import memorize.sampling as sampling

    cfg = SampleConfig(sampler="euler_maruyama", steps=nfe, num=num, batch_size=num)
    for label, cls in (("per-sample noise (default)", SampleNoise), ("one batched generator", BatchedNoise)):
        original = sampling.SampleNoise
        sampling.SampleNoise = cls
        try:
            start = time.perf_counter()
            generate(denoiser, shape, seeds, cfg, progress=False)
        finally:
            sampling.SampleNoise = original
        seconds = time.perf_counter() - start
        rows.append({"sampler": f"euler_maruyama, {label}", "steps": nfe, "nfe": nfe, "images": num,
                     "seconds": seconds, "images_per_s": num / seconds})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=35)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args(argv)
    rows = run(args.num, args.nfe, args.resolution, args.channels)
    return report("sampling", rows)


if __name__ == "__main__":
    main()

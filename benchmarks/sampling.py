"""Sampling benchmark: images per second of each sampler at a fixed number of denoiser evaluations.

Every sampler gets the same budget of network evaluations (NFE): Heun spends two per step but one on
the last, so it gets (NFE + 1) / 2 steps; the others one per step. The denoiser is a U-Net on
CIFAR-shaped images. A second table shows what per-sample seeding (sample i identical at any batch
size) costs: the same Euler-Maruyama run with the noise drawn per sample from CPU generators (the
default, ``sample.noise: generator``), from counter-based streams computed on the device
(``sample.noise: counter``), and in one batched call of one generator on the device (the baseline).

``--device cuda`` runs the network on the GPU and checks that the GPU's Heun samples match the CPU's
for the same seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from benchmarks.common import add_device_argument, report, result_name
from memorize.config import ModelConfig, SampleConfig
from memorize.diffusion import Denoiser
from memorize.models import build_network
from memorize.sampling import SampleNoise, generate, sample_seeds


class BatchedNoise:
    """One generator on the device for the whole batch: the fastest draw, but sample i then depends on the batch."""

    def __init__(self, seeds, shape, device="cpu", dtype=torch.float32):
        self.generator = torch.Generator(device).manual_seed(int(seeds[0]))
        self.shape, self.n, self.device, self.dtype = tuple(shape), len(seeds), device, dtype

    def __call__(self) -> torch.Tensor:
        return torch.randn((self.n, *self.shape), generator=self.generator, device=self.device, dtype=self.dtype)


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(num: int, nfe: int, resolution: int, channels: int, device: str = "cpu") -> list[dict]:
    torch.manual_seed(0)
    shape = (3, resolution, resolution)
    net = build_network(ModelConfig(channels=channels, channel_mult=(1, 2, 2)), shape)
    denoiser = Denoiser(net).eval().to(device)
    seeds = sample_seeds(0, np.arange(num))
    rows = []
    if device != "cpu":  # same seeds, same samples: the GPU's Heun samples against the CPU's (16 of them)
        check = build_network(ModelConfig(channels=channels, channel_mult=(1, 2, 2)), shape)
        with torch.no_grad():  # perturb the zero-initialised output layers: the check needs a non-zero network
            for p in check.parameters():
                p.add_(0.05 * torch.randn_like(p))
        cfg = SampleConfig(sampler="heun", steps=(nfe + 1) // 2, num=16, batch_size=16)
        cpu = generate(Denoiser(check).eval(), shape, seeds[:16], cfg, progress=False)
        gpu = generate(Denoiser(check).eval().to(device), shape, seeds[:16], cfg, device, progress=False)
        print(f"# GPU vs CPU Heun samples of a random non-zero U-Net, same seeds (PyTorch's default TF32 "
              f"convolutions on the GPU): max |diff| {(gpu - cpu).abs().max():.2e}, sample scale "
              f"{cpu.abs().max():.2f}, different seeds differ by {(cpu[:8] - cpu[8:]).abs().max():.2f}")
    for sampler in ("heun", "ddim", "ddpm", "euler_maruyama"):
        steps = (nfe + 1) // 2 if sampler == "heun" else nfe
        cfg = SampleConfig(sampler=sampler, steps=steps, num=num, batch_size=num)
        start = time.perf_counter()
        generate(denoiser, shape, seeds, cfg, device, progress=False)
        seconds = time.perf_counter() - start
        rows.append({"sampler": sampler, "steps": steps, "nfe": nfe, "images": num, "seconds": seconds,
                     "images_per_s": num / seconds})
    # the cost of per-sample noise streams, on the most noise-hungry sampler
    import memorize.sampling as sampling

    for label, cls, kind in (("one batched generator on the device (baseline)", BatchedNoise, "generator"),
                             ("per-sample CPU generators (noise: generator)", SampleNoise, "generator"),
                             ("per-sample counter streams on the device (noise: counter)", None, "counter")):
        cfg = SampleConfig(sampler="euler_maruyama", steps=nfe, num=num, batch_size=num, noise=kind)
        original = sampling.SampleNoise
        sampling.SampleNoise = cls or original
        try:
            generate(denoiser, shape, seeds[:2], dataclasses.replace(cfg, num=2, batch_size=2), device,
                     progress=False)  # warm-up
            _synchronize(device)
            start = time.perf_counter()
            generate(denoiser, shape, seeds, cfg, device, progress=False)
            _synchronize(device)
        finally:
            sampling.SampleNoise = original
        seconds = time.perf_counter() - start
        rows.append({"sampler": f"euler_maruyama, {label}", "steps": nfe, "nfe": nfe, "images": num,
                     "seconds": seconds, "images_per_s": num / seconds})
    baseline = rows[-3]["images_per_s"]
    print(f"# per-sample noise, speed against one batched generator on {device}: CPU generators "
          f"{rows[-2]['images_per_s'] / baseline:.2f}x, counter streams {rows[-1]['images_per_s'] / baseline:.2f}x")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=35)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    rows = run(args.num, args.nfe, args.resolution, args.channels, args.device)
    return report(result_name("sampling", args.device), rows)


if __name__ == "__main__":
    main()

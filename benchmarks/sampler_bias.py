"""Sampler discretization bias: each sampler on the exact denoiser of a known Gaussian, against steps.

Data N(0, C) in 16 dimensions, C with eigenvalues log-spaced from 1e-3 to 1 in a random basis; its
denoiser is exact (:class:`memorize.empirical.GaussianDenoiser`), so any error in the samples' covariance
is the sampler's. For each sampler and number of steps (Karras grid, sigma 0.002 to 80): the sample
variance along each eigenvector over the true eigenvalue, min and max over the 16 directions, from
4,000 samples in float64 (Monte-Carlo spread of one ratio: about +-2%), and the denoiser evaluations.

    python -m benchmarks.sampler_bias [--samples 4000] [--steps 10 18 32 64]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import report
from memorize.config import SAMPLERS, SampleConfig
from memorize.empirical import GaussianDenoiser
from memorize.sampling import generate, sample_seeds

# Denoiser evaluations for n steps (the last step of heun is Euler: no correction to sigma = 0).
EVALUATIONS = {"heun": lambda n: 2 * n - 1}


def gaussian(dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64)).Q
    return basis, torch.logspace(-3, 0, dim, dtype=torch.float64)


def run(samples: int, steps: list[int]) -> list[dict]:
    basis, eigenvalues = gaussian()
    denoiser = GaussianDenoiser(torch.zeros(len(eigenvalues), dtype=torch.float64),
                                basis @ torch.diag(eigenvalues) @ basis.T)
    rows = []
    for sampler in SAMPLERS:
        for n in steps:
            cfg = SampleConfig(sampler=sampler, steps=n, num=samples, batch_size=samples)
            out = generate(denoiser, (len(eigenvalues),), sample_seeds(1, range(samples)), cfg, dtype=torch.float64,
                           progress=False).double()
            ratio = (out @ basis).var(0) / eigenvalues
            rows.append({"sampler": sampler, "steps": n, "evaluations": EVALUATIONS.get(sampler, lambda k: k)(n),
                         "var_ratio_min": ratio.min().item(), "var_ratio_max": ratio.max().item()})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 18, 32, 64])
    args = parser.parse_args(argv)
    return report("sampler_bias", run(args.samples, args.steps),
                  "sample variance / true variance along each eigenvector of a 16-d Gaussian, min and max")


if __name__ == "__main__":
    main()

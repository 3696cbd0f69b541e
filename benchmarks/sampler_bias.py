"""Sampler discretization bias: each sampler on the exact denoiser of a known Gaussian, against steps.

The 16-d Gaussian of :mod:`memorize.sampler_bias` (eigenvalues log-spaced from 1e-3 to 1): for each
sampler and number of steps (Karras grid, sigma 0.002 to 80), the sample variance along each eigenvector
over the true eigenvalue, min and max over the 16 directions (exact for heun, ddim and dpm_solver_2m;
from 20,000 samples for ddpm and euler_maruyama, standard error of one ratio 1%), and the denoiser
evaluations. The samplers' default steps (``memorize.config.DEFAULT_SAMPLE_STEPS``) are the fewest of
these that keep every ratio within 10% of 1.

    python -m benchmarks.sampler_bias [--steps 18 32 64 100 256]
"""

from __future__ import annotations

import argparse

from benchmarks.common import report
from memorize.config import DEFAULT_SAMPLE_STEPS, SAMPLERS, SampleConfig
from memorize.sampler_bias import variance_ratio

# Denoiser evaluations for n steps (the last step of heun is Euler: no correction to sigma = 0).
EVALUATIONS = {"heun": lambda n: 2 * n - 1}


def run(steps: list[int]) -> list[dict]:
    rows = []
    for sampler in SAMPLERS:
        for n in sorted(set(steps) | {DEFAULT_SAMPLE_STEPS[sampler]}):
            ratio = variance_ratio(SampleConfig(sampler=sampler, steps=n))
            rows.append({"sampler": sampler, "steps": n, "default": n == DEFAULT_SAMPLE_STEPS[sampler],
                         "evaluations": EVALUATIONS.get(sampler, lambda k: k)(n),
                         "var_ratio_min": round(ratio.min().item(), 3), "var_ratio_max": round(ratio.max().item(), 3)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--steps", type=int, nargs="+", default=[18, 32, 64, 100, 256])
    args = parser.parse_args(argv)
    return report("sampler_bias", run(args.steps),
                  "sample variance / true variance along each eigenvector of a 16-d Gaussian, min and max")


if __name__ == "__main__":
    main()

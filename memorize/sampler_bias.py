"""Discretization bias of a sampler, measured where the answer is known.

Data ``N(0, C)`` in 16 dimensions, ``C`` with eigenvalues log-spaced from 1e-3 to 1 in a random basis; its
denoiser is exact (:class:`memorize.empirical.GaussianDenoiser`), so any error in the samples' covariance
is the sampler's. :func:`variance_ratio` gives the sample variance over the true variance along each
eigenvector. The denoiser is linear, so a deterministic sampler is a linear map ``M`` of its initial noise
``sigma_max z`` and its covariance ``sigma_max^2 M M^T`` is computed exactly from the images of the basis
vectors; a stochastic sampler is measured on ``samples`` draws (standard error ``sqrt(2 / samples)``).
"""

from __future__ import annotations

import torch

from memorize.config import SampleConfig
from memorize.diffusion.schedules import sampling_sigmas
from memorize.empirical import GaussianDenoiser
from memorize.sampling import run_sampler

DETERMINISTIC = ("heun", "ddim", "dpm_solver_2m")  # at churn = 0 and eta = 0, the defaults


def gaussian_16d(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, GaussianDenoiser]:
    """(eigenvector basis as columns, eigenvalues 1e-3 to 1, the exact denoiser) of the test Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64)).Q
    eigenvalues = torch.logspace(-3, 0, 16, dtype=torch.float64)
    return basis, eigenvalues, GaussianDenoiser(torch.zeros(16, dtype=torch.float64),
                                                basis @ torch.diag(eigenvalues) @ basis.T)


def variance_ratio(cfg: SampleConfig, samples: int = 20_000, seed: int = 1) -> torch.Tensor:
    """Sample variance over the true variance along each of the 16 eigenvectors for sampler settings ``cfg``
    (its steps, schedule and sampler options): exact for the deterministic samplers, from ``samples`` draws
    for the stochastic ones."""
    basis, eigenvalues, denoiser = gaussian_16d()
    sigmas = sampling_sigmas(cfg.schedule, cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).double()
    stochastic = cfg.sampler not in DETERMINISTIC or cfg.churn > 0 or cfg.eta > 0
    if not stochastic:
        images = run_sampler(cfg, denoiser, sigmas[0] * torch.eye(16, dtype=torch.float64), sigmas, None)
        return torch.diagonal(basis.T @ (images.T @ images) @ basis) / eigenvalues
    gen = torch.Generator().manual_seed(seed)

    def noise() -> torch.Tensor:
        return torch.randn(samples, 16, generator=gen, dtype=torch.float64)

    return (run_sampler(cfg, denoiser, sigmas[0] * noise(), sigmas, noise) @ basis).var(0) / eigenvalues

"""Noise levels: how training draws sigma, and the sigma grids samplers step through.

All in the EDM variance-exploding form ``x_sigma = x0 + sigma * eps``. A
variance-preserving schedule with cumulative ``alpha_bar(t)`` is the same
process at ``sigma(t) = sqrt((1 - alpha_bar(t)) / alpha_bar(t))`` with inputs
scaled by ``1 / sqrt(1 + sigma^2)`` (Karras et al. 2022, Table 1).
"""

from __future__ import annotations

import math

import torch

# Song et al. 2021 VP-SDE constants (= DDPM's beta_1 = 1e-4, beta_T = 0.02 at T = 1000).
VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0
# Nichol & Dhariwal 2021 cosine-schedule offset.
COSINE_S = 0.008
# Smallest t drawn for VP training (Song et al. 2021 use 1e-5; 1e-3 keeps sigma >= ~0.01).
VP_T_MIN = 1e-3


def vp_linear_sigma(t: torch.Tensor) -> torch.Tensor:
    """Linear-beta VP schedule: ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``, t in (0, 1]."""
    beta_d = VP_BETA_MAX - VP_BETA_MIN
    return torch.sqrt(torch.expm1(0.5 * beta_d * t**2 + VP_BETA_MIN * t))


def vp_cosine_sigma(t: torch.Tensor) -> torch.Tensor:
    """Cosine VP schedule (Nichol & Dhariwal 2021):
    ``alpha_bar(t) = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s))``, ``sigma = sqrt(1/alpha_bar - 1)``."""
    f = lambda u: torch.cos(0.5 * math.pi * (u + COSINE_S) / (1 + COSINE_S)) ** 2  # noqa: E731
    alpha_bar = (f(t) / f(torch.zeros_like(t))).clamp(min=1e-12)
    return torch.sqrt(1.0 / alpha_bar - 1.0)


VP_SIGMA = {"vp_linear": vp_linear_sigma, "vp_cosine": vp_cosine_sigma}


def vp_linear_time(sigma: float) -> float:
    """Inverse of :func:`vp_linear_sigma`: the t in (0, 1] solving ``beta_d t^2 / 2 + beta_min t = log(1 + sigma^2)``."""
    a, b, c = 0.5 * (VP_BETA_MAX - VP_BETA_MIN), VP_BETA_MIN, -math.log1p(sigma**2)
    return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)


def vp_cosine_time(sigma: float) -> float:
    """Inverse of :func:`vp_cosine_sigma`: ``cos^2(pi/2 (t+s)/(1+s)) = cos^2(pi/2 s/(1+s)) / (1 + sigma^2)``."""
    f0 = math.cos(0.5 * math.pi * COSINE_S / (1 + COSINE_S)) ** 2
    return (1 + COSINE_S) * (2 / math.pi) * math.acos(math.sqrt(f0 / (1 + sigma**2))) - COSINE_S


VP_TIME = {"vp_linear": vp_linear_time, "vp_cosine": vp_cosine_time}


def sample_training_sigma(kind: str, n: int, generator: torch.Generator, *, p_mean: float = -1.2,
                          p_std: float = 1.2, sigma_max: float = 80.0) -> torch.Tensor:
    """Draw ``n`` training noise levels.

    ``edm``: ``ln sigma ~ N(p_mean, p_std^2)`` (Karras et al. 2022, Table 1).
    ``vp_linear`` / ``vp_cosine``: ``t ~ U(VP_T_MIN, 1)``, ``sigma = sigma(t)``
    clipped at ``sigma_max``.
    """
    if kind == "edm":
        return torch.exp(p_mean + p_std * torch.randn(n, generator=generator))
    t = VP_T_MIN + (1 - VP_T_MIN) * torch.rand(n, generator=generator)
    return VP_SIGMA[kind](t).clamp(max=sigma_max)


def _check_grid(steps: int, sigma_min: float, sigma_max: float) -> None:
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM sampling grid (Karras et al. 2022, eq. 5), ``steps`` levels then a final 0:

    ``sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, ``rho > 0``.
    """
    _check_grid(steps, sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho: expected > 0, got {rho}")
    if steps == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def vp_sigmas(kind: str, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """VP sampling grid: ``sigma(t)`` at ``steps`` uniformly spaced t (DDPM/DDIM's uniform timestep spacing),
    then a final 0. The t range is where ``sigma(t)`` lies in ``[sigma_min, sigma_max]`` (within
    ``[VP_T_MIN, 1]``): from ``min(1, t(sigma_max))`` down to ``max(VP_T_MIN, t(sigma_min))``, so no level
    repeats (clipping a uniform t grid to ``sigma_max`` would repeat its top level)."""
    if kind not in VP_TIME:
        raise ValueError(f"kind: expected one of {', '.join(VP_TIME)}, got {kind!r}")
    _check_grid(steps, sigma_min, sigma_max)
    time = VP_TIME[kind]
    t_top, t_bottom = min(1.0, time(sigma_max)), max(VP_T_MIN, time(sigma_min))
    t = torch.linspace(t_top, t_bottom, steps, dtype=torch.float64)
    sigmas = VP_SIGMA[kind](t)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sampling_sigmas(schedule: str, steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The descending grid of ``steps + 1`` noise levels a sampler walks, ending at 0."""
    if schedule == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho)
    if schedule not in VP_TIME:
        raise ValueError(f"schedule: expected one of karras, {', '.join(VP_TIME)}, got {schedule!r}")
    return vp_sigmas(schedule, steps, sigma_min, sigma_max)

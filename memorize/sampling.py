"""Samplers over the denoiser interface ``D(x, sigma) -> x0_hat``.

Each sampler is a short function that walks a descending grid of noise levels
``sigmas`` (ending at 0) from ``x = sigma_0 * noise``. They take a denoiser,
never a raw network, so trained models, the empirical denoiser and analytic
denoisers are interchangeable. Written in the VE form ``x_sigma = x0 + sigma eps``
(Karras et al. 2022), where ``eps_hat = (x - D) / sigma`` and the probability-flow
ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``.

Randomness: sample i owns a stream of standard normals keyed by its own seed, so
sample i is the same whatever the batch it is drawn in. Two kinds (``sample.noise``):
:class:`SampleNoise` (``generator``, the default) draws each stream from its own
``torch.Generator`` on the CPU and moves the batch to the device; :class:`CounterNoise`
(``counter``) computes every stream where the sampler runs, as a pure function of
(seed, draw, element): no host work per step on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from memorize.config import SampleConfig
from memorize.diffusion.schedules import sampling_sigmas
from memorize.graphs import GraphedCall
from memorize.models.common import NULL_LABEL
from memorize.progress import progress_bar

DenoiserFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def run_seed(cell_seed: int, sample_seed: int) -> int:
    """The run seed of a cell's samples: ``sample_seed + 2^32 * cell_seed`` (``0 <= sample_seed < 2^32``),
    so cells trained with different seeds draw from different noise, and twins and denoisers of one
    cell (same seeds) draw from the same noise."""
    return int(sample_seed) + (int(cell_seed) << 32)


def sample_seeds(seed: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Seed of sample ``i`` for run seed ``seed``: independent streams from ``SeedSequence(seed, spawn_key=(i,))``."""
    return np.asarray([np.random.SeedSequence(seed, spawn_key=(int(i),)).generate_state(1, np.uint64)[0] >> 1
                       for i in indices], dtype=np.int64)


class SampleNoise:
    """Standard normal noise for a batch, drawn per sample from that sample's own generator (on the CPU,
    so the same seeds give the same noise on every device)."""

    def __init__(self, seeds: Sequence[int] | np.ndarray, shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.device, self.dtype = tuple(shape), device, dtype

    def __call__(self) -> torch.Tensor:
        draws = [torch.randn(self.shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(self.device, self.dtype)


# SplitMix64 constants (Steele, Lea & Flood 2014), as two's-complement int64.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic: the sign bit would spread)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(state: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function of an int64 state (Steele, Lea & Flood 2014; wrapping arithmetic):
    ``z = (s ^ s >> 30) * 0xBF58476D1CE4E5B9; z = (z ^ z >> 27) * 0x94D049BB133111EB; z ^ z >> 31``."""
    z = (state ^ _shift_right(state, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


class CounterNoise:
    """Standard normal noise for a batch, each sample's stream computed on ``device`` from its seed alone.

    Sample i with seed s has the key ``k = splitmix64(s)``; value n of its stream (the j-th element of its
    t-th draw, ``n = t * numel + j``) is the SplitMix64 sequence of seed k, ``u_n = splitmix64(k + (n + 1) *
    0x9E3779B97F4A7C15) mod 2^64``, turned into a normal by Box-Muller on its two 32-bit halves (float64):
    ``sqrt(-2 ln((hi + 1) / 2^32)) cos(2 pi lo / 2^32)``. Integer steps are exact on every device, so a sample
    differs between CPU and GPU only by the float64 rounding of log and cos; tails stop at 6.7 sigma.
    """

    def __init__(self, seeds: Sequence[int] | np.ndarray, shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.keys = splitmix64(torch.as_tensor(np.asarray(seeds, dtype=np.int64))).to(device)[:, None]
        self.shape, self.device, self.dtype = tuple(shape), device, dtype
        self.numel, self.draws = math.prod(self.shape), 0

    def __call__(self) -> torch.Tensor:
        counter = torch.arange(self.draws * self.numel + 1, (self.draws + 1) * self.numel + 1, device=self.device)
        bits = splitmix64(self.keys + counter * _GOLDEN)
        high = (_shift_right(bits, 32).double() + 1) / 2**32  # in (0, 1]
        low = (bits & 0xFFFFFFFF).double() / 2**32  # in [0, 1)
        self.draws += 1
        normal = torch.sqrt(-2 * torch.log(high)) * torch.cos(2 * math.pi * low)
        return normal.reshape(len(self.keys), *self.shape).to(self.dtype)


def _level(sigmas: torch.Tensor, i: int, like: torch.Tensor) -> torch.Tensor:
    return sigmas[i].to(like.device, like.dtype)


def heun(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, noise: SampleNoise | None = None,
         churn: float = 0.0, churn_sigma_min: float = 0.0, churn_sigma_max: float | None = None,
         churn_noise: float = 1.0, progress: bool = False) -> torch.Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Algorithm 2; deterministic Algorithm 1 at churn = 0).

    ``gamma_i = min(S_churn / n, sqrt(2) - 1)`` where ``S_tmin <= sigma_i <= S_tmax``, else 0
    (``churn``, ``churn_sigma_min``, ``churn_sigma_max``); ``sigma_hat = sigma_i (1 + gamma_i)``:
    ``x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise z``; Euler step ``d = (x_hat - D(x_hat, sigma_hat)) / sigma_hat``,
    ``x' = x_hat + (sigma_{i+1} - sigma_hat) d``, corrected by the slope at ``x'`` unless ``sigma_{i+1} = 0``.
    """
    n = len(sigmas) - 1
    top = math.inf if churn_sigma_max is None else churn_sigma_max
    for i in progress_bar(range(n), disable=not progress, desc="heun", leave=False):
        sigma, sigma_next = _level(sigmas, i, x), _level(sigmas, i + 1, x)
        churned = churn > 0 and churn_sigma_min <= float(sigmas[i]) <= top
        gamma = min(churn / n, math.sqrt(2.0) - 1.0) if churned else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            x = x + torch.sqrt(sigma_hat**2 - sigma**2) * churn_noise * noise()
        d = (x - denoiser(x, sigma_hat)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigmas[i + 1] > 0:  # the grid on the host: no device read per step
            d_next = (x_next - denoiser(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


def euler_maruyama(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, noise: SampleNoise,
                   progress: bool = False) -> torch.Tensor:
    """The reverse SDE of ``dx = sqrt(2 sigma) dw`` (``sigma(t) = t``; Song et al. 2021),
    ``dx = 2 (x - D) / sigma dsigma + sqrt(2 sigma) dw`` run from ``sigma_i`` down to ``sigma_{i+1}``, integrated
    exactly with ``D`` held at ``D(x_i, sigma_i)`` over the step (the exponential Euler-Maruyama step, Lu et al.
    2022's SDE-DPM-Solver-1): ``x - D`` shrinks by ``(sigma_{i+1} / sigma_i)^2`` and the noise adds the variance
    ``int 2 s (sigma_{i+1} / s)^4 ds = sigma_{i+1}^2 (1 - sigma_{i+1}^2 / sigma_i^2)``, so

    ``x_{i+1} = D + (sigma_{i+1} / sigma_i)^2 (x_i - D) + sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2) z``.

    The plain Euler-Maruyama step ``x + 2 (sigma_i - sigma_{i+1}) / sigma_i (D - x) + ...`` moves more than the
    whole way to ``D`` where ``sigma_{i+1} < sigma_i / 2`` (the last steps of a Karras grid) and inflates the
    variance; this one is exact for a point mass at any step size. In VE coordinates it is the same step as
    DDPM's posterior draw (:func:`ddpm`). The last step (to sigma = 0) returns ``D(x, sigma_{n-1})``.
    """
    n = len(sigmas) - 1
    for i in progress_bar(range(n), disable=not progress, desc="euler_maruyama", leave=False):
        sigma, sigma_next = _level(sigmas, i, x), _level(sigmas, i + 1, x)
        denoised = denoiser(x, sigma)
        if sigmas[i + 1] == 0:
            return denoised
        shrink = (sigma_next / sigma) ** 2
        x = denoised + shrink * (x - denoised) + sigma_next * torch.sqrt(1 - shrink) * noise()
    return x


def ddim(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, noise: SampleNoise | None = None,
         eta: float = 0.0, progress: bool = False) -> torch.Tensor:
    """DDIM (Song, Meng, Ermon 2020, eq. 12) in VE coordinates:

    ``x_{i+1} = D + sqrt(sigma_{i+1}^2 - c^2) eps_hat + c z``, ``eps_hat = (x - D) / sigma_i``,
    ``c = eta sigma_{i+1} sqrt(sigma_i^2 - sigma_{i+1}^2) / sigma_i``.

    ``eta = 0`` is deterministic; ``eta = 1`` draws from the DDPM posterior ``q(x_{i+1} | x_i, x0 = D)``.
    """
    n = len(sigmas) - 1
    for i in progress_bar(range(n), disable=not progress, desc="ddim", leave=False):
        sigma, sigma_next = _level(sigmas, i, x), _level(sigmas, i + 1, x)
        denoised = denoiser(x, sigma)
        eps_hat = (x - denoised) / sigma
        c = eta * sigma_next * torch.sqrt(sigma**2 - sigma_next**2) / sigma
        x = denoised + torch.sqrt(sigma_next**2 - c**2) * eps_hat
        if eta > 0 and sigmas[i + 1] > 0:
            x = x + c * noise()
    return x


def ddpm(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, noise: SampleNoise,
         progress: bool = False) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): each step draws from the posterior
    ``q(x_{i+1} | x_i, x0 = D)`` = N(D + sigma_{i+1}^2/sigma_i^2 (x - D), sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2),
    which is DDIM at ``eta = 1``."""
    return ddim(denoiser, x, sigmas, noise, eta=1.0, progress=progress)


def dpm_solver_2m(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, noise: SampleNoise | None = None,
                  progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), a multistep exponential integrator of the
    probability-flow ODE in the data prediction ``D``. In VE coordinates (``alpha = 1``,
    ``lambda = -log sigma``, ``h_i = lambda_{i+1} - lambda_i``) the exact solution with ``D`` held fixed over a
    step is ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) D``; the 2M method takes

    ``D = (1 + 1 / (2 r)) D_i - 1 / (2 r) D_{i-1}``, ``r = h_{i-1} / h_i``,

    the first step and the last (to ``sigma = 0``, where the update is ``x = D_i``) with ``D = D_i``.
    Deterministic: ``noise`` is unused. One denoiser evaluation per step.
    """
    n = len(sigmas) - 1
    previous, h_previous = None, None
    for i in progress_bar(range(n), disable=not progress, desc="dpm_solver_2m", leave=False):
        sigma, sigma_next = _level(sigmas, i, x), _level(sigmas, i + 1, x)
        denoised = denoiser(x, sigma)
        if sigmas[i + 1] == 0:
            return denoised
        h = torch.log(sigma / sigma_next)
        estimate = denoised
        if previous is not None:
            r = h_previous / h
            estimate = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        ratio = sigma_next / sigma
        x = ratio * x + (1 - ratio) * estimate
        previous, h_previous = denoised, h
    return x


def run_sampler(cfg: SampleConfig, denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor,
                noise: SampleNoise) -> torch.Tensor:
    """Dispatch ``cfg.sampler`` with its own options."""
    if cfg.sampler == "heun":
        return heun(denoiser, x, sigmas, noise, churn=cfg.churn, churn_sigma_min=cfg.churn_sigma_min,
                    churn_sigma_max=cfg.churn_sigma_max, churn_noise=cfg.churn_noise)
    if cfg.sampler == "euler_maruyama":
        return euler_maruyama(denoiser, x, sigmas, noise)
    if cfg.sampler == "ddim":
        return ddim(denoiser, x, sigmas, noise, eta=cfg.eta)
    if cfg.sampler == "ddpm":
        return ddpm(denoiser, x, sigmas, noise)
    if cfg.sampler == "dpm_solver_2m":
        return dpm_solver_2m(denoiser, x, sigmas)
    raise ValueError(f"sample.sampler: unknown sampler {cfg.sampler!r}")


def guided(denoiser: Callable[..., torch.Tensor], w: float) -> Callable[..., torch.Tensor]:
    """Classifier-free guidance (Ho & Salimans 2022) written for the denoiser interface:

    ``D_w(x, sigma, c) = D(x, sigma, c) + w (D(x, sigma, c) - D(x, sigma, none))``.

    ``x0_hat = x - sigma eps_hat`` is affine in ``eps_hat``, so this is their
    ``eps_w = (1 + w) eps(x, c) - w eps(x, none)``. ``none`` is :data:`NULL_LABEL`; ``w = 0`` returns
    ``denoiser`` itself (the conditional samples, unchanged)."""
    if w == 0:
        return denoiser

    null: list[torch.Tensor] = []  # the null labels, made once per batch shape (a class-conditional
    # closed-form denoiser then groups them by class once: memorize.empirical.ClassConditionalDenoiser)

    def guided_denoiser(x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor) -> torch.Tensor:
        conditional = denoiser(x, sigma, labels)
        if not null or (null[0].shape, null[0].dtype, null[0].device) != (labels.shape, labels.dtype, labels.device):
            null[:] = [torch.full_like(labels, NULL_LABEL)]
        unconditional = denoiser(x, sigma, null[0])
        return conditional + w * (conditional - unconditional)

    return guided_denoiser


@torch.no_grad()
def generate(denoiser: Callable[..., torch.Tensor], shape: tuple[int, ...], seeds: np.ndarray, cfg: SampleConfig,
             device: torch.device | str = "cpu", labels: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32, progress: bool = True,
             cuda_graph: Literal["auto", "off"] = "off") -> torch.Tensor:
    """Draw ``len(seeds)`` samples of ``shape``, sample i from its own seed, in batches of ``cfg.batch_size``.

    ``labels`` (one per sample) are passed to the denoiser as ``D(x, sigma, labels)`` when given, guided with
    weight ``cfg.guidance`` (:func:`guided`). ``cuda_graph: auto``: on a CUDA device each denoiser call is
    captured in a CUDA graph once per batch shape and replayed (:class:`memorize.graphs.GraphedCall`; the
    same kernels on the same inputs). Returns a float32 CPU tensor ``(K, *shape)``.
    """
    if cfg.guidance > 0 and labels is None:
        raise ValueError("sample.guidance: classifier-free guidance needs class labels (a class-conditional model)")
    if labels is not None and len(labels) != len(seeds):
        raise ValueError(f"labels: one per sample, got {len(labels)} for {len(seeds)} seeds")
    if cuda_graph == "auto":
        denoiser = GraphedCall(denoiser, "sampling")
    if labels is not None:
        denoiser = guided(denoiser, cfg.guidance)
    sigmas = sampling_sigmas(cfg.schedule, cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    out = []
    for start in progress_bar(range(0, len(seeds), cfg.batch_size), disable=not progress,
                              desc=f"sampling ({cfg.sampler})", unit="batch"):
        stop = min(start + cfg.batch_size, len(seeds))
        noise = (CounterNoise if cfg.noise == "counter" else SampleNoise)(seeds[start:stop], shape, device, dtype)
        x = noise() * sigmas[0].to(dtype)
        fn = denoiser
        if labels is not None:
            batch_labels = labels[start:stop].to(device)
            fn = lambda x, sigma, _l=batch_labels: denoiser(x, sigma, _l)  # noqa: E731
        out.append(run_sampler(cfg, fn, x, sigmas, noise).float().cpu())
    return torch.cat(out) if out else torch.empty((0, *shape))

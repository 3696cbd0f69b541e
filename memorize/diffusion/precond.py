"""Network parameterizations, each wrapped into the one denoiser interface.

Every parameterization is an instance of EDM's form (Karras et al. 2022, eq. 7
and Table 1): a network ``F`` is turned into a denoiser by

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

and trained to regress its own target ``(x0 - c_skip x) / c_out``, which is the
x0-space loss ``||D - x0||^2`` weighted by ``lambda(sigma) = 1 / c_out^2``.

With ``x = x0 + sigma eps`` (VE) and the VP view ``x_t = x / sqrt(1 + sigma^2)``,
``alpha = 1 / sqrt(1 + sigma^2)``, ``sigma_t = sigma / sqrt(1 + sigma^2)``:

====  =================  =========================  ==========================  ==============
name  predicts           c_skip                     c_out                       c_in
====  =================  =========================  ==========================  ==============
edm   EDM target         sd^2 / (sigma^2 + sd^2)    sigma sd / sqrt(s^2 + sd^2)  1/sqrt(s^2+sd^2)
eps   eps                1                          -sigma                      alpha
x0    x0                 0                          1                           alpha
v     alpha eps - s_t x0 alpha^2                    -sigma_t                    alpha
====  =================  =========================  ==========================  ==============

(``v`` is Salimans & Ho 2022's velocity: ``x0 = alpha x_t - sigma_t v``.)
The network's noise input is ``c_noise = ln(sigma) / 4`` for all four.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PARAMETERIZATIONS = ("edm", "eps", "x0", "v")


@dataclass(frozen=True)
class Coefficients:
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def coefficients(parameterization: str, sigma: torch.Tensor, sigma_data: float = 0.5) -> Coefficients:
    """The preconditioning coefficients of ``parameterization`` at ``sigma`` (table above)."""
    one = torch.ones_like(sigma)
    vp_scale = 1.0 / torch.sqrt(1.0 + sigma**2)  # alpha
    if parameterization == "edm":
        sd2 = sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = 1.0 / torch.sqrt(sigma**2 + sd2)
    elif parameterization == "eps":
        c_skip, c_out, c_in = one, -sigma, vp_scale
    elif parameterization == "x0":
        c_skip, c_out, c_in = torch.zeros_like(sigma), one, vp_scale
    elif parameterization == "v":
        c_skip, c_out, c_in = vp_scale**2, -sigma * vp_scale, vp_scale
    else:
        raise ValueError(f"diffusion.parameterization: expected one of {PARAMETERIZATIONS}, got {parameterization!r}")
    return Coefficients(c_skip, c_out, c_in, torch.log(sigma) / 4)


def network_target(parameterization: str, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                   sigma_data: float = 0.5) -> torch.Tensor:
    """What the network should output at ``x = x0 + sigma eps``: ``(x0 - c_skip x) / c_out``."""
    c = coefficients(parameterization, sigma, sigma_data)
    return (x0 - c.c_skip * x) / c.c_out


def denoised_from_output(parameterization: str, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                         sigma_data: float = 0.5) -> torch.Tensor:
    """The denoiser's estimate from the network's output: ``c_skip x + c_out F``."""
    c = coefficients(parameterization, sigma, sigma_data)
    return c.c_skip * x + c.c_out * output


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast sigma (scalar, (B,) or already shaped) to (B, 1, ..., 1) matching x."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(x.shape[0], *([1] * (x.ndim - 1)))


class Denoiser(nn.Module):
    """A network wrapped as ``D(x, sigma, labels=None) -> x0_hat`` (module docstring)."""

    def __init__(self, net: nn.Module, parameterization: str = "edm", sigma_data: float = 0.5):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"diffusion.parameterization: expected one of {PARAMETERIZATIONS}, "
                             f"got {parameterization!r}")
        self.net = net
        self.parameterization = parameterization
        self.sigma_data = sigma_data

    def network_output(self, x: torch.Tensor, sigma: torch.Tensor | float,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """``F(c_in x, c_noise)`` in float32, whatever autocast computed inside."""
        sigma = _per_sample(sigma, x)
        c = coefficients(self.parameterization, sigma, self.sigma_data)
        return self.net(c.c_in * x, c.c_noise.reshape(-1), labels).to(x.dtype)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma_b = _per_sample(sigma, x)
        output = self.network_output(x, sigma_b, labels)
        return denoised_from_output(self.parameterization, output, x, sigma_b, self.sigma_data)

    def loss(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample denoising loss ``lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2`` (mean over
        dimensions), computed as ``||F - target||^2`` in the network's output space
        (``lambda = 1 / c_out^2``, EDM eq. 8)."""
        sigma_b = _per_sample(sigma, x0)
        x = x0 + sigma_b * noise
        output = self.network_output(x, sigma_b, labels)
        target = network_target(self.parameterization, x0, x, sigma_b, self.sigma_data)
        return (output - target).square().flatten(1).mean(1)

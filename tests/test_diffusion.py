import math

import pytest
import torch

from memorize.diffusion import (PARAMETERIZATIONS, coefficients, denoised_from_output, karras_sigmas,
                                network_target, vp_cosine_sigma, vp_linear_sigma)
from memorize.empirical import GaussianDenoiser

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)


def _batch():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(SIGMAS), 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    sigma = SIGMAS.reshape(-1, 1, 1, 1)
    return x0, eps, sigma, x0 + sigma * eps


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_round_trip_target_to_denoised(param):
    x0, _, sigma, x = _batch()
    target = network_target(param, x0, x, sigma)
    torch.testing.assert_close(denoised_from_output(param, target, x, sigma), x0, rtol=1e-9, atol=1e-9)


def test_targets_are_the_textbook_quantities():
    x0, eps, sigma, x = _batch()
    alpha, sigma_t = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
    torch.testing.assert_close(network_target("eps", x0, x, sigma), eps)
    torch.testing.assert_close(network_target("x0", x0, x, sigma), x0)
    torch.testing.assert_close(network_target("v", x0, x, sigma), alpha * eps - sigma_t * x0)
    # EDM eq. 7/8: F target = (x0 - c_skip (x0 + sigma n)) / c_out
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
    torch.testing.assert_close(network_target("edm", x0, x, sigma), (x0 - c_skip * x) / c_out)
    # v-prediction is EDM preconditioning with sigma_data = 1, up to the sign of the output
    torch.testing.assert_close(network_target("v", x0, x, sigma), -network_target("edm", x0, x, sigma, sigma_data=1.0))
    # the network sees VP-scaled inputs x_t = alpha x for eps/x0/v
    for param in ("eps", "x0", "v"):
        torch.testing.assert_close(coefficients(param, sigma).c_in, alpha)


def test_edm_unit_variance_of_inputs_and_targets():
    """EDM's c_in and c_out give the network unit-variance inputs and targets (Karras et al. 2022, App. B.6)."""
    gen = torch.Generator().manual_seed(1)
    sd, n = 0.5, 200_000
    x0 = sd * torch.randn(n, generator=gen, dtype=torch.float64)
    for s in (0.01, 1.0, 50.0):
        sigma = torch.full((n,), s, dtype=torch.float64)
        x = x0 + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
        c = coefficients("edm", sigma, sd)
        assert (c.c_in * x).std().item() == pytest.approx(1.0, rel=0.01)
        assert network_target("edm", x0, x, sigma, sd).std().item() == pytest.approx(1.0, rel=0.01)


def _gaussian(d=3):
    gen = torch.Generator().manual_seed(2)
    mean = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)[:d]
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64)).Q
    cov = basis @ torch.diag(torch.tensor([0.5, 0.2, 0.05], dtype=torch.float64)[:d]) @ basis.T
    return mean, cov


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 40.0])
def test_gaussian_denoiser_is_tweedie(sigma):
    """E[x0 | x] = x + sigma^2 grad log p_sigma(x), p_sigma = N(mu, Sigma + sigma^2 I) (Tweedie / Miyasawa)."""
    mean, cov = _gaussian()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    p_sigma = torch.distributions.MultivariateNormal(mean, cov + sigma**2 * torch.eye(3, dtype=torch.float64))
    (score,) = torch.autograd.grad(p_sigma.log_prob(x).sum(), x)
    expected = x.detach() + sigma**2 * score
    torch.testing.assert_close(GaussianDenoiser(mean, cov)(x.detach(), sigma), expected, rtol=1e-8, atol=1e-10)


def test_gaussian_posterior_mean_matches_monte_carlo_regression():
    """For jointly Gaussian (x0, x), E[x0 | x] is the least-squares linear fit of x0 on x."""
    mean, cov = _gaussian()
    gen = torch.Generator().manual_seed(3)
    n, sigma = 400_000, 0.4
    x0 = mean + torch.randn(n, 3, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    x = x0 + sigma * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    coef = torch.linalg.lstsq(design, x0).solution  # (4, 3)
    probe = torch.tensor([[0.5, -1.0, 0.2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    fitted = probe @ coef[:3] + coef[3]
    torch.testing.assert_close(GaussianDenoiser(mean, cov)(probe, sigma), fitted, atol=5e-3, rtol=0)


def test_schedules():
    sig = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(sig) == 19 and sig[0] == pytest.approx(80.0) and sig[17] == pytest.approx(0.002) and sig[18] == 0
    assert torch.all(sig[1:] < sig[:-1])
    # linear VP: alpha_bar(1) = exp(-(beta_min + (beta_max - beta_min) / 2)) = exp(-10.05)
    assert vp_linear_sigma(torch.tensor(1.0)).item() == pytest.approx(math.sqrt(math.exp(10.05) - 1), rel=1e-5)
    t = torch.linspace(0.01, 0.99, 50)
    for fn in (vp_linear_sigma, vp_cosine_sigma):
        assert torch.all(torch.diff(fn(t)) > 0)
    assert vp_cosine_sigma(torch.tensor(0.0)).item() == pytest.approx(0.0, abs=1e-6)


def test_a_grid_that_cannot_be_walked_is_refused():
    """Each grid of noise levels is a descending walk from sigma_max to sigma_min: no levels, the bounds the
    wrong way round, rho = 0 (the Karras grid divides by it) or an unknown schedule (a bare KeyError) are
    named; so is rho <= 0 in a sampling config, which the CLI's --rho reaches."""
    from memorize.config import ConfigError, SampleConfig
    from memorize.diffusion.schedules import sampling_sigmas, vp_sigmas

    for grid in (lambda: karras_sigmas(0), lambda: vp_sigmas("vp_linear", 0)):
        with pytest.raises(ValueError, match="^steps: expected >= 1, got 0$"):
            grid()
    for grid in (lambda: karras_sigmas(3, 10.0, 1.0), lambda: karras_sigmas(3, 0.0, 80.0),
                 lambda: sampling_sigmas("vp_cosine", 3, 80.0, 80.0)):
        with pytest.raises(ValueError, match="^sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, got"):
            grid()
    with pytest.raises(ValueError, match="^rho: expected > 0, got 0$"):
        karras_sigmas(3, rho=0)
    with pytest.raises(ValueError, match="^schedule: expected one of karras, vp_linear, vp_cosine, got 'edm'$"):
        sampling_sigmas("edm", 3, 0.002, 80.0)
    with pytest.raises(ValueError, match="^kind: expected one of vp_linear, vp_cosine, got 'karras'$"):
        vp_sigmas("karras", 3)
    for rho in (0.0, -1.0):
        with pytest.raises(ConfigError, match="^sample.rho: must be > 0$"):
            SampleConfig(rho=rho)
    assert SampleConfig(rho=0.5).rho == 0.5 and len(karras_sigmas(1)) == 2


@pytest.mark.parametrize("kind", ["vp_linear", "vp_cosine"])
def test_vp_grids_span_the_sigma_range_without_repeating_a_level(kind):
    from memorize.diffusion.schedules import VP_SIGMA, VP_TIME, vp_sigmas

    for sigma in (0.002, 0.5, 80.0):  # the inverse schedules are inverses
        assert VP_SIGMA[kind](torch.tensor(VP_TIME[kind](sigma), dtype=torch.float64)).item() == pytest.approx(sigma)
    for steps in (18, 100):
        grid = vp_sigmas(kind, steps, 0.002, 80.0)
        levels = grid[:-1]
        assert len(levels) == steps and grid[-1] == 0 and (levels[1:] < levels[:-1]).all()
        assert levels[0].item() == pytest.approx(80.0)  # sigma(1) is above 80 for both: the top is sigma_max
        assert levels[-1].item() >= 0.002

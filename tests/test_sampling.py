import numpy as np
import pytest
import torch

from memorize.config import SampleConfig
from memorize.empirical import GaussianDenoiser, empirical_denoiser
from memorize.sampling import SampleNoise, generate, sample_seeds

ALL = [("heun", 18), ("ddim", 18), ("ddpm", 18), ("euler_maruyama", 18), ("dpm_solver_2m", 18)]


@pytest.mark.parametrize("sampler, steps", ALL)
def test_empirical_denoiser_of_one_image_returns_that_image(sampler, steps):
    image = torch.rand(1, 1, 4, 4) * 2 - 1
    cfg = SampleConfig(sampler=sampler, steps=steps, num=6, batch_size=4, eta=0.5)
    out = generate(empirical_denoiser(image), (1, 4, 4), sample_seeds(0, range(6)), cfg, progress=False)
    torch.testing.assert_close(out, image.expand(6, -1, -1, -1), atol=1e-6, rtol=0)


# Step counts where discretization bias (measured: heun 18 steps inflates the variance ~10%, ddpm 60 steps
# shrinks it ~15%) is below the Monte-Carlo error.
@pytest.mark.parametrize("sampler, steps, eta", [("heun", 100, 0.0), ("ddim", 200, 0.0), ("ddim", 200, 0.5),
                                                 ("ddpm", 400, 0.0), ("euler_maruyama", 400, 0.0),
                                                 ("dpm_solver_2m", 100, 0.0)])
def test_gaussian_denoiser_samples_have_the_gaussian_moments(sampler, steps, eta):
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64)).Q
    cov = basis @ torch.diag(torch.tensor([0.5, 0.2, 0.05], dtype=torch.float64)) @ basis.T
    k = 3000
    cfg = SampleConfig(sampler=sampler, steps=steps, num=k, batch_size=k, eta=eta)
    out = generate(GaussianDenoiser(mean, cov), (3,), sample_seeds(1, range(k)), cfg, dtype=torch.float64,
                   progress=False).double()
    # standard errors: mean ~ sqrt(0.5/3000) = 0.013, covariance entries ~ 0.5*sqrt(2/3000) = 0.013
    torch.testing.assert_close(out.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), cov, atol=0.04, rtol=0)


def test_sample_i_does_not_depend_on_batch_size():
    train = torch.rand(10, 1, 4, 4) * 2 - 1
    den = empirical_denoiser(train)
    seeds = sample_seeds(3, range(12))
    for sampler in ("heun", "ddpm", "euler_maruyama"):
        a = generate(den, (1, 4, 4), seeds, SampleConfig(sampler=sampler, steps=8, batch_size=5, churn=2.0),
                     progress=False)
        b = generate(den, (1, 4, 4), seeds, SampleConfig(sampler=sampler, steps=8, batch_size=12, churn=2.0),
                     progress=False)
        assert torch.equal(a, b)


def test_seeds_are_distinct_and_reproducible():
    seeds = sample_seeds(0, range(1000))
    assert len(set(seeds.tolist())) == 1000 and np.array_equal(seeds[10:20], sample_seeds(0, range(10, 20)))
    assert not np.array_equal(seeds[:10], sample_seeds(1, range(10)))
    noise = SampleNoise(seeds[:3], (2,))
    assert torch.equal(noise()[1], SampleNoise(seeds[1:2], (2,))()[0])


def test_dpm_solver_2m_is_second_order_and_ddim_first_on_the_gaussian_ode():
    # 1-d data N(0, s^2): D(x, sigma) = s^2 / (s^2 + sigma^2) x, and the probability-flow ODE carries x(sigma_max)
    # to x(0) = x(sigma_max) s / sqrt(s^2 + sigma_max^2) exactly. Doubling the steps of a p-th order method
    # divides its error by about 2^p.
    from memorize.diffusion.schedules import karras_sigmas
    from memorize.sampling import ddim, dpm_solver_2m

    s2 = 0.25
    denoiser = lambda x, sigma: s2 / (s2 + sigma**2) * x  # noqa: E731
    start = torch.tensor([80.0], dtype=torch.float64)
    exact = start * s2**0.5 / (s2 + 80.0**2) ** 0.5

    def errors(sampler):
        return [abs(sampler(denoiser, start.clone(), karras_sigmas(n)) - exact).item() for n in (20, 40, 80)]

    dpm, first = errors(dpm_solver_2m), errors(ddim)
    assert all(3.5 < a / b < 5.5 for a, b in zip(dpm, dpm[1:])), dpm  # measured 4.7, 4.4
    assert all(1.8 < a / b < 2.2 for a, b in zip(first, first[1:])), first  # measured 1.98, 1.99
    assert dpm[-1] < first[-1] / 10


def test_heun_churns_only_inside_its_sigma_window():
    den = GaussianDenoiser(torch.zeros(3, dtype=torch.float64), torch.diag(torch.tensor([1.0, 0.5, 0.1],
                                                                                       dtype=torch.float64)))
    seeds = sample_seeds(5, range(6))

    def draw(**churn):  # a Gaussian's samples move with every change of noise (an empirical denoiser's snap back)
        return generate(den, (3,), seeds, SampleConfig(sampler="heun", steps=10, num=6, batch_size=6, **churn),
                        dtype=torch.float64, progress=False)

    plain = draw()
    assert torch.equal(draw(churn=5.0, churn_sigma_min=1e6), plain)  # no level inside the window: no churn
    assert torch.equal(draw(churn=5.0, churn_sigma_max=1e-4), plain)
    everywhere = draw(churn=5.0)
    assert not torch.equal(everywhere, plain)
    assert torch.equal(draw(churn=5.0, churn_sigma_min=0.0, churn_sigma_max=80.0), everywhere)
    assert not torch.equal(draw(churn=5.0, churn_noise=1.007), everywhere)


def _variance_ratio(sampler: str, steps: int | None) -> torch.Tensor:
    from memorize.testing.samplers import variance_ratio

    return variance_ratio(SampleConfig(sampler=sampler, steps=steps))


@pytest.mark.parametrize("sampler", ["heun", "dpm_solver_2m", "ddim", "ddpm", "euler_maruyama"])
def test_every_sampler_at_its_default_steps_keeps_the_variance_within_10_percent(sampler):
    ratio = _variance_ratio(sampler, None)
    assert ((ratio - 1).abs() < 0.10).all(), f"{sampler}: variance ratio {ratio.min():.3f} to {ratio.max():.3f}"


def test_the_variance_check_catches_too_few_steps():
    # 18 steps, the old default: heun inflates (exactly 1.09-1.27), ddim shrinks (0.61-0.74)
    assert _variance_ratio("heun", 18).max() > 1.2 and _variance_ratio("ddim", 18).min() < 0.65


def test_euler_maruyama_leaves_the_grids_noise_on_a_point_mass():
    """On a point mass the reverse SDE's solution at sigma is x0 + sigma z: the exponential step is exact, so
    before the last step the noise left is sigma_{n-1} (0.002 on the Karras grid), at any number of steps
    (the plain Euler-Maruyama step left 0.0197 at 18 steps)."""
    from memorize.diffusion.schedules import sampling_sigmas
    from memorize.sampling import euler_maruyama

    x0 = torch.zeros(1, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    noise = lambda: torch.randn(50_000, 4, generator=gen, dtype=torch.float64)  # noqa: E731
    for steps in (6, 18):
        sigmas = sampling_sigmas("karras", steps, 0.002, 80.0, 7.0).double()[:-1]  # stop at sigma_{n-1}
        x = euler_maruyama(lambda x, sigma: x0.expand_as(x), sigmas[0] * noise(), sigmas, noise)
        assert abs(x.std().item() / sigmas[-1].item() - 1) < 0.01


def test_every_sampler_at_its_defaults_memorizes_with_the_empirical_denoiser():
    """The empirical denoiser of N digits only ever returns training images: every sampler at its defaults
    reproduces them (d1/d2 < 1/3 for at least 95% of the samples)."""
    from memorize.config import SAMPLERS, DataConfig
    from memorize.data import load_dataset, make_split
    from memorize.metrics import nn_ratio

    train = torch.as_tensor(make_split(load_dataset(DataConfig(name="digits")), DataConfig(n_train=64)).train)
    for sampler in SAMPLERS:
        cfg = SampleConfig(sampler=sampler, num=64, batch_size=64)
        out = generate(empirical_denoiser(train), tuple(train.shape[1:]), sample_seeds(0, range(64)), cfg,
                       progress=False)
        share = nn_ratio(out.numpy(), train.numpy(), 1 / 3).memorized.mean()
        assert share >= 0.95, f"{sampler}: {share:.2f}"

import numpy as np
import pytest
import torch

from memorize.config import SampleConfig
from memorize.empirical import GaussianDenoiser, empirical_denoiser
from memorize.sampling import SampleNoise, generate, sample_seeds

ALL = [("heun", 18), ("ddim", 18), ("ddpm", 18), ("euler_maruyama", 18)]


@pytest.mark.parametrize("sampler, steps", ALL)
def test_empirical_denoiser_of_one_image_returns_that_image(sampler, steps):
    image = torch.rand(1, 1, 4, 4) * 2 - 1
    cfg = SampleConfig(sampler=sampler, steps=steps, num=6, batch_size=4, eta=0.5)
    out = generate(empirical_denoiser(image), (1, 4, 4), sample_seeds(0, range(6)), cfg, progress=False)
    torch.testing.assert_close(out, image.expand(6, -1, -1, -1), atol=1e-6, rtol=0)


# Step counts where discretization bias (measured: heun 18 steps inflates the variance ~10%, ddpm 60 steps
# shrinks it ~15%) is below the Monte-Carlo error.
@pytest.mark.parametrize("sampler, steps, eta", [("heun", 100, 0.0), ("ddim", 200, 0.0), ("ddim", 200, 0.5),
                                                 ("ddpm", 400, 0.0), ("euler_maruyama", 400, 0.0)])
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

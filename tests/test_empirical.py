import pytest
import torch

from memorize.empirical import empirical_denoiser, gaussian_denoiser
from tests.conftest import brute_force


@pytest.mark.parametrize("sigma", [80.0, 5.0, 0.5, 0.05, 0.01, 0.002])
def test_matches_brute_force_with_near_duplicates(sigma):
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(50, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    train[10] = train[3] + 1e-3 * torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)  # near-duplicate
    x = train[:8] + sigma * torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
    got = empirical_denoiser(train, chunk_size=7)(x, sigma)  # chunk smaller than N: exercises streaming
    torch.testing.assert_close(got, brute_force(train, x, sigma), rtol=1e-5, atol=1e-9)


def test_single_training_image_and_per_sample_sigma():
    img = torch.rand(1, 2, 3, 3, dtype=torch.float64)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    assert torch.equal(empirical_denoiser(img)(x, 0.5), img.expand(4, -1, -1, -1))
    train = torch.rand(20, 6, dtype=torch.float64)
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    got = empirical_denoiser(train)(x, sigmas.reshape(4, 1))
    for i, s in enumerate(sigmas.tolist()):
        torch.testing.assert_close(got[i:i + 1], brute_force(train, x[i:i + 1], s))


def test_an_empty_set_or_a_batch_of_other_items_is_named_and_an_empty_batch_denoised():
    """Both closed-form denoisers: no training items, or a query batch whose items are not the training set's
    (8 x 8 images to a 4 x 4 set), is one line; a batch of no items returns none, of the batch's shape."""
    train = torch.randn(3, 1, 4, 4)
    for build, name in ((empirical_denoiser, "empirical"), (gaussian_denoiser, "Gaussian")):
        with pytest.raises(ValueError, match="the training set is empty"):
            build(train[:0])
        with pytest.raises(ValueError, match=f"^the {name} denoiser takes items of 16 values, as its training set; "
                                             f"got a batch of shape \\(2, 1, 8, 8\\)$"):
            build(train)(torch.zeros(2, 1, 8, 8), 1.0)
        assert build(train)(torch.zeros(0, 1, 4, 4), 1.0).shape == (0, 1, 4, 4)
        assert build(train)(torch.zeros(2, 16), 1.0).shape == (2, 16)  # flat items of the same width are fine


def test_small_sigma_is_nearest_neighbour_and_large_sigma_is_mean():
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(30, 10, generator=gen, dtype=torch.float64)
    x = torch.rand(5, 10, generator=gen, dtype=torch.float64)
    nearest = train[torch.cdist(x, train).argmin(1)]
    torch.testing.assert_close(empirical_denoiser(train)(x, 1e-3), nearest)
    torch.testing.assert_close(empirical_denoiser(train)(x, 1e4), train.mean(0).expand(5, -1), atol=1e-6, rtol=0)


def test_gaussian_denoiser_of_low_rank_data_projects_onto_its_span():
    gen = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(6, 2, generator=gen, dtype=torch.float64)).Q
    train = torch.randn(100, 2, generator=gen, dtype=torch.float64) @ basis.T + 0.5
    den = gaussian_denoiser(train)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    out = den(x, 1e-4) - 0.5
    torch.testing.assert_close(out, out @ basis @ basis.T, atol=1e-6, rtol=0)  # lies in the data's span
    mean = train.mean(0)
    cov = torch.cov(train.T, correction=0)
    expected = mean + (x - mean) @ torch.linalg.pinv(cov + 0.3**2 * torch.eye(6, dtype=torch.float64)).T @ cov.T
    torch.testing.assert_close(den(x, 0.3), expected)


def test_gaussian_mixture_denoiser_is_tweedie_of_the_mixture():
    from memorize.empirical import GaussianMixtureDenoiser

    gen = torch.Generator().manual_seed(3)
    k, d = 3, 4
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    means = torch.randn(k, d, generator=gen, dtype=torch.float64)
    factors = torch.randn(k, d, 2, generator=gen, dtype=torch.float64) * 0.5  # rank-2 covariances
    covs = factors @ factors.transpose(1, 2)
    den = GaussianMixtureDenoiser(weights, means, covs)
    for sigma in (0.05, 0.5, 3.0):
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(weights),
            torch.distributions.MultivariateNormal(means, covs + sigma**2 * torch.eye(d, dtype=torch.float64)))
        x = (2 * torch.randn(6, d, generator=gen, dtype=torch.float64)).requires_grad_(True)
        (score,) = torch.autograd.grad(mix.log_prob(x).sum(), x)
        torch.testing.assert_close(den(x.detach(), sigma), x.detach() + sigma**2 * score, rtol=1e-7, atol=1e-9)


def test_float32_path_picks_the_nearest_image_at_small_sigma_on_cifar_sized_vectors():
    gen = torch.Generator().manual_seed(4)
    train = torch.rand(500, 3, 32, 32, generator=gen) * 2 - 1
    train[1] = train[0] + 0.02 * torch.randn(3, 32, 32, generator=gen)  # a near-duplicate pair
    queries = train[:64] + 0.002 * torch.randn(64, 3, 32, 32, generator=gen)
    out32 = empirical_denoiser(train, chunk_size=128, dtype=torch.float32)(queries, 0.002)
    nearest = torch.cdist(queries.reshape(64, -1).double(), train.reshape(500, -1).double()).argmin(1)
    assert torch.equal(nearest, torch.arange(64))
    picked = torch.cdist(out32.reshape(64, -1).double(), train.reshape(500, -1).double()).argmin(1)
    assert torch.equal(picked, nearest)
    torch.testing.assert_close(out32, train[:64], atol=1e-4, rtol=0)
    out64 = empirical_denoiser(train, chunk_size=128)(queries, 0.002)
    torch.testing.assert_close(out64, brute_force(train, queries, 0.002).float(), atol=1e-6, rtol=1e-5)

import pytest
import torch

from memorize.empirical import empirical_denoiser, gaussian_denoiser


def brute_force(train: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Direct float64 formula: softmax over explicit squared distances."""
    t, q = train.reshape(len(train), -1).double(), x.reshape(len(x), -1).double()
    d2 = ((q[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=1)
    return (w @ t).reshape(x.shape)


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

"""End-to-end check of loss + preconditioning + training: on Gaussian data the optimal denoiser is the
Wiener filter, so a trained model of every parameterization must approach it."""

import pytest
import torch

from memorize.cell import load_trained_denoiser
from memorize.config import CellConfig, from_dict
from memorize.data import load_dataset
from memorize.empirical import GaussianDenoiser
from memorize.train import train


@pytest.mark.parametrize("param, noise", [("edm", "edm"), ("eps", "vp_linear"), ("x0", "vp_cosine"), ("v", "edm")])
def test_trained_denoiser_approaches_the_gaussian_posterior_mean(param, noise, tmp_path):
    cfg = from_dict(CellConfig, {
        "data": {"name": "gmm", "gmm": {"components": 1, "dim": 2, "size": 6000, "scale": 0.5},
                 "n_train": 4000, "n_heldout": 500},
        "model": {"arch": "mlp", "width": 64, "depth": 2},
        "diffusion": {"parameterization": param, "noise": noise},
        "train": {"steps": 300, "batch_size": 256, "lr": 3e-3, "warmup_steps": 20, "checkpoint_every": 300,
                  "eval_every": 300, "log_every": 100}})
    train(cfg, tmp_path, progress=False)
    denoiser, _ = load_trained_denoiser(tmp_path)
    ds = load_dataset(cfg.data)
    optimal = GaussianDenoiser(ds.mixture.means[0], ds.mixture.covs[0])
    x0 = ds.data[:500].double()
    gen = torch.Generator().manual_seed(1)
    # x0-prediction (c_skip = 0) must rebuild x to within sigma itself, and the cosine schedule rarely draws
    # sigma < 0.05: its small-sigma error is large (measured 0.8), a known property, not checked here.
    sigmas = (0.2, 1.0, 5.0) if param == "x0" else (0.05, 0.2, 1.0, 5.0)
    for sigma in sigmas:
        x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            trained = denoiser(x.float(), sigma).double()
        best = optimal(x, sigma)
        excess = (trained - best).square().sum(1).mean() / (best - x0).square().sum(1).mean()
        assert excess < 0.1, f"sigma={sigma}: excess MSE {excess:.3f} of the optimal MSE"

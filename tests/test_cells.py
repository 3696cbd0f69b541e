"""What a cell is: its training identity, its data fingerprint, training budgets that extend one run,
non-finite guards and the seeds of its samples."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch

from memorize.cell import CellPaths, load_trained_denoiser
from memorize.config import CellConfig, ConfigError, cell_id, from_dict, to_dict
from memorize.diffusion import Denoiser
from memorize.generate import read_samples, sample_cell
from memorize.train import EVAL_SEED_OFFSET, NonFiniteLossError, fixed_noise_loss, train
from tests.conftest import CountReads, count_training

# Fields that change nothing about the trained weights: each leaves the cell id alone.
NOT_IDENTITY = [("train.device", "cpu"), ("train.log_every", 7), ("train.eval_every", 11),
                ("train.checkpoint_every", 3), ("train.keep_all_checkpoints", True), ("train.steps", 999),
                ("sample.num", 10_000), ("sample.batch_size", 1), ("sample.sampler", "ddim"), ("sample.seed", 5),
                ("model.width", 512), ("model.depth", 9), ("model.patch_size", 4),  # read by dit/mlp only
                ("diffusion.sigma_max", 10.0),  # read by the VP noises only
                ("data.gmm.dim", 3),  # read by the gmm dataset only
                ("data.root", "/elsewhere")]  # a location: the content is fingerprinted instead
IDENTITY = [("data.n_train", 33), ("data.split_seed", 1), ("data.labels", "true"), ("model.channels", 16),
            ("model.dropout", 0.1), ("diffusion.parameterization", "eps"), ("diffusion.sigma_data", 0.7),
            ("train.lr", 2e-3), ("train.batch_size", 8), ("train.ema_decay", 0.99), ("train.amp", True), ("seed", 1)]


def _with(cfg: CellConfig, dotted: str, value) -> CellConfig:
    data = to_dict(cfg)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return from_dict(CellConfig, data)


@pytest.mark.parametrize("dotted, value", NOT_IDENTITY)
def test_fields_that_change_nothing_leave_the_cell_id_alone(tiny_cfg, dotted, value):
    assert cell_id(_with(tiny_cfg, dotted, value)) == cell_id(tiny_cfg)


@pytest.mark.parametrize("dotted, value", IDENTITY)
def test_fields_that_change_the_weights_change_the_cell_id(tiny_cfg, dotted, value):
    assert cell_id(_with(tiny_cfg, dotted, value)) != cell_id(tiny_cfg)


def test_training_longer_extends_the_same_run(tiny_cfg, tmp_path, monkeypatch):
    """Training to 20 and then to 40 steps is one run of 40 (bit for bit), trains 40 steps in all,
    keeps the checkpoint at 20, and asking for 20 again trains nothing."""
    steps = count_training(monkeypatch)
    short = _with(tiny_cfg, "train.steps", 20)
    longer = _with(tiny_cfg, "train.steps", 40)
    train(short, tmp_path / "extended", progress=False)
    summary = train(longer, tmp_path / "extended", progress=False)
    assert steps["n"] == 40 and summary["steps"] == 40
    assert CellPaths(tmp_path / "extended").checkpoint_steps() == [20, 40]
    train(short, tmp_path / "extended", progress=False)
    assert steps["n"] == 40

    train(longer, tmp_path / "straight", progress=False)
    a = torch.load(tmp_path / "extended" / "checkpoints" / "step-0000040.pt", weights_only=False)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "step-0000040.pt", weights_only=False)
    for key in ("model", "ema"):
        for name, tensor in b[key].items():
            assert torch.equal(a[key][name], tensor), f"{key}.{name}"


def test_a_budget_whose_checkpoint_was_not_kept_is_an_error(tiny_cfg, tmp_path):
    train(_with(tiny_cfg, "train.steps", 30), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"trained to step 30 and kept no checkpoint at step 20"):
        train(_with(tiny_cfg, "train.steps", 20), tmp_path, progress=False)


def test_a_changed_dataset_under_a_cell_is_refused(tiny_cfg, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(160, 1, 8, 8), dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, images=images)
    cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, name="npz", root=str(path)))
    train(cfg, tmp_path / "cell", progress=False)
    images[cfg.data.n_train:] = 0  # other content: the cell's subset or held-out images change
    np.savez(path, images=images[::-1])
    with pytest.raises(ConfigError, match=rf"cell {tmp_path / 'cell'}: its data changed .*\({path}\)"):
        train(cfg, tmp_path / "cell", progress=False)
    with pytest.raises(ConfigError, match="its data changed"):
        sample_cell(tmp_path / "cell", cfg.sample, progress=False)


def test_a_relative_data_root_is_recorded_absolute_so_the_cell_is_read_from_anywhere(tiny_cfg, tmp_path,
                                                                                    monkeypatch):
    """A cell trained with ``data.root: data.npz`` from one directory is sampled and its data loaded from
    another (a notebook elsewhere, a later ``memorize compare``): its config and checkpoints record the
    root as an absolute path. The root is a location, so the cell's id is the one an absolute root gives."""
    from memorize.cell import load_cell_data, read_config

    (tmp_path / "launch").mkdir()
    (tmp_path / "elsewhere").mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(160, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "launch" / "data.npz", images=images)
    cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, name="npz", root="data.npz"))
    monkeypatch.chdir(tmp_path / "launch")
    train(cfg, tmp_path / "cell", progress=False)
    monkeypatch.chdir(tmp_path / "elsewhere")
    recorded = read_config(tmp_path / "cell")
    assert recorded.data.root == str(tmp_path / "launch" / "data.npz")
    assert torch.load(tmp_path / "cell" / "checkpoints" / "step-0000030.pt",
                      weights_only=False)["config"]["data"]["root"] == recorded.data.root
    assert cell_id(recorded) == cell_id(cfg)
    assert len(load_cell_data(recorded, CellPaths(tmp_path / "cell")).train) == cfg.data.n_train
    assert read_samples(sample_cell(tmp_path / "cell", cfg.sample, progress=False))["samples"].shape == (16, 1, 8, 8)


def test_an_old_layout_cell_gets_a_migration_message(tiny_cfg, tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # memorize 0.1: a config, no cell.json
    with pytest.raises(ConfigError, match=r"memorize 0\.1.*Re-run into a new directory"):
        train(tiny_cfg, tmp_path, progress=False)
    (tmp_path / "config.yaml").write_text("model:\n  channels: 8\n")
    with pytest.raises(ConfigError, match=r"memorize 0\.1"):
        train(tiny_cfg, tmp_path, progress=False)


@pytest.mark.parametrize("text", ["lr: 0.1\nmodel: resnet\n", "- a list\n", "{unclosed\n"])
def test_a_directory_with_a_config_yaml_of_its_own_is_named_not_called_an_old_cell(tiny_cfg, tmp_path, text):
    """``memorize train --out .`` in a project whose config.yaml is its own: that file is neither read as a cell's
    nor replaced, and the error does not call it a memorize 0.1 cell."""
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))} holds a config\.yaml that is not a memorize "
                                          r"cell's \(no data, diffusion, model, sample, train section\) and no "
                                          r"cell\.json: give the cell a directory of its own$"):
        train(tiny_cfg, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"] and (tmp_path / "config.yaml").read_text() == text


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward (a finite loss with a non-finite gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_a_non_finite_gradient_stops_training_before_the_step(tiny_cfg, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = Denoiser.loss

    def loss_with_bad_gradient(self, *args, **kwargs):
        out = real_loss(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 20:  # the step that would write checkpoint 20
                return _NaNGradient.apply(out)
        return out

    monkeypatch.setattr(Denoiser, "loss", loss_with_bad_gradient)
    for clip in (1.0, None):  # with and without gradient clipping
        root = tmp_path / f"clip{clip}"
        cfg = _with(tiny_cfg, "train.grad_clip", clip)
        calls["n"] = 0
        with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm .* at step 20 .*step-0000010\.pt"):
            train(cfg, root, progress=False)
        assert CellPaths(root).checkpoint_steps() == [10]
        for path in CellPaths(root).checkpoints.glob("step-*.pt"):
            state = torch.load(path, weights_only=False)
            for key in ("model", "ema"):
                assert all(torch.isfinite(v).all() for v in state[key].values() if v.is_floating_point())


def test_logged_losses_are_of_the_same_weights_on_fixed_noise(tiny_cfg, tmp_path):
    """train_loss and heldout_loss are the EMA weights' loss on fixed noise (comparable); running_loss is the
    raw weights' minibatch mean, under its own name."""
    summary = train(tiny_cfg, tmp_path, progress=False)
    denoiser, _ = load_trained_denoiser(tmp_path)
    from memorize.cell import load_cell_data

    data = load_cell_data(tiny_cfg, CellPaths(tmp_path))
    n_eval = len(data.heldout)
    assert summary["heldout_loss"] == pytest.approx(fixed_noise_loss(denoiser, data.heldout, None, tiny_cfg, "cpu"))
    assert summary["train_loss"] == pytest.approx(fixed_noise_loss(denoiser, data.train[:n_eval], None, tiny_cfg,
                                                                   "cpu"))
    assert summary["running_loss"] != pytest.approx(summary["train_loss"])


def test_the_fixed_noise_loss_adds_its_batches_in_order_and_reads_them_once(tiny_cfg):
    """Each batch's loss sum stays on the device; one read at the end, added in batch order in float64."""
    from memorize.cell import build_denoiser
    from memorize.diffusion import sample_training_sigma

    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, batch_size=5))
    denoiser, data = build_denoiser(cfg, (1, 8, 8), 0, 0.5), torch.randn(23, 1, 8, 8)
    with CountReads() as counter:
        loss = fixed_noise_loss(denoiser, data, None, cfg, "cpu")
    assert counter.reads == 0
    gen, total = torch.Generator().manual_seed(cfg.seed + EVAL_SEED_OFFSET), 0.0
    for x0 in data.split(5):
        sigma = sample_training_sigma(cfg.diffusion.noise, len(x0), gen, p_mean=cfg.diffusion.p_mean,
                                      p_std=cfg.diffusion.p_std, sigma_max=cfg.diffusion.sigma_max)
        with torch.no_grad():
            total += denoiser.loss(x0, sigma, torch.randn(x0.shape, generator=gen), None).sum().item()
    assert loss == total / len(data)


def test_a_checkpoints_finiteness_check_reads_the_device_once():
    from memorize.train import _all_finite

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with CountReads() as counter:
        assert _all_finite(module)
    assert counter.reads == 1  # eight floating-point tensors, one read
    module[1].running_var[2] = math.inf
    assert not _all_finite(module)
    module[1].running_var[2] = 1.0
    module[2].bias.data[0] = math.nan
    assert not _all_finite(module)
    assert _all_finite(torch.nn.Identity())  # nothing to check


def test_sample_seeds_derive_from_the_cell_seed(tiny_cfg, tmp_path):
    from memorize.sampling import run_seed, sample_seeds

    seeds = {}
    for seed in (0, 1):
        cfg = dataclasses.replace(tiny_cfg, seed=seed, train=dataclasses.replace(tiny_cfg.train, steps=5))
        train(cfg, tmp_path / f"s{seed}", progress=False)
        seeds[seed] = read_samples(sample_cell(tmp_path / f"s{seed}", cfg.sample, progress=False))["seeds"]
    assert not set(seeds[0]) & set(seeds[1])
    assert np.array_equal(seeds[0], sample_seeds(tiny_cfg.sample.seed, np.arange(tiny_cfg.sample.num)))
    assert np.array_equal(seeds[1], sample_seeds(run_seed(1, tiny_cfg.sample.seed), np.arange(tiny_cfg.sample.num)))


def test_cell_json_records_identity_and_fingerprint(tiny_cfg, tmp_path):
    train(tiny_cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "cell.json").read_text())
    assert record["cell"] == cell_id(tiny_cfg) and "steps" not in record["identity"]["train"]
    assert set(record["data"]) >= {"train", "heldout", "files"}

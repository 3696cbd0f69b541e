"""Sampling a cell: pick its denoiser, draw seeded samples, save them.

Denoisers: ``trained`` (the cell's network, EMA weights by default), ``empirical`` (closed-form
memorizing denoiser of the training subset), ``gaussian`` (Wiener filter of the subset's mean and
covariance) and ``gmm`` (the true mixture's posterior mean, for the ``gmm`` dataset). In a
class-conditional cell the closed-form ones are per class (:class:`memorize.empirical.ClassConditionalDenoiser`),
every sample has a requested class (``labels`` in the file) and ``sample.guidance`` guides any of them.

Samples go to ``DIR/samples/NAME.npz`` (``samples`` float32, ``seeds`` int64,
``labels`` where conditional, ``settings`` as JSON) and ``NAME.png`` (a grid,
image data only). Sample i starts from the noise of seed
``sample_seeds(run_seed(cell seed, sample.seed), [i])`` whatever the denoiser, so sample sets of
one cell drawn with the same ``sample.seed`` are paired, and cells of different seeds differ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from memorize.cell import (CellData, CellPaths, checkpoint_at, load_cell_data, load_trained_denoiser, read_config,
                           resolve_device, sample_labels)
from memorize.config import CellConfig, ConfigError, SampleConfig, sample_settings
from memorize.empirical import (GaussianMixtureDenoiser, class_conditional_empirical_denoiser,
                                class_conditional_gaussian_denoiser, empirical_denoiser, gaussian_denoiser)
from memorize.io import atomic_savez, atomic_write
from memorize.sampling import generate, run_seed, sample_seeds

DENOISERS = ("trained", "empirical", "gaussian", "gmm")


class SamplesExistError(FileExistsError):
    """Samples of that name exist with other settings; they are never overwritten silently."""


def save_grid(path: Path, samples: torch.Tensor, min_size: int = 32) -> None:
    """A square-ish PNG grid of images in [-1, 1], small images enlarged (nearest) to ``min_size`` pixels."""
    scale = max(1, math.ceil(min_size / samples.shape[-1]))
    images = torch.nn.functional.interpolate((samples + 1) / 2, scale_factor=scale, mode="nearest")
    nrow = max(1, math.ceil(math.sqrt(len(samples))))
    atomic_write(path, lambda p: save_image(images, p, nrow=nrow, padding=2, format="png"))


def read_samples(path: Path) -> dict:
    with np.load(path) as npz:
        out = {k: npz[k] for k in npz.files}
    out["settings"] = json.loads(str(out["settings"]))
    return out


def check_conditioning(cfg: SampleConfig, cell_cfg: CellConfig, data: CellData, denoiser: str) -> None:
    """Refuse guidance or a class the cell cannot give, before any sampling: guidance needs a class-conditional
    cell (and, for the trained denoiser, one trained with label dropout); a class must be one of the cell's
    (for the closed-form denoisers, one with training items)."""
    if data.train_labels is None:
        if cfg.guidance > 0:
            raise ConfigError(f"sample.guidance: {cfg.guidance:g} needs a class-conditional cell; this one was trained "
                              f"with data.labels none")
        if cfg.label is not None:
            raise ConfigError(f"sample.label: {cfg.label} names a class, but this cell was trained with data.labels none")
        return
    if denoiser == "gmm" and (cfg.guidance > 0 or cfg.label is not None):
        raise ConfigError("--denoiser gmm: the true mixture's denoiser is unconditional; it takes no class or guidance")
    if cfg.guidance > 0 and denoiser == "trained" and cell_cfg.train.label_dropout == 0:
        raise ConfigError("sample.guidance: this cell was trained without train.label_dropout, so its network has no "
                          "unconditional denoiser D(x, none) to guide with")
    if cfg.label is not None:
        num_classes = data.split.num_classes
        if cfg.label >= num_classes:
            raise ConfigError(f"sample.label: {cfg.label} is outside the cell's classes 0 to {num_classes - 1}")
        if denoiser in ("empirical", "gaussian") and not bool((data.train_labels == cfg.label).any()):
            raise ConfigError(f"sample.label: class {cfg.label} has no training items in this subset, so the "
                              f"{denoiser} denoiser of that class is undefined")


def sample_cell(root: str | Path, cfg: SampleConfig, denoiser: str = "trained", weights: str = "ema",
                name: str | None = None, device: str = "auto", force: bool = False, progress: bool = True,
                step: int | None = None) -> Path:
    """Draw ``cfg.num`` samples from the cell at ``root`` with ``denoiser``; returns the ``.npz`` path.

    ``step``: the checkpoint of the trained denoiser (default: the latest).
    Re-running with identical settings returns the existing file; different
    settings under an existing name raise :class:`SamplesExistError` unless ``force``.
    """
    if denoiser not in DENOISERS:
        raise ValueError(f"--denoiser: expected one of {DENOISERS}, got {denoiser!r}")
    paths = CellPaths(Path(root))
    cell_cfg = read_config(paths.root)
    dev = resolve_device(device)
    name = name or denoiser
    out = paths.samples / f"{name}.npz"
    # Everything that determines the samples (batch size does not: sample i has its own noise stream).
    settings = {"denoiser": denoiser, **sample_settings(cfg), "cell_seed": cell_cfg.seed}
    if denoiser == "trained":
        checkpoint = checkpoint_at(paths.root, step)
        settings.update(weights=weights, checkpoint_step=int(checkpoint.stem.removeprefix("step-")))
    if out.is_file():
        old = read_samples(out)["settings"]
        if old == settings:
            return out
        if not force:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SamplesExistError(f"{out} holds samples with other settings ({', '.join(changed)}); "
                                    f"pass --name to keep both, or --force to replace them")

    data = load_cell_data(cell_cfg, paths)
    check_conditioning(cfg, cell_cfg, data, denoiser)
    conditional = data.train_labels is not None
    if denoiser == "trained":  # loaded only when samples are really drawn
        model, _ = load_trained_denoiser(paths.root, weights, dev, checkpoint)
    elif denoiser == "empirical":
        model = (class_conditional_empirical_denoiser(data.train.to(dev), data.train_labels.to(dev)) if conditional
                 else empirical_denoiser(data.train.to(dev)))
    elif denoiser == "gaussian":
        model = (class_conditional_gaussian_denoiser(data.train.to(dev), data.train_labels.to(dev)) if conditional
                 else gaussian_denoiser(data.train.to(dev)))
    elif denoiser == "gmm":
        mix = data.dataset.mixture
        if mix is None:
            raise ValueError(f"--denoiser gmm: the true density of dataset {cell_cfg.data.name!r} is unknown "
                             f"(only the 'gmm' dataset has one)")
        model = GaussianMixtureDenoiser(mix.weights.to(dev), mix.means.to(dev), mix.covs.to(dev))
    seeds = sample_seeds(run_seed(cell_cfg.seed, cfg.seed), np.arange(cfg.num))
    labels = None
    if conditional and denoiser != "gmm":  # the requested class of each sample (the true mixture has none)
        labels = (torch.full((len(seeds),), cfg.label, dtype=torch.long) if cfg.label is not None
                  else sample_labels(data.train_labels, seeds))
    samples = generate(model, tuple(data.train.shape[1:]), seeds, cfg, dev, labels, progress=progress)
    if data.dataset.is_image:
        samples = samples.clamp(-1.0, 1.0)
    arrays = {"samples": samples.numpy().astype(np.float32), "seeds": seeds, "settings": np.asarray(json.dumps(settings))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    atomic_savez(out, **arrays)
    if data.dataset.is_image:
        save_grid(out.with_suffix(".png"), samples)
    return out

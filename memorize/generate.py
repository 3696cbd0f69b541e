"""Sampling a cell: pick its denoiser, draw seeded samples, save them.

Denoisers: ``trained`` (the cell's network, EMA weights by default), ``empirical`` (closed-form
memorizing denoiser of the training subset), ``gaussian`` (Wiener filter of the subset's mean and
covariance), ``gmm`` (the true mixture's posterior mean, for the ``gmm`` dataset), and ``ls`` / ``els``
(the local and equivariant local score machines of the subset, :mod:`memorize.local_score`, with a patch
schedule calibrated on the cell's network by ``memorize compare --local`` or given). In a
class-conditional cell the closed-form ones are per class (:class:`memorize.empirical.ClassConditionalDenoiser`),
every sample has a requested class (``labels`` in the file) and ``sample.guidance`` guides any of them.

Samples go to ``DIR/samples/NAME.npz`` (``samples`` float32, ``seeds`` int64,
``labels`` where conditional, ``settings`` as JSON, ``seconds`` the drawing took) and ``NAME.png`` (a grid,
image data only). Sample i starts from the noise of seed
``sample_seeds(run_seed(cell seed, sample.seed), [i])`` whatever the denoiser, so sample sets of
one cell drawn with the same ``sample.seed`` are paired, and cells of different seeds differ.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memorize.cell import (CellData, CellPaths, checkpoint_at, checkpoint_step, load_cell_data, load_trained_denoiser,
                           read_config, resolve_device, sample_labels)
from memorize.config import CellConfig, ConfigError, SampleConfig, sample_settings
from memorize.empirical import (GaussianMixtureDenoiser, class_conditional_empirical_denoiser,
                                class_conditional_gaussian_denoiser, empirical_denoiser, gaussian_denoiser)
from memorize.io import UNREADABLE_NPZ, atomic_savez, atomic_write
from memorize.local_score import BOUNDARIES, MACHINES, PatchSchedule, local_machine, read_patch_schedules
from memorize.sampling import generate, run_seed, sample_seeds

DENOISERS = ("trained", "empirical", "gaussian", "gmm", *MACHINES)


class SamplesExistError(FileExistsError):
    """Samples of that name exist with other settings; they are never overwritten silently."""


def save_grid(path: Path, samples: torch.Tensor, min_size: int = 32) -> None:
    """A square-ish PNG grid of images in [-1, 1], small images enlarged (nearest) to ``min_size`` pixels."""
    from torchvision.utils import save_image  # imported here: torchvision pulls in torch._dynamo (~2 s)

    scale = max(1, math.ceil(min_size / samples.shape[-1]))
    images = torch.nn.functional.interpolate((samples + 1) / 2, scale_factor=scale, mode="nearest")
    nrow = max(1, math.ceil(math.sqrt(len(samples))))
    atomic_write(path, lambda p: save_image(images, p, nrow=nrow, padding=2, format="png"))


def read_samples(path: Path) -> dict:
    """A sample set's arrays and settings. Samples imported from elsewhere live beside the ``.npz`` in a
    ``.npy`` file it names (``samples_file``), memory-mapped here: read as used, never loaded whole."""
    path = Path(path)
    with np.load(path) as npz:
        out = {k: npz[k] for k in npz.files}
    out["settings"] = json.loads(str(out["settings"]))
    if "samples_file" in out:
        array_file = path.parent / str(out.pop("samples_file"))
        try:
            # copy-on-write: a consumer may write (torch wants writable arrays); the file is never changed
            out["samples"] = np.load(array_file, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{array_file}: the samples of {path.name} are missing or damaged ({type(err).__name__}); "
                             f"import them again") from None
        if out["samples"].shape[0] != len(out["seeds"]):
            raise ValueError(f"{array_file}: {out['samples'].shape[0]} samples where {path.name} records "
                             f"{len(out['seeds'])}; import them again")
    return out


def drawing_seconds(path: Path) -> float | None:
    """The seconds drawing the samples at ``path`` took (None for files written before they were recorded),
    read without loading the samples."""
    with np.load(path) as npz:
        return float(npz["seconds"]) if "seconds" in npz.files else None


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
        if denoiser in ("empirical", "gaussian", *MACHINES) and not bool((data.train_labels == cfg.label).any()):
            raise ConfigError(f"sample.label: class {cfg.label} has no training items in this subset, so the "
                              f"{denoiser} denoiser of that class is undefined")


@dataclass
class SamplePlan:
    """What :func:`sample_cell` is about to draw for one cell: the file, the settings it will record, the
    cell's config and data, each sample's seed and (conditional cells) requested class, and the checkpoint
    of the trained denoiser."""
    root: Path
    out: Path
    settings: dict
    cell_cfg: CellConfig
    data: CellData
    seeds: np.ndarray
    labels: torch.Tensor | None
    checkpoint: Path | None
    patch: PatchSchedule | None = None
    boundary: str = "aligned"


def plan_samples(root: str | Path, cfg: SampleConfig, denoiser: str = "trained", weights: str = "ema",
                 name: str | None = None, force: bool = False, step: int | None = None,
                 patch: PatchSchedule | None = None, boundary: str = "aligned") -> SamplePlan | Path:
    """The samples :func:`sample_cell` would draw, or the path of the file that already holds them
    (identical settings). Different settings under an existing name raise :class:`SamplesExistError`
    unless ``force``; a class or guidance the cell cannot give raises ``ConfigError``. ``patch``: the
    patch schedule of ``ls`` / ``els`` (default: the one calibrated on the cell, ``CellPaths.patch_schedules``);
    ``boundary``: the ``els`` machine's rule at the border (:data:`memorize.local_score.BOUNDARIES`)."""
    if denoiser not in DENOISERS:
        raise ValueError(f"--denoiser: expected one of {DENOISERS}, got {denoiser!r}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"--els-boundary: expected one of {BOUNDARIES}, got {boundary!r}")
    paths = CellPaths(Path(root))
    cell_cfg = read_config(paths.root)
    out = paths.sample_set(name or denoiser)
    # Everything that determines the samples (batch size does not: sample i has its own noise stream).
    settings = {"denoiser": denoiser, **sample_settings(cfg), "cell_seed": cell_cfg.seed}
    checkpoint = None
    if denoiser == "trained":
        checkpoint = checkpoint_at(paths.root, step)
        settings.update(weights=weights, checkpoint_step=checkpoint_step(checkpoint))
    if denoiser in MACHINES:
        if patch is None:
            if not paths.patch_schedules.is_file():
                raise ConfigError(f"--denoiser {denoiser}: no patch schedule calibrated on this cell "
                                  f"({paths.patch_schedules}); run `memorize compare {paths.root} --local` or pass "
                                  f"--patch-schedule (a size or a file)")
            patch = read_patch_schedules(paths.patch_schedules)[denoiser]
        settings["patch_schedule"] = patch.to_dict()
        if denoiser == "els" and boundary != "anywhere":  # anywhere is the rule of sets that record none
            settings["boundary"] = boundary
    old = None
    if out.is_file():
        try:
            old = read_samples(out)["settings"]
        except (*UNREADABLE_NPZ, json.JSONDecodeError) as err:
            # drawn from seeds, so drawn again: nothing is lost by replacing it
            print(f"memorize: {out} was damaged ({type(err).__name__}); drawing its samples again", file=sys.stderr)
    if old is not None:
        if old == settings:
            return out
        if not force:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SamplesExistError(f"{out} holds samples with other settings ({', '.join(changed)}); "
                                    f"pass --name to keep both, or --force to replace them")
    data = load_cell_data(cell_cfg, paths)
    check_conditioning(cfg, cell_cfg, data, denoiser)
    seeds = sample_seeds(run_seed(cell_cfg.seed, cfg.seed), np.arange(cfg.num))
    labels = None
    if data.train_labels is not None and denoiser != "gmm":  # the requested class of each sample (the mixture has none)
        labels = (torch.full((len(seeds),), cfg.label, dtype=torch.long) if cfg.label is not None
                  else sample_labels(data.train_labels, seeds))
    if denoiser in MACHINES and not data.dataset.is_image:
        raise ConfigError(f"--denoiser {denoiser}: the local machines need image data; dataset "
                          f"{cell_cfg.data.name!r} holds vectors")
    return SamplePlan(paths.root, out, settings, cell_cfg, data, seeds, labels, checkpoint, patch, boundary)


def save_samples(plan: SamplePlan, samples: torch.Tensor, seconds: float) -> Path:
    """Write the drawn ``samples`` of ``plan`` (image data clamped to [-1, 1]) with their seeds, classes,
    settings and the ``seconds`` drawing them took (a pack's share where drawn together), and a PNG grid of
    image data; returns the ``.npz`` path."""
    if plan.data.dataset.is_image:
        samples = samples.clamp(-1.0, 1.0)
    arrays = {"samples": samples.numpy().astype(np.float32), "seeds": plan.seeds,
              "settings": np.asarray(json.dumps(plan.settings)), "seconds": np.float64(seconds)}
    if plan.labels is not None:
        arrays["labels"] = plan.labels.numpy()
    atomic_savez(plan.out, **arrays)
    if plan.data.dataset.is_image:
        save_grid(plan.out.with_suffix(".png"), samples)
    return plan.out


def sample_cell(root: str | Path, cfg: SampleConfig, denoiser: str = "trained", weights: str = "ema",
                name: str | None = None, device: str = "auto", force: bool = False, progress: bool = True,
                step: int | None = None, patch: PatchSchedule | None = None, boundary: str = "aligned") -> Path:
    """Draw ``cfg.num`` samples from the cell at ``root`` with ``denoiser``; returns the ``.npz`` path.

    ``step``: the checkpoint of the trained denoiser (default: the latest); ``patch``: the patch schedule of
    ``ls`` / ``els`` (default: the cell's calibrated one); ``boundary``: the ``els`` machine's rule at the border. Re-running with identical settings returns the existing file; different
    settings under an existing name raise :class:`SamplesExistError` unless ``force``.
    """
    plan = plan_samples(root, cfg, denoiser, weights, name, force, step, patch, boundary)
    if isinstance(plan, Path):
        return plan
    start = time.perf_counter()
    dev = resolve_device(device)
    data, conditional = plan.data, plan.data.train_labels is not None
    if denoiser == "trained":  # loaded only when samples are really drawn
        model, _ = load_trained_denoiser(plan.root, weights, dev, plan.checkpoint)
    elif denoiser == "empirical":
        model = (class_conditional_empirical_denoiser(data.train.to(dev), data.train_labels.to(dev)) if conditional
                 else empirical_denoiser(data.train.to(dev)))
    elif denoiser == "gaussian":
        model = (class_conditional_gaussian_denoiser(data.train.to(dev), data.train_labels.to(dev)) if conditional
                 else gaussian_denoiser(data.train.to(dev)))
    elif denoiser in MACHINES:
        model = local_machine(denoiser, data.train.to(dev), plan.patch,
                              data.train_labels.to(dev) if conditional else None, plan.boundary)
    else:
        mix = data.dataset.mixture
        if mix is None:
            raise ValueError(f"--denoiser gmm: the true density of dataset {plan.cell_cfg.data.name!r} is unknown "
                             f"(only the 'gmm' dataset has one)")
        model = GaussianMixtureDenoiser(mix.weights.to(dev), mix.means.to(dev), mix.covs.to(dev))
    graphs = plan.cell_cfg.train.cuda_graph if denoiser == "trained" else "off"  # networks only
    samples = generate(model, tuple(data.train.shape[1:]), plan.seeds, cfg, dev, plan.labels, progress=progress,
                       cuda_graph=graphs)
    return save_samples(plan, samples, time.perf_counter() - start)

"""A denoiser trained elsewhere, or samples drawn elsewhere, imported as a cell: afterwards
``memorize sample``, ``score`` and ``compare`` work on the denoiser, and ``score`` on the samples, as on
a cell ``memorize train`` made.

The cell directory holds the model's copy (``model/``), its training set as a ``data:`` section (the
subset it was trained on: dataset, N, offset, split seed) with held-out images from the rest of the
pool, and in place of a training checkpoint a record ``checkpoints/step-0000000.pt`` that names the
copy and its kind (:data:`memorize.models.external.LOADERS`), so every command that loads "the
trained denoiser" loads it. The cell's identity is its data and the digest of the model's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from memorize.cell import (LAYOUT, CellPaths, check_cell_directory, check_set_name, data_fingerprint, load_cell_data,
                           read_identity)
from memorize.config import CellConfig, ConfigError, save_config, to_dict
from memorize.data.sample_files import SampleSource, open_samples, samples_array, to_unit_range
from memorize.errors import foreign_message
from memorize.io import atomic_savez, atomic_write, atomic_write_json
from memorize.models.external import AOTI_REFUSAL, LOADERS, NotAModelFile, archive_kind

KINDS = tuple(LOADERS)


@contextmanager
def _removed_on_error(out: Path):
    """A directory this import creates is removed again if the import fails: a refused import leaves
    nothing behind."""
    created = not out.exists()
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def detect_kind(model: Path) -> str:
    """``diffusers`` for a pipeline directory (``unet/`` and ``scheduler/``); for a file ``pt2`` where it is a
    ``torch.export`` archive (:func:`~memorize.models.external.archive_kind`; an AOTInductor package is
    refused), else ``torchscript`` (whose loader names a file that is not one)."""
    if model.is_dir():
        if (model / "unet").is_dir() and (model / "scheduler").is_dir():
            return "diffusers"
        raise ConfigError(f"{model}: a directory, but not a diffusers pipeline (expected unet/ and scheduler/ in it)")
    if model.is_file():
        archive = archive_kind(model)
        if archive == "aoti":
            raise ConfigError(f"{model}: {AOTI_REFUSAL}")
        return "pt2" if archive == "program" else "torchscript"
    raise FileNotFoundError(f"{model}: no such model file or directory")


def model_digest(model: Path) -> str:
    """A digest of the model's bytes (every file of a directory, in path order)."""
    h = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in model.rglob("*") if p.is_file()) if model.is_dir() else [model]
    for path in files:
        h.update(str(path.relative_to(model) if model.is_dir() else path.name).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def import_model(model: str | Path, out: str | Path, cfg: CellConfig, kind: str | None = None) -> Path:
    """Import the denoiser at ``model`` as a cell at ``out`` whose training subset and held-out images are
    ``cfg.data``'s (``cfg.sample``: the cell's default sampling settings; the model, diffusion and
    training sections do not apply). The model is loaded and run once on two training images first: a
    model that does not load, or does not return an image of its input's shape, is refused before
    anything is written. Re-importing the same model with the same data is a no-op."""
    model, kind = Path(model), kind or detect_kind(Path(model))
    if kind not in KINDS:
        raise ConfigError(f"--kind: expected one of {KINDS}, got {kind!r}")
    with _removed_on_error(Path(out)):
        return _import_model(model, Path(out), cfg, kind)


def _import_model(model: Path, out: Path, cfg: CellConfig, kind: str) -> Path:
    paths = CellPaths(check_cell_directory(out))
    identity = {"external": {"kind": kind, "digest": model_digest(model)}, "data": to_dict(cfg)["data"]}
    record = read_identity(paths.root)
    if record is not None:
        if record["identity"] == identity:
            return paths.root
        raise ConfigError(f"{paths.root} already holds another cell; choose another --out")
    if cfg.data.labels != "none":
        raise ConfigError("data.labels: an imported denoiser is unconditional; leave data.labels none")
    data = load_cell_data(cfg, paths)  # writes the split; checks the data exist and the subset fits
    probe = data.train[:2].float()
    try:
        denoiser = LOADERS[kind](str(model))
        with torch.no_grad():
            output = denoiser(probe, torch.ones(len(probe)))
    except ImportError:
        raise
    except NotAModelFile as err:
        raise ConfigError(f"{model}: {err}") from None
    except Exception as err:  # whatever the foreign model raises: one line naming it
        raise ConfigError(f"{model}: could not be run as a {kind} denoiser on training images of shape "
                          f"{tuple(probe.shape[1:])} ({foreign_message(err)})") from None
    if not isinstance(output, torch.Tensor):
        raise ConfigError(f"{model}: on training images of shape {tuple(probe.shape[1:])} the denoiser returned a "
                          f"{type(output).__name__}; expected x0_hat, a tensor of the input's shape")
    if tuple(output.shape) != tuple(probe.shape) or not torch.isfinite(output).all():
        nonfinite = " with non-finite values" if output.shape == probe.shape else ""
        raise ConfigError(f"{model}: on training images of shape {tuple(probe.shape[1:])} the denoiser returned "
                          f"{tuple(output.shape[1:])}{nonfinite}; expected x0_hat of the input's shape")
    copy = paths.root / "model" / model.name
    if not copy.exists():
        staging = paths.root / "model" / f".{model.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if model.is_dir() else shutil.copy2)(model, staging)
        staging.rename(copy)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = paths.checkpoint(0).with_suffix(".partial")
    torch.save({"external": {"kind": kind, "path": str(copy.relative_to(paths.root))}, "step": 0,
                "shape": list(data.train.shape[1:]), "num_classes": 0}, tmp)
    tmp.replace(paths.checkpoint(0))
    save_config(cfg, paths.config)
    atomic_write_json(paths.identity, {"layout": LAYOUT, "cell": f"external-{identity['external']['digest'][:12]}",
                                       "identity": identity, "data": data_fingerprint(data)})
    return paths.root


def import_samples(samples: str | Path | np.ndarray | torch.Tensor, out: str | Path, cfg: CellConfig,
                   name: str = "samples", value_range: str = "auto", chunk: int = 4096) -> tuple[Path, str]:
    """Make ``out`` a cell without a denoiser that holds the samples at ``samples`` (a folder of images,
    ``.npz``, ``.npy`` or ``.pt``; :func:`memorize.data.sample_files.open_samples`) as
    ``samples/NAME.npz``, against the training subset and held-out images of ``cfg.data``, so that
    ``memorize score`` scores them with the same code as a trained cell's. The samples are copied ``chunk``
    at a time into ``samples/NAME.samples.npy``, which every reader maps instead of loading, so memory is
    bounded by a chunk; samples whose shape is not the training images' are refused before anything is
    written. A folder of samples is read with the training images' channels: grayscale images as RGB against
    colour ones, and images whose red, green and blue are equal as one channel against grayscale ones
    (:func:`memorize.data.sample_files.open_samples`). An array (numpy, or a torch tensor: its values on the
    CPU) is taken as the samples themselves (read with ``value_range`` as a file would be).
    Returns the cell and the value range used."""
    check_set_name(name)
    if isinstance(samples, torch.Tensor):  # a notebook's samples, often on a GPU or in bf16
        samples = samples.detach().cpu()
        samples = (samples.float() if samples.dtype == torch.bfloat16 else samples).numpy()
    if isinstance(samples, np.ndarray):
        where = Path("the samples array")
        images, used = to_unit_range(samples_array(samples, where, vectors=True), value_range, where)
        source = SampleSource(Path("array"), len(images), tuple(images.shape[1:]), "-1-1",
                              lambda start, stop: images[start:stop])
    elif isinstance(samples, (str, os.PathLike)):
        source = open_samples(samples, value_range, chunk)
    else:
        raise TypeError(f"samples: expected an array (numpy or torch), an image folder or a file, got "
                        f"{type(samples).__name__}")
    with _removed_on_error(Path(out)):
        return _import_samples(source, Path(out), cfg, name, chunk), source.value_range


def _import_samples(source: SampleSource, out: Path, cfg: CellConfig, name: str, chunk: int) -> Path:
    paths = CellPaths(check_cell_directory(out))
    record, data_section = read_identity(paths.root), to_dict(cfg)["data"]
    held = None if record is None else record["identity"]
    other = f"{paths.root} already holds another cell or other samples; choose another --out"
    if held is not None and (held.get("data") != data_section or "samples" not in held):
        raise ConfigError(other)  # before the subset is written
    data = load_cell_data(cfg, paths)
    channels = data.train.shape[1] if data.train.ndim == 4 else None
    if source.folder and channels is not None:  # its images read with the training images' channels
        source = open_samples(source.path, source.value_range, chunk, channels)
    if source.shape != tuple(data.train.shape[1:]):
        raise ConfigError(f"{source.path}: samples of shape {source.shape}, but the training images of "
                          f"{cfg.data.name} are {tuple(data.train.shape[1:])}")
    array_file = paths.sample_set(name).with_suffix(".samples.npy")
    digest = hashlib.blake2b(digest_size=16)

    def copy(tmp: Path) -> None:
        """Chunk by chunk into a memory-mapped .npy, hashed on the way; it replaces the file only if the
        cell holds no other samples."""
        stored = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(source.count, *source.shape))
        start = 0
        for part in source.chunks(chunk):
            stored[start:start + len(part)] = part
            digest.update(np.ascontiguousarray(part).tobytes())
            start += len(part)
        stored.flush()
        del stored
        if held is not None and held["samples"].get("digest") != digest.hexdigest():
            raise ConfigError(other)

    atomic_write(array_file, copy)
    identity = {"samples": {"digest": digest.hexdigest()}, "data": data_section}
    atomic_savez(paths.sample_set(name), samples_file=np.asarray(array_file.name),
                 seeds=np.arange(source.count),
                 settings=np.asarray(json.dumps({"denoiser": "imported", "source": str(source.path.resolve()),
                                                 "range": source.value_range})), seconds=np.float64(0.0))
    save_config(cfg, paths.config)
    atomic_write_json(paths.identity, {"layout": LAYOUT, "cell": f"samples-{identity['samples']['digest'][:12]}",
                                       "identity": identity, "data": data_fingerprint(data)})
    return paths.root

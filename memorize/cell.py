"""A cell directory: its layout, its training data and its trained denoiser.

A cell is one training run, identified by its *training identity*
(:func:`memorize.config.training_identity`: data subset, model, diffusion, the training
fields that change the weights, seed) and by the content of its data. Sampling and scoring
are artefacts inside the cell, keyed by their own settings.

    DIR/cell.json            layout version, training identity, data fingerprint (written once)
    DIR/config.yaml          the config last trained with (fields outside the identity may change)
    DIR/subset.npz           indices of the training subset and held-out set
    DIR/checkpoints/         step-XXXXXXX.pt, written atomically; keep.json lists the budgets kept
    DIR/loss.csv             training log, rewritten with each checkpoint
    DIR/train.json           training summary of the last budget trained to
    DIR/samples/NAME.npz     samples (float32, seeds) and NAME.png, a grid
    DIR/samples/NAME.samples.npy  the samples of an imported set, which NAME.npz names (memory-mapped)
    DIR/scores/NAME.*        per-sample scores and their summary
    DIR/evals/KEY.json       a sweep's result at one (budget, sampling, scoring) setting
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from memorize.config import CELL_SECTIONS, CellConfig, ConfigError, cell_id, from_dict, save_config, training_identity
from memorize.data import Dataset, Split, load_dataset, load_split, make_split, save_split
from memorize.data.sample_files import read_samples_file
from memorize.data.subsets import conditioning_labels
from memorize.diffusion import Denoiser
from memorize.io import UNREADABLE_NPZ, atomic_write_json, check_directory
from memorize.models import build_network, check_model

# Version of the cell directory layout. 1 (memorize 0.1): the id hashed the whole config and
# there was no cell.json; such directories are refused with how to migrate (see OLD_LAYOUT).
LAYOUT = 2
OLD_LAYOUT = ("was written by memorize 0.1, whose cells were keyed by their whole config; this version keys "
              "a cell by its training identity and stores samples and scores by their own settings. Re-run "
              "into a new directory (--out); the old directory stays readable as it is (its results.csv, "
              "samples and scores are plain files)")
# Files fingerprinted one by one (size and modification time) to name a changed one; above this count
# (image folders) the folder is named instead.
MAX_LISTED_FILES = 100


def is_set_name(name: str) -> bool:
    """Whether ``name`` can name a sample set: a file name under ``DIR/samples`` (and ``DIR/scores``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not set(name) & set("/\\\0")


def check_set_name(name: str, field: str = "--name") -> str:
    if not is_set_name(name):
        raise ValueError(f"{field}: expected a sample set name, not a path (no / in it), got {name!r}")
    return name


@dataclass(frozen=True)
class CellPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "subset.npz"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def loss_log(self) -> Path:
        return self.root / "loss.csv"

    @property
    def train_summary(self) -> Path:
        return self.root / "train.json"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def identity(self) -> Path:
        return self.root / "cell.json"

    @property
    def patch_schedules(self) -> Path:
        """The LS and ELS machines' patch sizes calibrated on this cell's network (``memorize compare --local``)."""
        return self.root / "compare" / "patch_schedule.json"

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    @property
    def kept_budgets(self) -> Path:
        return self.checkpoints / "keep.json"

    @property
    def interim_checkpoints(self) -> Path:
        """Steps of checkpoints written off the schedule when asked from outside (a SLURM time-limit signal);
        each is removed once a scheduled checkpoint after it is written, even with train.keep_all_checkpoints."""
        return self.checkpoints / "interim.json"

    @property
    def feature_cache(self) -> Path:
        """Where networks trained for features (``features: classifier``) are cached: a sweep's
        ``features/`` for its cells (``SWEEP/cells/ID``, with ``SWEEP/sweep.json``), so they share
        one; else ``DIR/features``."""
        sweep = self.root.parent.parent
        if self.root.parent.name == "cells" and (sweep / "sweep.json").is_file():
            return sweep / "features"
        return self.root / "features"

    def sample_set(self, name: str, field: str = "--name") -> Path:
        """``DIR/samples/<name>.npz``; ``name`` is a file name, never a path (``../x`` would write outside
        the cell), so one that is not is refused with ``field`` named (ValueError)."""
        return self.samples / f"{check_set_name(name, field)}.npz"

    def drawn_set(self, name: str, field: str = "--samples") -> Path:
        """:meth:`sample_set` of samples to read: a FileNotFoundError saying how to draw them where there are
        none."""
        path = self.sample_set(name, field)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `memorize sample {self.root}` first (or name an "
                                    f"existing set with {field})")
        return path

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}.pt"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, ascending: the files named as :meth:`checkpoint` names them
        (another file there, ``step-0000400 (copy).pt`` say, is not one of them)."""
        steps = (p.stem.removeprefix("step-") for p in self.checkpoints.glob("step-*.pt"))
        return sorted(int(step) for step in steps if step.isdecimal())

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoint(steps[-1]) if steps else None


@dataclass
class CellData:
    dataset: Dataset
    split: Split
    train: torch.Tensor  # (N, ...) training subset, in subset order
    heldout: torch.Tensor  # (n_heldout, ...)
    train_labels: torch.Tensor | None  # conditioning labels of the subset
    heldout_labels: torch.Tensor | None  # conditioning labels of the held-out items


def resolve_device(name: str, field: str = "--device", gpus: int | None = None) -> torch.device:
    """``auto`` (the GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N``; errors name ``field``. A GPU
    that is not there (none at all, or ``cuda:N`` beyond the ``gpus`` this process sees: default
    ``torch.cuda.device_count()``) is an error before anything is written."""
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return torch.device("cuda" if gpus else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field}: {name!r} is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not gpus:
        raise ConfigError(f"{field}: {name!r} requested but no CUDA GPU is available (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= gpus:
        raise ConfigError(f"{field}: {name!r} requested but this process sees {gpus} GPU{'s' if gpus > 1 else ''} "
                          f"(cuda:0 to cuda:{gpus - 1}; CUDA_VISIBLE_DEVICES renumbers them)")
    return device


def read_config(root: Path) -> CellConfig:
    """The cell's ``config.yaml``. One that is damaged or gone (truncated, emptied, overwritten, deleted) is
    restored from the latest checkpoint, which holds the config it was trained with, and the repair is
    named on stderr; without a checkpoint to restore it from, the error names the file."""
    paths = CellPaths(Path(root))
    path = paths.config
    check_directory(paths.root, "cell directory")  # (a file, or a path below one)
    try:
        with open(path, "rb") as fh:
            # written by us: valid YAML, read with libyaml's loader where PyYAML has it (evaluations read the
            # config at every stage)
            loaded = yaml.load(fh.read().decode(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if isinstance(loaded, dict) and loaded:
            return from_dict(CellConfig, loaded)
        problem = "empty or not a mapping"
    except FileNotFoundError:
        problem = "missing"
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = f"not valid YAML ({type(err).__name__})"
    except ConfigError as err:
        problem = f"not a valid config ({err})"
    latest = paths.latest_checkpoint() if paths.checkpoints.is_dir() else None
    if latest is None or not paths.identity.is_file():
        if problem == "missing":
            raise FileNotFoundError(f"{root} is not a cell directory: {path} is missing (run `memorize train` first)")
        raise ConfigError(f"{path} is damaged ({problem}) and the cell has no checkpoint to restore it from: "
                          f"train the cell anew in another directory")
    cfg = from_dict(CellConfig, load_checkpoint(latest)["config"])
    save_config(cfg, path)
    print(f"memorize: {path} was {problem}; restored from {latest.name}, which holds the config it was trained "
          f"with", file=sys.stderr)
    return cfg


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def _reads_as_cell_config(path: Path) -> bool:
    """Whether ``path`` is YAML that a cell config could be (of this layout or the old one): a mapping under
    ``data``, ``model``, ... or only a cell config's keys (a project's ``lr: 0.1, model: resnet`` is neither)."""
    try:
        loaded = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, OSError):
        return False
    return isinstance(loaded, dict) and (any(isinstance(loaded.get(k), dict) for k in CELL_SECTIONS)
                                         or set(loaded) <= CELL_SECTIONS | {"seed"})


def read_identity(root: Path) -> dict | None:
    """The cell's ``cell.json`` (None for a directory that is not a cell yet); an old-layout cell is an error."""
    paths = CellPaths(Path(root))
    if not paths.identity.is_file():
        if paths.config.is_file() and _reads_as_cell_config(paths.config):
            raise ConfigError(f"{paths.root} {OLD_LAYOUT}")
        if paths.config.is_file():  # a project's own config.yaml, say: neither read nor replaced
            raise ConfigError(f"{paths.root} holds a config.yaml that is not a memorize cell's (no "
                              f"{', '.join(sorted(CELL_SECTIONS))} section) and no cell.json: give the cell a "
                              f"directory of its own")
        return None
    try:
        record = json.loads(paths.identity.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{paths.identity} is damaged ({type(err).__name__}): it records which cell this "
                          f"directory is; restore it from a copy, or train the cell anew in another directory") from None
    if not isinstance(record, dict) or record.get("layout") != LAYOUT:
        if not isinstance(record, dict):
            raise ConfigError(f"{paths.identity} is damaged (not a JSON object): restore it from a copy, or train "
                              f"the cell anew in another directory")
        raise ConfigError(f"{paths.identity}: cell layout {record.get('layout')!r}, this memorize reads {LAYOUT}")
    return record


SWEEP_FILES = ("sweep.json", "cells.csv")  # files of a sweep's own directory (memorize.sweep.layout)


def check_cell_directory(root: str | Path) -> Path:
    """``root`` as a cell's directory to create or reuse (:func:`memorize.io.check_directory`); a sweep's own
    directory is refused: the cell's files would lie among the sweep's (whose cells are ``DIR/cells/<id>``)."""
    root = check_directory(root, "--out")
    marker = next((root / name for name in SWEEP_FILES if (root / name).is_file()), None)
    if marker is not None:
        raise ConfigError(f"--out {root} is a sweep's directory ({marker.name}); give the cell a directory of its "
                          f"own (the sweep's cells are in {root / 'cells'})")
    return root


def init_cell(cfg: CellConfig, root: Path) -> CellData:
    """Create (or re-open) the cell at ``root`` for ``cfg`` and load its data.

    A directory that holds a cell of another training identity, or a sweep, is refused, so two
    experiments never mix; the same identity re-opens it (resume, a longer budget, other
    logging or device); the caller writes ``config.yaml`` once its inputs are checked. A cell
    whose data changed on disk since it was made is refused (see :func:`load_cell_data`).
    """
    paths = CellPaths(check_cell_directory(root))
    record = read_identity(paths.root)
    identity = training_identity(cfg)
    if record is not None:
        imported = record["identity"].get("external")
        if isinstance(imported, dict) and "external" not in identity:  # not the list of every field it lacks
            raise ConfigError(f"{paths.root} holds a denoiser imported with `memorize import` "
                              f"({imported.get('kind')}), which memorize samples, scores and compares but does not "
                              f"train; train into another --out")
        changed = _differences(record["identity"], identity)
        if changed:
            raise ConfigError(f"{paths.root} already holds a cell with another training identity "
                              f"({'; '.join(changed[:5])}); choose another --out or delete that directory yourself")
    dataset = load_dataset(cfg.data)
    check_model(cfg.model, tuple(dataset.data.shape[1:]))  # before the first file of a new cell
    data = load_cell_data(cfg, paths, dataset)
    if record is None:
        atomic_write_json(paths.identity, {"layout": LAYOUT, "cell": cell_id(cfg), "identity": identity,
                                           "data": data_fingerprint(data)})
    return data


def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(b"none" if t is None else t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _file_stat(path: str | Path) -> list[int] | None:
    """Size and modification time (ns) of a file, None where it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def data_fingerprint(data: CellData) -> dict:
    """What the cell's data were when it was made: digests of the training subset (with its labels) and of
    the held-out set, and the size and modification time of each source file (to name a changed one)."""
    files = data.dataset.files
    listed = {str(p): _file_stat(p) for p in files[:MAX_LISTED_FILES + 1]}
    return {"train": _digest(data.train, data.train_labels), "heldout": _digest(data.heldout),
            "files": listed if len(files) <= MAX_LISTED_FILES else {},
            "folder": str(os.path.commonpath([str(p) for p in files])) if files else None}


def check_fingerprint(root: Path, recorded: dict, data: CellData) -> None:
    """Refuse a cell whose training or held-out data are no longer what it was made from."""
    if recorded["train"] == _digest(data.train, data.train_labels) and recorded["heldout"] == _digest(data.heldout):
        return
    changed = [path for path, recorded_stat in recorded.get("files", {}).items() if _file_stat(path) != recorded_stat]
    where = ", ".join(changed) or recorded.get("folder") or f"dataset {data.dataset.name!r}"
    raise ConfigError(f"cell {root}: its data changed since the cell was made ({where}): the training subset "
                      f"or held-out images differ from those it was trained on. Restore the files, or train "
                      f"into a new directory")


def load_cell_data(cfg: CellConfig, paths: CellPaths, dataset: Dataset | None = None) -> CellData:
    """The cell's dataset (``dataset`` where the caller has loaded it) and subsets; the split is saved on
    first use and re-read afterwards, and the data are checked against the fingerprint in ``cell.json``
    where there is one."""
    dataset = dataset if dataset is not None else load_dataset(cfg.data)
    split = None
    if paths.split.is_file():
        try:
            split = load_split(paths.split)
        except UNREADABLE_NPZ as err:
            # the split is a function of the config and the data: made again, and the fingerprint in cell.json
            # then checks that the subsets are the ones the cell was made from
            print(f"memorize: {paths.split} was damaged ({type(err).__name__}); made again from the config",
                  file=sys.stderr)
    if split is None:
        split = make_split(dataset, cfg.data)
        save_split(paths.split, split)
    if max(split.train.max(initial=-1), split.heldout.max(initial=-1)) >= len(dataset.data):
        raise ConfigError(f"cell {paths.root}: {paths.split} indexes items beyond the {len(dataset.data)} of "
                          f"dataset {cfg.data.name!r}: its data changed since the cell was made")
    train = dataset.data[torch.from_numpy(split.train)]
    heldout = dataset.data[torch.from_numpy(split.heldout)]
    if cfg.data.heldout_path is not None:
        heldout = read_heldout_files(cfg.data.heldout_path, tuple(train.shape[1:]), cfg.data.resize)
    if split.train_labels is None:
        data = CellData(dataset, split, train, heldout, None, None)
    else:
        heldout_labels, _ = conditioning_labels(dataset, cfg.data, split.heldout)
        # 'unique' labels name training items; held-out items borrow them cyclically.
        heldout_labels = torch.from_numpy(heldout_labels % split.num_classes).long()
        data = CellData(dataset, split, train, heldout, torch.from_numpy(split.train_labels).long(), heldout_labels)
    record = read_identity(paths.root)
    if record is not None:
        check_fingerprint(paths.root, record["data"], data)
    return data


def read_heldout_files(path: str, shape: tuple[int, ...], resize: int | None = None) -> torch.Tensor:
    """``data.heldout_path``: held-out real images read as samples are (values mapped to [-1, 1] from their
    range; a folder's images with the training images' channels) and, with ``resize`` (``data.resize``),
    resized as the training images are; they must have the training images' ``shape``."""
    image = len(shape) == 3
    try:
        images, _ = read_samples_file(path, channels=shape[0] if image else None, size=resize if image else None)
    except (ValueError, OSError) as err:  # the readers name the file and what was expected
        raise ConfigError(f"data.heldout_path: {err}") from None
    if tuple(images.shape[1:]) != shape:
        raise ConfigError(f"data.heldout_path: {path} holds images of shape {tuple(images.shape[1:])}, but the "
                          f"training images are {shape}")
    return torch.from_numpy(images)


def resolve_sigma_data(cfg: CellConfig, train: torch.Tensor) -> float:
    """``diffusion.sigma_data``, with ``auto`` = the standard deviation of all values of the training subset."""
    if cfg.diffusion.sigma_data == "auto":
        return float(train.to(torch.float64).std())
    return float(cfg.diffusion.sigma_data)


def build_denoiser(cfg: CellConfig, shape: tuple[int, ...], num_classes: int, sigma_data: float) -> Denoiser:
    net = build_network(cfg.model, shape, num_classes, null_label=cfg.train.label_dropout > 0)
    return Denoiser(net, cfg.diffusion.parameterization, sigma_data)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state; an empty or truncated file is an error that names it and the way out."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ConfigError(f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:100]}); delete it "
                          f"to resume from the one before (or from scratch)") from None


def checkpoint_at(root: Path, step: int | None = None) -> Path:
    """The checkpoint of the cell at ``step`` (None: the latest); an error says which steps exist."""
    paths = CellPaths(Path(root))
    steps = paths.checkpoint_steps()
    if not steps:
        raise FileNotFoundError(f"{paths.checkpoints} holds no checkpoint: train the cell first")
    if step is None:
        return paths.checkpoint(steps[-1])
    if step not in steps:
        raise FileNotFoundError(f"{paths.checkpoints} has no checkpoint at step {step} (kept: "
                                f"{', '.join(map(str, steps))})")
    return paths.checkpoint(step)


def checkpoint_step(checkpoint: Path) -> int:
    """The training step of a checkpoint file named as :meth:`CellPaths.checkpoint` names it."""
    return int(Path(checkpoint).stem.removeprefix("step-"))


def load_trained_denoiser(root: Path, weights: str = "ema", device: torch.device | str = "cpu",
                          checkpoint: Path | None = None) -> tuple[Denoiser, dict]:
    """The denoiser of a trained cell (EMA weights by default) from ``checkpoint`` (default: the latest)."""
    paths = CellPaths(Path(root))
    cfg = read_config(paths.root)
    checkpoint = checkpoint or checkpoint_at(paths.root)
    state = load_checkpoint(checkpoint)
    if "external" in state:  # a denoiser trained elsewhere (memorize.external_cell): its own weights only
        from memorize.models.external import LOADERS

        return LOADERS[state["external"]["kind"]](str(paths.root / state["external"]["path"]), device), state
    # sigma_data as trained with (checkpoints before sigma_data auto did not record it: the config's number)
    denoiser = build_denoiser(cfg, tuple(state["shape"]), state["num_classes"],
                              state.get("sigma_data", cfg.diffusion.sigma_data))
    if weights == "ema":
        denoiser.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items()
                                  if k.startswith("module.")})
    elif weights == "raw":
        denoiser.load_state_dict(state["model"])
    else:
        raise ValueError(f"weights: expected 'ema' or 'raw', got {weights!r}")
    return denoiser.to(device).eval(), state


def sample_labels(train_labels: torch.Tensor, seeds) -> torch.Tensor:
    """Class label of each sample of a conditional model: a training label drawn with the sample's own seed."""
    import numpy as np

    picks = [np.random.default_rng(int(s)).integers(len(train_labels)) for s in seeds]
    return train_labels[torch.as_tensor(picks, dtype=torch.long)]

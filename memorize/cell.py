"""A cell directory: its layout, its training data and its trained denoiser.

    DIR/config.yaml          resolved config (the cell's identity)
    DIR/subset.npz           indices of the training subset and held-out set
    DIR/checkpoints/         step-XXXXXXX.pt, written atomically
    DIR/loss.csv             training log, rewritten with each checkpoint
    DIR/train.json           training summary (parameters, losses, time)
    DIR/samples/NAME.npz     samples (float32, seeds) and NAME.png, a grid
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from memorize.config import CellConfig, ConfigError, from_dict, save_config, to_dict
from memorize.data import Dataset, Split, load_dataset, load_split, make_split, save_split
from memorize.data.subsets import conditioning_labels
from memorize.diffusion import Denoiser
from memorize.models import build_network


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

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}.pt"

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoints.glob("step-*.pt"))
        return found[-1] if found else None


@dataclass
class CellData:
    dataset: Dataset
    split: Split
    train: torch.Tensor  # (N, ...) training subset, in subset order
    heldout: torch.Tensor  # (n_heldout, ...)
    train_labels: torch.Tensor | None  # conditioning labels of the subset
    heldout_labels: torch.Tensor | None  # conditioning labels of the held-out items


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but no CUDA GPU is available")
    return device


def read_config(root: Path) -> CellConfig:
    path = CellPaths(Path(root)).config
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a cell directory: {path} is missing (run `memorize train` first)")
    with open(path) as fh:
        return from_dict(CellConfig, yaml.safe_load(fh) or {})


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def init_cell(cfg: CellConfig, root: Path) -> CellData:
    """Create (or re-open) the cell at ``root`` for ``cfg`` and load its data.

    A directory that already holds a different config is refused, so results of
    two configs never mix; an identical config re-opens it (resume).
    """
    paths = CellPaths(Path(root))
    if paths.config.is_file():
        changed = _differences(to_dict(read_config(paths.root)), to_dict(cfg))
        if changed:
            raise ConfigError(f"{paths.root} already holds a cell with another config ({'; '.join(changed[:5])}); "
                              f"choose another --out or delete that directory yourself")
    data = load_cell_data(cfg, paths)
    if not paths.config.is_file():
        save_config(cfg, paths.config)
    return data


def load_cell_data(cfg: CellConfig, paths: CellPaths) -> CellData:
    """The cell's dataset and subsets; the split is saved on first use and re-read afterwards."""
    dataset = load_dataset(cfg.data)
    if paths.split.is_file():
        split = load_split(paths.split)
    else:
        split = make_split(dataset, cfg.data)
        save_split(paths.split, split)
    train = dataset.data[torch.from_numpy(split.train)]
    heldout = dataset.data[torch.from_numpy(split.heldout)]
    if split.train_labels is None:
        return CellData(dataset, split, train, heldout, None, None)
    heldout_labels, _ = conditioning_labels(dataset, cfg.data, split.heldout)
    # 'unique' labels name training items; held-out items borrow them cyclically.
    heldout_labels = torch.from_numpy(heldout_labels % split.num_classes).long()
    return CellData(dataset, split, train, heldout, torch.from_numpy(split.train_labels).long(), heldout_labels)


def build_denoiser(cfg: CellConfig, shape: tuple[int, ...], num_classes: int) -> Denoiser:
    net = build_network(cfg.model, shape, num_classes)
    return Denoiser(net, cfg.diffusion.parameterization, cfg.diffusion.sigma_data)


def load_trained_denoiser(root: Path, weights: str = "ema", device: torch.device | str = "cpu",
                          checkpoint: Path | None = None) -> tuple[Denoiser, dict]:
    """The denoiser of a trained cell (EMA weights by default) from its latest checkpoint."""
    paths = CellPaths(Path(root))
    cfg = read_config(paths.root)
    checkpoint = checkpoint or paths.latest_checkpoint()
    if checkpoint is None:
        raise FileNotFoundError(f"{paths.checkpoints} holds no checkpoint: train the cell first")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    denoiser = build_denoiser(cfg, tuple(state["shape"]), state["num_classes"])
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

"""Sweep specifications: a base cell config plus grid axes, expanded into validated cells.

A spec (``sweeps/*.yaml``)::

    name: digits
    base:                  # any CellConfig fields (memorize/config.py)
      data: {name: digits}
      train: {steps: 1000}
    grid:                  # dotted CellConfig fields -> non-empty lists; the cells are their product
      data.n_train: [16, 64, 256]
      model.channels: [8, 16]
      seed: [0]
    score: {embedder: pixel, ratio: 0.3333, threshold: 0.6, compare: true}
    slurm: {partition: gpu, gpus_per_cell: 1, time_min: 240}

Every cell is validated before anything is launched (unknown fields, empty axes, n_train
larger than the dataset); the error names the field and the grid point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memorize.config import CellConfig, ConfigError, from_dict, set_dotted, to_dict


@dataclass
class ScoreConfig:
    """How each cell's samples are scored and compared."""

    embedder: str = "pixel"
    ratio: float = 1 / 3
    threshold: float = 0.6
    compare: bool = True
    checkpoints: bool = False  # also score every kept checkpoint (needs train.keep_all_checkpoints)
    checkpoint_samples: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"score.ratio: must be in (0, 1], got {self.ratio}")
        if not -1 <= self.threshold <= 1:
            raise ConfigError(f"score.threshold: must be a cosine in [-1, 1], got {self.threshold}")
        if self.checkpoint_samples < 1:
            raise ConfigError("score.checkpoint_samples: must be >= 1")


@dataclass
class SlurmConfig:
    """SLURM resources of one cell (each cell is one array task) and array limits."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_cell: int = 1
    cpus_per_cell: int = 8
    mem_gb: int = 32
    time_min: int = 240
    constraint: str | None = None
    array_parallelism: int = 64
    max_array_size: int = 1000  # submitit does not split arrays above SLURM's MaxArraySize (default 1001)
    extra: dict[str, str] = field(default_factory=dict)  # further sbatch parameters, e.g. {mail-type: END}

    def __post_init__(self) -> None:
        for name in ("cpus_per_cell", "time_min", "array_parallelism", "max_array_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm.{name}: must be >= 1")
        if self.gpus_per_cell < 0 or self.mem_gb <= 0:
            raise ConfigError("slurm.gpus_per_cell must be >= 0 and slurm.mem_gb > 0")


@dataclass
class SweepSpec:
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/ "):
            raise ConfigError(f"name: must be a non-empty word without '/' or spaces, got {self.name!r}")
        for axis, values in self.grid.items():
            if not values:
                raise ConfigError(f"grid.{axis}: the axis is empty; give at least one value")


@dataclass(frozen=True)
class Cell:
    id: str  # hash of the resolved config: re-launches find finished cells
    point: tuple[tuple[str, Any], ...]  # the grid values of this cell
    config: CellConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.point)


def cell_id(config: CellConfig) -> str:
    """First 12 hex digits of the SHA-256 of the canonical JSON of the resolved config."""
    canonical = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_spec(path: str | Path, slurm_overrides: dict[str, Any] | None = None) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys name, base, grid, score, slurm")
    data.setdefault("name", path.stem)
    if slurm_overrides:
        data["slurm"] = {**(data.get("slurm") or {}), **slurm_overrides}
    try:
        return from_dict(SweepSpec, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def expand(spec: SweepSpec) -> list[Cell]:
    """The product of the grid axes applied to the base config, each cell validated."""
    axes = list(spec.grid)
    cells = []
    for values in itertools.product(*(spec.grid[a] for a in axes)):
        point = tuple(zip(axes, values))
        data = json.loads(json.dumps(spec.base))  # deep copy
        for axis, value in point:
            set_dotted(data, axis, value)
        try:
            config = from_dict(CellConfig, data)
        except ConfigError as err:
            where = ", ".join(f"{a}={v}" for a, v in point)
            raise ConfigError(f"grid point ({where}): {err}") from None
        cells.append(Cell(cell_id(config), point, config))
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in seen:
            raise ConfigError(f"grid points ({seen[cell.id].label}) and ({cell.label}) give the same cell config")
        seen[cell.id] = cell
    return cells


def check_data(cells: list[Cell]) -> None:
    """Fail before launching if a subset does not fit its dataset: for each distinct data source,
    the cell asking for the most items is split for real (each dataset is loaded once)."""
    from memorize.data import load_dataset, make_split

    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        source = {k: v for k, v in to_dict(cell.config.data).items() if k not in ("n_train", "subset_offset")}
        groups.setdefault(json.dumps(source, sort_keys=True), []).append(cell)
    for group in groups.values():
        widest = max(group, key=lambda c: c.config.data.n_train + c.config.data.subset_offset)
        try:
            make_split(load_dataset(widest.config.data), widest.config.data)
        except (ConfigError, FileNotFoundError) as err:
            raise ConfigError(f"grid point ({widest.label}): {err}") from None

"""Sweep specifications: a base cell config plus grid axes, expanded into validated cells.

A spec (``sweeps/*.yaml``)::

    name: digits
    base:                  # any CellConfig fields (memorize/config/schema.py)
      data: {name: digits}
      train: {steps: 1000}
    grid:                  # dotted CellConfig fields -> non-empty lists; the cells are their product
      data.n_train: [16, 64, 256]
      model.channels: [8, 16]
      seed: [0]
    # or a list of such grids: the union of their products (experiments of different shapes in one sweep)
    score: {embedder: pixel, ratio: 0.3333, threshold: 0.6, compare: true}
    slurm: {partition: gpu, gpus_per_cell: 1, time_min: 240}

Every grid point is validated before anything is launched (unknown fields, empty axes, n_train
larger than the dataset); the error names the field and the grid point.

A grid point is a *cell* (a training run, keyed by its training identity: grid points that
differ only in ``train.steps``, sampling fields or fields that change nothing share it and
it is trained once) at one *evaluation*: a training budget, sampling settings and the spec's
scoring settings, keyed by those (see :func:`eval_settings`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memorize.config import (CELL_SECTIONS, CellConfig, ConfigError, cell_id, check_root_is_read, described,
                             from_dict, read_yaml, sample_settings, set_dotted, settings_key, to_dict)
from memorize.metrics.calibration import default_threshold, min_heldout


@dataclass
class ScoreConfig:
    """How each cell's samples are scored and compared."""

    embedder: str = "pixel"
    ratio: float = 1 / 3
    # auto: calibrated on held-out images for target_fpr; unset: auto for pixel, 0.6 for network descriptors
    threshold: float | Literal["auto"] | None = None
    target_fpr: float = 0.01
    features: str = "auto"  # quality metrics' features: an embedder spec, classifier, or auto (score.resolve_features)
    compare: bool = True
    consistency: bool = False  # also train a twin on the disjoint subset of the same size (twin_config)
    # The training-time view: also checkpoint each cell at log-spaced steps (checkpoints_from, then
    # checkpoints_per_decade per decade: memorize.train.log_spaced_steps) and score them, with every other kept
    # checkpoint, through the same code as the final scoring (checkpoint_samples samples each).
    checkpoints: bool = False
    checkpoint_samples: int = 64
    # Also hold each network against the local and equivariant local score machines (memorize.local_score):
    # patch sizes calibrated on it, same-noise samples drawn and scored, r^2 per sample (compare_cell's local).
    local: bool = False
    # The ELS machine's rule at the border (memorize.local_score.BOUNDARIES): aligned is Kamb & Ganguli's.
    els_boundary: Literal["aligned", "anywhere"] = "aligned"
    checkpoints_from: int = 10
    checkpoints_per_decade: int = 4

    def __post_init__(self) -> None:
        if self.threshold is None:
            self.threshold = default_threshold(self.embedder)
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"score.ratio: must be in (0, 1], got {self.ratio}")
        if self.threshold != "auto" and not 0 <= self.threshold < 1:
            raise ConfigError(f"score.threshold: must be a cosine threshold in [0, 1) or auto, got {self.threshold}")
        if not 0 < self.target_fpr < 1:
            raise ConfigError(f"score.target_fpr: must be in (0, 1), got {self.target_fpr}")
        for name in ("checkpoint_samples", "checkpoints_from", "checkpoints_per_decade"):
            if getattr(self, name) < 1:
                raise ConfigError(f"score.{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class SlurmConfig:
    """SLURM resources of one cell (each cell is one array task) and array limits."""

    partition: str | None = described(None, "partition (sbatch --partition)")
    account: str | None = described(None, "account to charge (sbatch --account)")
    qos: str | None = described(None, "quality of service (sbatch --qos)")
    gpus_per_cell: int = described(1, "GPUs of each cell's job (0: CPU jobs)")
    tasks_per_cell: int | None = described(
        None, "processes (SLURM tasks) of each cell's job; above 1 they train the cell data-parallel "
              "(default: one per GPU)")
    cpus_per_cell: int = described(8, "CPU cores of each cell's job; also its torch threads")
    mem_gb: int = described(32, "memory of each cell's job, in GB")
    time_min: int = described(240, "time limit of each cell's job, in minutes")
    signal_delay_s: int = described(
        90, "seconds before the time limit at which SLURM signals the job: the cell checkpoints and is requeued")
    max_requeues: int = described(
        3, "requeues after a time limit (submitit's max_num_timeout); preemptions do not count")
    constraint: str | None = described(None, "node features (sbatch --constraint)")
    array_parallelism: int = described(64, "array tasks running at once")
    max_array_size: int = described(
        1000, "largest job array submitted at once (submitit does not split arrays above SLURM's MaxArraySize, "
              "1001 by default)")
    extra: dict[str, str] = field(default_factory=dict)  # further sbatch parameters, e.g. {mail-type: END}

    def __post_init__(self) -> None:
        for name in ("cpus_per_cell", "time_min", "array_parallelism", "max_array_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm.{name}: must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_cell < 0:
            raise ConfigError(f"slurm.gpus_per_cell: must be >= 0, got {self.gpus_per_cell}")
        if not self.mem_gb > 0:
            raise ConfigError(f"slurm.mem_gb: must be > 0, got {self.mem_gb}")
        if not 0 < self.signal_delay_s < 60 * self.time_min:
            raise ConfigError(f"slurm.signal_delay_s: must be in (0, {60 * self.time_min}) seconds (below "
                              f"slurm.time_min = {self.time_min} min), got {self.signal_delay_s}")
        if self.max_requeues < 0:
            raise ConfigError(f"slurm.max_requeues: must be >= 0, got {self.max_requeues}")
        if self.tasks_per_cell is not None and self.tasks_per_cell < 1:
            raise ConfigError(f"slurm.tasks_per_cell: must be >= 1, got {self.tasks_per_cell}")
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is None:
                continue
            if not value.strip():  # as an unset shell variable gives it
                raise ConfigError(f"slurm.{name}: empty; leave it out for the cluster's default")
            if not value.isprintable():
                raise ConfigError(f"slurm.{name}: must be one line of printable text, got {value!r}")

    @property
    def earliest_signal_s(self) -> int:
        """Seconds after a job starts at which SLURM may send the time-limit signal: ``signal_delay_s``
        before the limit, and up to 60 s earlier than that ("due to the resolution of event handling",
        sbatch --signal); 0 where that is the start itself."""
        return max(0, 60 * self.time_min - self.signal_delay_s - 60)

    def early_signal_caution(self) -> str | None:
        """A line for a launch whose jobs may be signalled within their first minute, before a cell has
        begun (Python start-up, imports, data): such a job ends without a checkpoint and is not requeued
        (a later ``sweep run`` relaunches its cell). None where the signal comes later."""
        if self.earliest_signal_s >= 60:
            return None
        need = -(-(self.signal_delay_s + 120) // 60)
        delay = 60 * self.time_min - 120  # the longest lead that keeps the first minute free
        return (f"caution: slurm.time_min {self.time_min} with slurm.signal_delay_s {self.signal_delay_s}: SLURM may "
                f"send the time-limit signal up to 60 s earlier than asked, here as early as "
                f"{self.earliest_signal_s} s after a job starts, possibly before its cell has begun; a job signalled "
                f"then ends without a checkpoint. Give slurm.time_min >= {need}"
                + (f" or slurm.signal_delay_s <= {delay}" if delay > 0 else ""))

    @property
    def processes(self) -> int:
        """Processes training each cell: ``tasks_per_cell``, else one per GPU (one for CPU jobs)."""
        return self.tasks_per_cell or max(1, self.gpus_per_cell)


@dataclass
class SweepSpec:
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = field(default_factory=dict)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/ "):
            raise ConfigError(f"name: must be a non-empty word without '/' or spaces, got {self.name!r}")
        if isinstance(self.grid, list) and not self.grid:
            raise ConfigError("grid: the list of grids is empty; give at least one mapping of axes")
        for i, grid in enumerate(self.grids):
            where = f"grid[{i}]" if isinstance(self.grid, list) else "grid"
            for axis, values in grid.items():
                if not values:
                    raise ConfigError(f"{where}.{axis}: the axis is empty; give at least one value")
                seen = set()
                for value in values:  # compared as JSON text: lists are values too (channel_mult), 1 is not true
                    text = json.dumps(value, sort_keys=True, default=str)
                    if text in seen:
                        raise ConfigError(f"{where}.{axis}: {value!r} is listed twice")
                    seen.add(text)

    @property
    def grids(self) -> list[dict[str, list[Any]]]:
        """The spec's grids: ``grid`` itself, or each mapping of a list of grids."""
        return self.grid if isinstance(self.grid, list) else [self.grid]


def twin_config(config: CellConfig) -> CellConfig:
    """The disjoint-subset twin of a cell (Kadkhodaie et al. 2024): the same config trained on the
    next ``n_train`` images of the pool (``data.subset_offset`` moved up by ``n_train``)."""
    data = dataclasses.replace(config.data, subset_offset=config.data.subset_offset + config.data.n_train)
    return dataclasses.replace(config, data=data)


def eval_settings(config: CellConfig, score: ScoreConfig) -> dict[str, Any]:
    """What determines a grid point's results besides its cell: the training budget, the sampling
    settings (not the batch size) and the scoring settings."""
    scoring = dataclasses.asdict(score)
    if not score.checkpoints:  # fields that act only with it: left out, so older sweeps keep their keys
        del scoring["checkpoints_from"], scoring["checkpoints_per_decade"]
    if not score.local:  # off: left out, so the keys of sweeps that never set it stay as they are
        del scoring["local"]
    if not score.local or score.els_boundary == "anywhere":  # the rule of the results that record none
        del scoring["els_boundary"]
    settings = {"steps": config.train.steps, "sample": sample_settings(config.sample), "score": scoring}
    if config.train.stop_when != "budget":  # the results may be from before the budget
        settings["stop"] = [config.train.stop_when, config.train.stop_window, config.train.stop_tolerance]
    return settings


@dataclass(frozen=True)
class GridPoint:
    cell: str  # the cell's id (its training identity): re-launches find trained cells
    key: str  # the evaluation key: re-launches find finished results
    point: tuple[tuple[str, Any], ...]  # the grid values of this point
    config: CellConfig

    @property
    def label(self) -> str:
        return point_label(self.point) or "(no grid axes)"


def point_label(point) -> str:
    """``axis=value, ...`` on one line: a string value with a line break or other unprintable character is
    shown quoted (``repr``), so the label stays one line."""
    return ", ".join(f"{a}={v!r}" if isinstance(v, str) and not v.isprintable() else f"{a}={v}" for a, v in point)


def load_spec(path: str | Path, slurm_overrides: dict[str, Any] | None = None,
              overrides: dict[str, Any] | None = None) -> SweepSpec:
    """The spec in ``path`` with ``overrides`` (``memorize sweep run --set``): dotted keys into the spec
    (``base.train.steps``, ``score.checkpoints``) where a ``grid.`` key names a whole axis
    (``grid.data.n_train: [8, 64]``), and the SLURM flags' ``slurm_overrides``."""
    path = Path(path)
    data = read_yaml(path, "sweep spec")
    if data is None:
        raise ConfigError(f"{path}: the spec is empty; expected a mapping with keys name, base, grid, score, slurm "
                          f"(see sweeps/digits.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys name, base, grid, score, slurm")
    if CELL_SECTIONS & set(data) and not {"base", "grid"} & set(data):
        raise ConfigError(f"{path}: a cell's config ({', '.join(k for k in data if k in CELL_SECTIONS)}), not a sweep "
                          f"spec: train it with `memorize train {path} --out DIR`, or put it under base: in a spec "
                          f"with a grid: (see sweeps/digits.yaml)")
    data.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        section, _, rest = dotted.partition(".")
        if section not in ("name", "base", "grid", "score", "slurm") or (section != "name" and not rest):
            raise ConfigError(f"--set {dotted}: expected a key below base, grid, score or slurm "
                              f"(e.g. base.train.steps, grid.data.n_train, score.checkpoints) or name")
        if section == "grid":
            if isinstance(data.get("grid"), list):
                raise ConfigError(f"--set {dotted}: the spec's grid is a list of grids; edit it in {path} (or a copy)")
            if not isinstance(data.get("grid") or {}, dict):
                raise ConfigError(f"{path}: grid must be a mapping of axes")
            data["grid"] = {**(data.get("grid") or {}), rest: value}
        else:
            set_dotted(data, dotted, value)
    if slurm_overrides:
        data["slurm"] = {**(data.get("slurm") or {}), **slurm_overrides}
    try:
        return from_dict(SweepSpec, data)
    except ConfigError as err:
        raise ConfigError(_where_given(str(err), path, slurm_overrides or {}, overrides or {})) from None


def _where_given(message: str, path: Path, slurm_overrides: dict[str, Any], overrides: dict[str, Any]) -> str:
    """A spec's error ``message`` (``FIELD: problem``) led by where the field's value came from: its SLURM flag
    (``--max-array-size``), its ``--set FIELD`` item, or else the spec file."""
    field = message.split(":", 1)[0]
    name = field.removeprefix("slurm.")
    if field.startswith("slurm.") and name in slurm_overrides:
        return f"--{name.replace('_', '-')}{message[len(field):]}"
    if field in overrides:
        return f"--set {field}{message[len(field):]}"
    return f"{path}: {message}"


def _get_dotted(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def expand(spec: SweepSpec) -> list[GridPoint]:
    """The product of the grid axes applied to the base config (for a list of grids, the union of their
    products), each point validated; two points with the same cell and evaluation are one experiment, an
    error. Every point carries a value for every axis of every grid (its config's, where its grid lacks it)."""
    every_axis = list(dict.fromkeys(a for grid in spec.grids for a in grid))
    cells = [point for grid in spec.grids for point in _expand_grid(spec, grid, every_axis)]
    seen: dict[tuple[str, str], GridPoint] = {}
    for cell in cells:
        if (cell.cell, cell.key) in seen:
            raise ConfigError(f"grid points ({seen[cell.cell, cell.key].label}) and ({cell.label}) are the same "
                              f"experiment: they differ only in fields that change neither the trained weights nor "
                              f"the results (device, logging, checkpoint cadence, batch size of sampling)")
        seen[cell.cell, cell.key] = cell
    return cells


def check_cell_sections(data: dict[str, Any], axes: list[str]) -> None:
    """A section of the spec itself (``score``, ``slurm``) given inside ``base`` or as a grid axis is refused
    with where it belongs: every grid point shares the spec's scoring and SLURM settings."""
    for key in ("score", "slurm"):
        if key in data:
            axis = next((a for a in axes if a.split(".")[0] == key), None)
            given = f"grid axis {axis}" if axis else f"base.{key}"
            raise ConfigError(f"{given}: {key} is a section of the sweep spec, not of a cell's config: set it at the "
                              f"spec's top level, beside base and grid (--set {key}.<field>=...), for every grid point")


def _expand_grid(spec: SweepSpec, grid: dict[str, list[Any]], every_axis: list[str]) -> list[GridPoint]:
    axes = list(grid)
    cells = []
    for values in itertools.product(*(grid[a] for a in axes)):
        point = tuple(zip(axes, values))
        data = json.loads(json.dumps(spec.base))  # deep copy
        for axis, value in point:
            set_dotted(data, axis, value)
        where = point_label(point)
        check_cell_sections(data, [axis for axis, _ in point])
        try:
            config = from_dict(CellConfig, data)
        except ConfigError as err:
            raise ConfigError(f"grid point ({where}): {err}") from None
        if config.train.stop_when != "budget" and not spec.score.checkpoints:
            raise ConfigError(f"grid point ({where}): train.stop_when {config.train.stop_when} reads the memorization "
                              f"ratio at scored checkpoints: set score.checkpoints: true")
        need = min_heldout(spec.score.target_fpr)
        # (held-out images from files are counted where the cell reads them: memorize.metrics.calibration)
        if spec.score.threshold == "auto" and config.data.heldout_path is None and config.data.n_heldout < need:
            raise ConfigError(f"grid point ({where}): score.threshold auto at target_fpr {spec.score.target_fpr:g} "
                              f"needs data.n_heldout >= {need}, got {config.data.n_heldout}")
        given = dict(point)  # every axis is a config field: each was validated in its own grid
        full = tuple((a, given[a] if a in given else _get_dotted(to_dict(config), a)) for a in every_axis)
        cells.append(GridPoint(cell_id(config), settings_key(eval_settings(config, spec.score)), full, config))
    return cells


def check_networks(score: ScoreConfig) -> None:
    """Fail before launching if the score's embedder or feature network cannot be loaded (a spec of the
    wrong form, a weights file missing, unreadable or not fitting its network): each is loaded once here,
    on the CPU, rather than found by every cell after its training."""
    from memorize.metrics import EmbedderError, load_embedder

    for field, builtin in (("embedder", ("pixel",)), ("features", ("auto", "classifier", "pixel"))):
        spec = getattr(score, field)
        if spec in builtin:
            continue
        try:
            load_embedder(spec)
        except EmbedderError as err:
            raise ConfigError(f"score.{field}: {err}") from None


def check_data(cells: list[GridPoint], score: ScoreConfig | None = None) -> None:
    """Fail before launching if a subset (with ``score.consistency``, also its twin's) does not fit its
    dataset: for each distinct data source, the cell asking for the most items is split for real (each
    dataset is loaded once); if a subset is too small to be scored (N < 2); if a ``data.root`` is given to a
    dataset that reads no files (:func:`memorize.config.check_root_is_read`); and if the dataset cannot be
    scored as ``score`` asks (``features: classifier`` without labelled images of two classes to train it on,
    ``local`` machines without images)."""
    from memorize.data import load_dataset, make_split
    from memorize.metrics.classifier import trainable
    from memorize.models import check_model

    score = score if score is not None else ScoreConfig()
    twins = score.consistency
    for cell in cells:  # found by the scoring only after the cell's training
        if cell.config.data.n_train < 2:
            raise ConfigError(f"grid point ({cell.label}): data.n_train must be >= 2 in a sweep, which scores every "
                              f"cell (the nearest-neighbour criterion d1 / d2 needs a second training image)")
        if "data.name" not in dict(cell.point):  # a grid over datasets shares one root among those that read it
            try:
                check_root_is_read(cell.config.data)
            except ConfigError as err:
                raise ConfigError(f"grid point ({cell.label}): {err}") from None

    groups: dict[str, list[tuple[GridPoint, CellConfig]]] = {}
    for cell in cells:
        source = {k: v for k, v in to_dict(cell.config.data).items() if k not in ("n_train", "subset_offset")}
        config = twin_config(cell.config) if twins else cell.config
        groups.setdefault(json.dumps(source, sort_keys=True), []).append((cell, config))
    for group in groups.values():
        widest, config = max(group, key=lambda c: c[1].data.n_train + c[1].data.subset_offset)
        try:
            dataset = load_dataset(config.data)
            make_split(dataset, config.data)
        except (ConfigError, FileNotFoundError) as err:
            twin = (f" (score.consistency trains a twin on the next {widest.config.data.n_train} images, "
                    f"data.subset_offset={config.data.subset_offset})") if twins else ""
            raise ConfigError(f"grid point ({widest.label}){twin}: {err}") from None
        if score.features == "classifier" and not trainable(dataset):
            raise ConfigError(f"grid point ({widest.label}): score.features classifier: dataset "
                              f"{config.data.name!r} has no labelled images of two or more classes to train it "
                              f"on; use features: auto, pixel or an embedder spec")
        if score.local and not dataset.is_image:
            raise ConfigError(f"grid point ({widest.label}): score.local: the local score machines need image "
                              f"data; dataset {config.data.name!r} holds vectors")
        for cell, _ in group:  # the model must fit the data's items (an attention resolution it reaches, ...)
            try:
                check_model(cell.config.model, tuple(dataset.data.shape[1:]) if cell.config.data.resize is None
                            else (dataset.data.shape[1], cell.config.data.resize, cell.config.data.resize))
            except ConfigError as err:
                raise ConfigError(f"grid point ({cell.label}): {err}") from None
        for cell, _ in group:  # a fixed class must be one of the dataset's, with training items (compare samples it)
            label = cell.config.sample.label
            if label is None or cell.config.data.labels == "unique":  # unique: checked by CellConfig
                continue
            if label >= dataset.num_classes:
                raise ConfigError(f"grid point ({cell.label}): sample.label {label} is outside dataset "
                                  f"{cell.config.data.name!r}'s classes 0 to {dataset.num_classes - 1}")
            if not (make_split(dataset, cell.config.data).train_labels == label).any():
                raise ConfigError(f"grid point ({cell.label}): sample.label {label}: the training subset has no "
                                  f"item of that class")

"""The config schema: plain dataclasses that validate themselves.

A cell is described by one :class:`CellConfig` (data, model, diffusion, training and sampling
settings). Each dataclass checks its own values in ``__post_init__``; an out-of-range value is a
:class:`~memorize.errors.ConfigError` that names the field by its dotted path (``train.lr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from memorize.errors import ConfigError


def described(default: Any, help: str) -> Any:
    """A dataclass field with its description, the one text that the ``memorize`` flag generated from the
    field shows (``memorize.cli.flags``)."""
    return field(default=default, metadata={"help": help})


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


def _finite(config: Any, section: str) -> None:
    """Every float field of ``config`` is a finite number (``inf`` passes comparisons like ``lr > 0``)."""
    for name, value in vars(config).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section}.{name}: must be a finite number, got {value}")


@dataclass
class GMMConfig:
    """A synthetic mixture of K Gaussians in D dimensions (the ``gmm`` dataset).

    Means are random shifts ``shift * N(0, I)``; each component has covariance
    ``U_k diag(lambda) U_k^T`` with a random orthonormal ``U_k`` of ``rank``
    columns (``rank = None``: full rank) and eigenvalues spread over
    ``scale^2 * [0.5, 1]``. ``components = 2`` is the two-Gaussians-with-random-
    shifts example.
    """

    components: int = 2
    dim: int = 16
    rank: int | None = None
    scale: float = 0.2
    shift: float = 0.5
    size: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        _finite(self, "data.gmm")
        _require(self.components >= 1, "data.gmm.components", "must be >= 1")
        _require(self.dim >= 1, "data.gmm.dim", "must be >= 1")
        _require(self.rank is None or 1 <= self.rank <= self.dim, "data.gmm.rank",
                 f"must be between 1 and dim={self.dim}, or null for full rank")
        _require(self.scale > 0, "data.gmm.scale", "must be > 0")
        _require(self.size >= 2, "data.gmm.size", "must be >= 2")
        _require(0 <= self.seed < 2**63, "data.gmm.seed", "must be in [0, 2^63) (torch's generator takes a negative "
                 "seed as another, larger one)")


FILE_DATASETS = ("mnist", "cifar10", "folder", "npz")  # the datasets read from data.root


@dataclass
class DataConfig:
    """Which images, and which of them a cell trains on.

    The training subset of size ``n_train`` is the first ``n_train`` items of a
    fixed permutation (seeded by ``split_seed``) of the de-duplicated dataset,
    so smaller subsets nest inside larger ones; ``subset_offset`` skips that many
    items first (offsets 0 and N give two disjoint subsets of size N). The last
    ``n_heldout`` items of the permutation are held out and never drawn by any subset.

    ``train_indices``: a file of dataset indices (``.npy``, or text with one integer per line) that is
    the training subset instead, in its order: the images a model trained elsewhere saw; ``n_train``
    must be their number, and the held-out items are drawn from the images not among them.
    ``heldout_path``: held-out real images from an image folder, ``.npz``, ``.npy`` or ``.pt`` (read as
    samples are, :mod:`memorize.data.sample_files`) instead of the dataset's own held-out items; the
    dataset then holds none back and ``n_heldout`` is not read.

    ``dedup``: ``exact`` drops byte-identical copies (the first occurrence stays); ``near`` also collapses
    near-copies before the permutation (:mod:`memorize.data.near_duplicates`: the Pearson correlation of the
    images' pixels, pooled to at most 16 x 16, at least ``near_threshold``; an image is dropped when it is a
    near-copy of one kept before it), so no held-out image and no second training image is a near-copy of a
    training image. With ``train_indices`` the training images stay as given and the held-out ones exclude
    their near-copies.
    """

    name: Literal["digits", "gmm", "mnist", "cifar10", "folder", "npz"] = "digits"
    root: str | None = None
    n_train: int = 32
    n_heldout: int = 256
    subset_offset: int = 0
    split_seed: int = 0
    class_balanced: bool = False
    resize: int | None = None
    labels: Literal["none", "true", "random", "unique"] = "none"
    gmm: GMMConfig = field(default_factory=GMMConfig)
    train_indices: str | None = None
    heldout_path: str | None = None
    dedup: Literal["exact", "near"] = "exact"
    near_threshold: float = 0.98

    def __post_init__(self) -> None:
        _require(self.n_train >= 1, "data.n_train", "must be >= 1")
        _require(0 < self.near_threshold <= 1, "data.near_threshold",
                 "must be a cosine in (0, 1] (1: only copies up to brightness and contrast)")
        _require(self.n_heldout >= 0, "data.n_heldout", "must be >= 0")
        _require(self.subset_offset >= 0, "data.subset_offset", "must be >= 0")
        _require(self.split_seed >= 0, "data.split_seed", "must be >= 0 (numpy's generators take no negative seed)")
        _require(self.resize is None or self.resize >= 2, "data.resize", "must be >= 2 or null")
        for field in ("root", "train_indices", "heldout_path"):  # "" would be read as the current directory
            _require(getattr(self, field) != "", f"data.{field}", "an empty path: give a file or directory, or null")
        _require(self.name not in FILE_DATASETS or bool(self.root), "data.root",
                 f"dataset {self.name!r} is read from local files: set data.root to their location")
        if self.train_indices is not None:
            _require(self.subset_offset == 0 and not self.class_balanced, "data.train_indices",
                     "names the training subset itself: leave data.subset_offset and data.class_balanced unset")
        _require(self.heldout_path is None or self.labels == "none", "data.heldout_path",
                 "held-out images from files carry no class labels: only with data.labels: none")


DATASETS: tuple[str, ...] = get_args(get_type_hints(DataConfig)["name"])


def check_root_is_read(data: DataConfig, root: str = "data.root", name: str = "data.name") -> None:
    """Where a config is given (a spec's grid point, ``--set``, a notebook's ``data`` mapping): a ``data.root``
    beside a dataset that reads no files is refused, since the researcher who wrote ``name: digits, root: my.npz``
    meant the files. Not part of :class:`DataConfig`'s own checks, so a cell recorded with such a root stays
    readable. ``root``, ``name``: how the error names the two fields (a command's flags)."""
    if data.root is None or data.name in FILE_DATASETS:
        return
    origin = "ships with scikit-learn" if data.name == "digits" else "is drawn from data.gmm"
    raise ConfigError(f"{root}: dataset {data.name!r} reads no files (it {origin}), so {data.root!r} would be "
                      f"ignored: drop {root}, or set {name} to the files' reader ({', '.join(FILE_DATASETS)})")


@dataclass
class ModelConfig:
    """The denoiser network and its size knobs.

    ``unet`` uses ``channels``, ``channel_mult``, ``blocks_per_level`` and
    ``attention_resolutions``; ``dit`` uses ``patch_size``, ``width``, ``depth``
    and ``heads``; ``mlp`` uses ``width`` and ``depth``.
    """

    arch: Literal["unet", "dit", "mlp"] = "unet"
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    blocks_per_level: int = 1
    attention_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    patch_size: int = 2
    width: int = 128
    depth: int = 4
    heads: int = 4

    def __post_init__(self) -> None:
        _finite(self, "model")
        for name in ("channels", "blocks_per_level", "patch_size", "width", "depth", "heads"):
            _require(getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
        _require(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult),
                 "model.channel_mult", "must be a non-empty list of positive integers")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _require(self.width % self.heads == 0, "model.width", f"must be divisible by model.heads={self.heads}")


@dataclass
class DiffusionConfig:
    """Noise levels seen in training and how the network is wrapped into a denoiser.

    ``noise``: ``edm`` draws ``ln sigma ~ N(p_mean, p_std^2)`` (Karras et al.
    2022); ``vp_linear`` and ``vp_cosine`` draw ``t ~ U(t_min, 1)`` and use the
    VP schedule's ``sigma(t)``. ``parameterization``: what the network predicts
    (``edm`` preconditioning, ``eps``, ``x0`` or ``v``). ``sigma_data``: the data's standard deviation in
    the preconditioning and loss weights; ``auto`` takes the training subset's (over all its values),
    recorded in every checkpoint and in results.csv (``sigma_data``).
    """

    parameterization: Literal["edm", "eps", "x0", "v"] = "edm"
    noise: Literal["edm", "vp_linear", "vp_cosine"] = "edm"
    sigma_data: float | Literal["auto"] = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_max: float = 80.0  # largest training sigma of the VP noises (unused by edm noise)

    def __post_init__(self) -> None:
        _finite(self, "diffusion")
        _require(self.sigma_data == "auto" or self.sigma_data > 0, "diffusion.sigma_data", "must be > 0 or auto")
        _require(self.p_std > 0, "diffusion.p_std", "must be > 0")
        _require(self.sigma_max > 0, "diffusion.sigma_max", "must be > 0")


@dataclass
class TrainConfig:
    """Optimizer, EMA, checkpointing and logging of the training loop.

    ``steps`` is a budget, not part of what a cell is: the learning rate does not depend on
    it (linear warm-up, then constant), so a run of S steps is a prefix of any longer run and
    raising ``steps`` continues the same cell. The checkpoint at each budget trained to is kept.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    keep_all_checkpoints: bool = False
    log_every: int = 50
    eval_every: int = 250
    # bf16 autocast of the training step on a CUDA device (the CPU trains in float32 either way). Off by default:
    # it was slower than float32 on the training benchmark (benchmarks/README.md, "Training step on the GPU").
    amp: bool = False
    device: str = "auto"
    # Sweeps with score.checkpoints: end a cell before its budget once memorization has converged
    # (memorize.timescales.memorization_converged: the ratio at the scored checkpoints has reached 0.5 and moved by
    # at most stop_tolerance over the last stop_window of them); its results are then at the step it stopped.
    stop_when: Literal["budget", "memorization_converged"] = "budget"
    stop_window: int = 3
    stop_tolerance: float = 0.05
    # Classifier-free guidance (Ho & Salimans 2022): each training label is replaced by the null label (a learned
    # embedding of its own) with this probability, so one network is both D(x, c) and D(x, none).
    label_dropout: float = 0.0
    # torch.compile the training loss (forward and backward); not part of the training identity (the weights
    # match the eager run's up to float rounding). Pays only once compilation is amortized (benchmarks/compile.py).
    compile: bool = False
    # Each training step on a CUDA device captured once in a CUDA graph and replayed (memorize.graphs), and so
    # is each denoiser call of the cell's sampler, once per batch shape: auto captures where it can, off runs
    # everything eagerly. Not part of the training identity (the same steps) nor of the samples' settings.
    cuda_graph: Literal["auto", "off"] = "auto"

    def __post_init__(self) -> None:
        _finite(self, "train")
        _require(self.stop_window >= 2, "train.stop_window", "must be >= 2")
        _require(0 <= self.stop_tolerance < 1, "train.stop_tolerance", "must be in [0, 1)")
        _require(0 <= self.label_dropout < 1, "train.label_dropout", "must be in [0, 1)")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "eval_every"):
            _require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        _require(self.lr > 0, "train.lr", "must be > 0")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _require(0.0 <= self.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")
        _require(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", "must be > 0 or null")


SAMPLERS = ("heun", "euler_maruyama", "ddim", "ddpm", "dpm_solver_2m")
# The sampling fields that one sampler alone reads (memorize.sampling): each other sampler draws the same samples
# whatever their values.
SAMPLER_FIELDS = {"eta": "ddim", "churn": "heun", "churn_sigma_min": "heun", "churn_sigma_max": "heun",
                  "churn_noise": "heun"}
# Each sampler's default number of noise levels: the fewest (of 18, 24, 32, ... on the Karras grid) at which its
# samples of a 16-d Gaussian with eigenvalues 1e-3 to 1 and its exact denoiser have a variance within 10% of the
# truth in every direction (held by tests/test_sampling.py; benchmarks/sampler_bias.py prints the variances).
DEFAULT_SAMPLE_STEPS = {"heun": 32, "dpm_solver_2m": 32, "ddim": 100, "euler_maruyama": 256, "ddpm": 256}


@dataclass
class SampleConfig:
    """Default sampler settings of a cell (``memorize sample`` flags override them). ``steps`` unset: the
    sampler's own default (:data:`DEFAULT_SAMPLE_STEPS`, :attr:`num_steps`).

    Class-conditional cells: ``guidance`` is the classifier-free guidance weight w,
    ``D_w = D(x, c) + w (D(x, c) - D(x, none))`` (0: the conditional denoiser itself); ``label`` fixes the
    class of every sample (unset: each sample's class is a training label drawn with its own seed).

    ``noise``: where each sample's noise stream is drawn. ``generator``: its own ``torch.Generator`` on the
    CPU (the same samples on every device). ``counter``: a counter-based stream computed on the sampling
    device (:class:`memorize.sampling.CounterNoise`; other samples than ``generator``, the same on every
    device up to float64 rounding), for stochastic samplers on a GPU, where drawing on the CPU holds them up."""

    sampler: Literal["heun", "euler_maruyama", "ddim", "ddpm", "dpm_solver_2m"] = described(
        "heun", "sampler")
    steps: int | None = described(
        None, "number of noise levels (denoiser evaluations: 2*steps-1 for heun); unset: the sampler's own, " +
        ", ".join(f"{k} {v}" for k, v in DEFAULT_SAMPLE_STEPS.items()))
    num: int = described(64, "number of samples")
    batch_size: int = described(64, "samples per batch (the samples do not depend on it)")
    seed: int = described(0, "sample seed in [0, 2^32), combined with the cell's seed")
    eta: float = described(0.0, "DDIM stochasticity in [0, 1]")
    churn: float = described(0.0, "EDM Heun stochastic churn S_churn (>= 0)")
    churn_sigma_min: float = described(0.0, "S_tmin: churn only at noise levels >= this")
    churn_sigma_max: float | None = described(None, "S_tmax: churn only at noise levels <= this (unset: no bound)")
    churn_noise: float = described(1.0, "S_noise: scale of the churn noise (> 0)")
    schedule: Literal["karras", "vp_linear", "vp_cosine"] = described("karras", "noise-level grid")
    sigma_min: float = described(0.002, "smallest noise level of the grid")
    sigma_max: float = described(80.0, "largest noise level of the grid")
    rho: float = described(7.0, "Karras grid exponent rho (> 0)")
    guidance: float = described(
        0.0, "classifier-free guidance weight w >= 0 of a class-conditional cell: D(x,c) + w (D(x,c) - D(x,none)); "
             "the trained denoiser needs train.label_dropout > 0")
    label: int | None = described(
        None, "class of every sample of a class-conditional cell (unset: each sample's class is a training label "
              "drawn with its seed)")
    noise: Literal["generator", "counter"] = described(
        "generator", "per-sample noise streams: a CPU generator per sample, or counter-based streams computed on "
                     "the device (faster stochastic sampling on a GPU; other samples)")

    def __post_init__(self) -> None:
        _finite(self, "sample")
        _require(self.guidance >= 0, "sample.guidance", "must be >= 0 (0: no guidance)")
        _require(self.label is None or self.label >= 0, "sample.label", "must be a class index >= 0, or null")
        for name in ("num", "batch_size"):
            _require(getattr(self, name) >= 1, f"sample.{name}", "must be >= 1")
        _require(self.steps is None or self.steps >= 1, "sample.steps",
                 "must be >= 1, or null for the sampler's default")
        _require(0 <= self.seed < 2**32, "sample.seed", "must be in [0, 2^32)")
        _require(0.0 <= self.eta <= 1.0, "sample.eta", "must be in [0, 1]")
        _require(self.churn >= 0, "sample.churn", "must be >= 0")
        _require(self.churn_sigma_min >= 0, "sample.churn_sigma_min", "must be >= 0")
        _require(self.churn_sigma_max is None or self.churn_sigma_max >= self.churn_sigma_min,
                 "sample.churn_sigma_max", "must be >= churn_sigma_min, or null")
        _require(self.churn_noise > 0, "sample.churn_noise", "must be > 0")
        _require(self.sigma_min > 0, "sample.sigma_min", f"must be > 0, got {self.sigma_min:g}")
        _require(self.sigma_max > self.sigma_min, "sample.sigma_max",
                 f"must be above sample.sigma_min ({self.sigma_min:g}), got {self.sigma_max:g}")
        _require(self.rho > 0, "sample.rho", "must be > 0")

    @property
    def num_steps(self) -> int:
        """The number of noise levels sampled with: ``steps``, or the sampler's default."""
        return self.steps if self.steps is not None else DEFAULT_SAMPLE_STEPS[self.sampler]


@dataclass
class CellConfig:
    """Everything that defines one cell: train on a subset, then sample."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**63, "seed", "must be in [0, 2^63)")
        unconditional = self.data.labels == "none"
        _require(not (unconditional and self.train.label_dropout > 0), "train.label_dropout",
                 "drops class labels, but data.labels is none: set data.labels (true, random or unique) or leave it 0")
        _require(not (unconditional and self.sample.guidance > 0), "sample.guidance",
                 "needs a class-conditional model: set data.labels (true, random or unique)")
        _require(self.sample.guidance == 0 or self.train.label_dropout > 0, "sample.guidance",
                 "needs the unconditional denoiser D(x, none): train with train.label_dropout > 0 (e.g. 0.1)")
        _require(not (unconditional and self.sample.label is not None), "sample.label",
                 "names a class, but data.labels is none: set data.labels or leave it null")
        _require(not (self.data.labels == "unique" and (self.sample.label or 0) >= self.data.n_train), "sample.label",
                 f"with unique labels the classes are the {self.data.n_train} training items: expected 0 to "
                 f"{self.data.n_train - 1}")

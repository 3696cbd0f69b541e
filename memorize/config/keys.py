"""What a cell is and what a result depends on: the training identity and settings keys.

A cell's id is the key of the fields that determine its trained weights
(:func:`training_identity`); samples, scores and evaluations inside it are keyed by their own
settings (:func:`sample_settings`, :func:`settings_key`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from memorize.config.mapping import to_dict
from memorize.config.schema import CellConfig, SampleConfig

# Model fields each architecture reads (the others are ignored by it, so they are not part of a cell).
ARCH_FIELDS = {
    "unet": ("arch", "channels", "channel_mult", "blocks_per_level", "attention_resolutions", "dropout"),
    "dit": ("arch", "patch_size", "width", "depth", "heads", "dropout"),
    "mlp": ("arch", "width", "depth", "dropout"),
}
# Fields that never change the trained weights. ``data.root`` is a location: the data's content is
# fingerprinted instead (memorize.cell). ``train.steps`` is a budget (see TrainConfig).
NOT_TRAINING_IDENTITY = ("data.root", "train.steps", "train.checkpoint_every", "train.keep_all_checkpoints",
                         "train.log_every", "train.eval_every", "train.device", "train.stop_when", "train.stop_window",
                         "train.stop_tolerance", "train.compile", "train.cuda_graph", "sample")


def training_identity(cfg: CellConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that determine a cell's trained weights (DESIGN: the training identity).

    Everything in the config except :data:`NOT_TRAINING_IDENTITY`, the model fields the chosen
    architecture ignores, ``data.gmm`` unless the dataset is ``gmm``, ``diffusion.p_mean``/``p_std``
    unless the noise is ``edm`` and ``diffusion.sigma_max`` when it is.
    """
    d = to_dict(cfg)
    for dotted in NOT_TRAINING_IDENTITY:
        *parents, last = dotted.split(".")
        node = d
        for part in parents:
            node = node[part]
        del node[last]
    d["model"] = {k: d["model"][k] for k in ARCH_FIELDS[cfg.model.arch]}
    if cfg.data.name != "gmm":
        del d["data"]["gmm"]
    unused = ("sigma_max",) if cfg.diffusion.noise == "edm" else ("p_mean", "p_std")
    for name in unused:
        del d["diffusion"][name]
    if cfg.train.label_dropout == 0:  # left out at its default, so that a cell which does not use it keeps the id it had without it
        del d["train"]["label_dropout"]
    for name in ("train_indices", "heldout_path"):  # likewise: left out when unset
        if d["data"][name] is None:
            del d["data"][name]
    if cfg.data.dedup == "exact":  # likewise: the near-copy rule only where it is used
        del d["data"]["dedup"], d["data"]["near_threshold"]
    return d


def settings_key(settings: Any, length: int = 12) -> str:
    """First ``length`` hex digits of the SHA-256 of the canonical JSON of ``settings``."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def cell_id(cfg: CellConfig) -> str:
    """A cell's id: the key of its training identity, so configs that train the same weights share it."""
    return settings_key(training_identity(cfg))


def sample_settings(cfg: SampleConfig) -> dict[str, Any]:
    """What determines a set of samples besides the denoiser: every sampling field but the batch size
    (sample i has its own noise stream, so batching does not change it)."""
    settings = dataclasses.asdict(cfg)
    del settings["batch_size"]
    settings["steps"] = cfg.num_steps  # a default and the same number given explicitly are one setting
    for name in ("guidance", "label", "noise"):  # left out at their defaults, so that a config which does not use them keeps the key it had without them
        if settings[name] == SampleConfig.__dataclass_fields__[name].default:
            del settings[name]
    return settings

"""Denoiser networks of scalable size: U-Net, DiT-style transformer, MLP."""

from __future__ import annotations

from torch import nn

from memorize.config import ConfigError, ModelConfig
from memorize.models.common import (NULL_LABEL, check_patch_size, check_unet_levels, count_architecture_parameters,
                                     count_parameters)
from memorize.models.dit import DiT
from memorize.models.mlp import MLP
from memorize.models.unet import UNet


def build_network(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int = 0,
                  null_label: bool = False) -> nn.Module:
    """The network of ``cfg`` for items of ``shape`` ((C, H, W) images or (D,) vectors); ``num_classes`` > 0 makes it
    class-conditional, ``null_label`` adds the learned null label of classifier-free guidance (label -1)."""
    check_model(cfg, shape)
    if cfg.arch == "mlp":
        return MLP(shape[0], cfg.width, cfg.depth, cfg.dropout, num_classes, null_label)
    if cfg.arch == "unet":
        return UNet(shape[0], shape[1], cfg.channels, cfg.channel_mult, cfg.blocks_per_level,
                    cfg.attention_resolutions, cfg.dropout, num_classes, null_label)
    return DiT(shape[0], shape[1], cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.dropout, num_classes, null_label)


def check_model(cfg: ModelConfig, shape: tuple[int, ...]) -> None:
    """Refuse a model that does not fit items of ``shape``, before anything is built or written: an image
    network for vectors, an MLP for images, a U-Net with more levels than the image's side can be halved
    for or an attention resolution it never reaches (its levels have the side halved once per level after
    the first), or a DiT patch that does not divide the side."""
    if cfg.arch == "mlp":
        if len(shape) != 1:
            raise ConfigError(f"model.arch: 'mlp' takes vector data, but items have shape {shape}; "
                              f"use 'unet' or 'dit' for images")
        return
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"model.arch: {cfg.arch!r} takes square (C, H, W) images, but items have shape {shape}")
    if cfg.arch == "dit":
        check_patch_size(shape[1], cfg.patch_size)
    if cfg.arch == "unet":
        check_unet_levels(shape[1], cfg.channel_mult)
        reached = [shape[1] // 2 ** i for i in range(len(cfg.channel_mult))]
        never = [r for r in cfg.attention_resolutions if r not in reached]
        if never:
            raise ConfigError(f"model.attention_resolutions: {never} never reached: this U-Net's levels on "
                              f"{shape[1]}x{shape[2]} images have resolutions {reached}")


def model_name(cfg: ModelConfig, params: int) -> str:
    """A readable name of the architecture with its size, e.g. ``U-Net, 8 ch, 39k``."""
    size = f"{params / 1e6:.3g}M" if params >= 1e6 else f"{params / 1e3:.3g}k" if params >= 1e3 else str(params)
    if cfg.arch == "unet":
        extra = "" if cfg.blocks_per_level == 1 else f", {cfg.blocks_per_level} blocks"
        if cfg.attention_resolutions:
            extra += f", attention at {'/'.join(map(str, cfg.attention_resolutions))} px"
        return f"U-Net, {cfg.channels} ch{extra}, {size}"
    if cfg.arch == "dit":
        return f"DiT, width {cfg.width}, depth {cfg.depth}, patch {cfg.patch_size}, {size}"
    return f"MLP, width {cfg.width}, depth {cfg.depth}, {size}"


__all__ = ["NULL_LABEL", "DiT", "MLP", "UNet", "build_network", "count_architecture_parameters", "count_parameters", "model_name"]

"""Pieces shared by the networks: the noise/label embedding and parameter counting.

Every network has the signature ``net(x_in, c_noise, labels) -> F`` with
``c_noise`` of shape (B,) and ``labels`` (B,) int64 or None, and returns a
tensor shaped like ``x_in`` (see ``memorize.diffusion.precond``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from memorize.errors import ConfigError


def check_unet_levels(resolution: int, channel_mult: tuple[int, ...]) -> None:
    """A U-Net of ``len(channel_mult)`` levels halves the image side once per level after the first: the side
    must divide by ``2^(levels - 1)`` for the decoder's upsampled maps to meet their skip connections."""
    halvings = len(channel_mult) - 1
    if resolution % 2 ** halvings:
        raise ConfigError(f"model.channel_mult: {len(channel_mult)} levels halve the resolution {halvings} times, "
                          f"which {resolution}x{resolution} images do not allow")


def check_patch_size(resolution: int, patch_size: int) -> None:
    """A DiT cuts each image into ``patch_size`` x ``patch_size`` patches: it must divide the image side."""
    if resolution % patch_size:
        raise ConfigError(f"model.patch_size: {patch_size} does not divide the image size {resolution}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_architecture_parameters(model: nn.Module) -> int:
    """Trainable parameters without the class-label embedding, whose size follows the number of classes
    (with ``data.labels: unique``, the training-set size): what identifies a model across N."""
    label = sum(p.numel() for m in model.modules() if isinstance(m, ConditionEmbedding) and m.label is not None
                for p in m.label.parameters() if p.requires_grad)
    return count_parameters(model) - label


class SinusoidalEmbedding(nn.Module):
    """``[cos(f_j c), sin(f_j c)]`` with frequencies ``f_j`` geometric in [1, max_freq]
    (the transformer positional encoding of Vaswani et al. 2017 applied to c_noise). ``c`` of shape (B,) gives
    (B, dim); (B, K), K networks' noise levels (memorize.models.wide), gives (B, K * dim)."""

    def __init__(self, dim: int, max_freq: float = 1000.0):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), half)), persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        angles = c.float()[..., None] * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=-1).flatten(1)


NULL_LABEL = -1  # "no class": the unconditional denoiser D(x, none) of classifier-free guidance


class ConditionEmbedding(nn.Module):
    """Noise level (and optional class label) -> one conditioning vector of size ``dim``.

    With ``null_label`` the label table has one more row, the learned embedding of :data:`NULL_LABEL`
    (Ho & Salimans 2022: trained by dropping labels, ``train.label_dropout``)."""

    def __init__(self, dim: int, num_classes: int = 0, null_label: bool = False):
        super().__init__()
        self.noise = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.num_classes, self.null_label = num_classes, null_label and num_classes > 0
        self.label = nn.Embedding(num_classes + int(self.null_label), dim) if num_classes > 0 else None

    def forward(self, c_noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.noise(c_noise)
        if self.label is not None:
            if labels is None:
                raise ValueError("this model is class-conditional: pass labels")
            null = labels == NULL_LABEL
            if self.null_label:
                labels = torch.where(null, self.num_classes, labels)
            # (the check reads a device value, which a step captured in a CUDA graph cannot: memorize.graphs)
            elif not (labels.is_cuda and torch.cuda.is_current_stream_capturing()) and null.any():
                raise ValueError("this model was trained without label dropout, so it has no null label: "
                                 "train with train.label_dropout > 0 for classifier-free guidance")
            emb = emb + self.label(labels)
        return emb

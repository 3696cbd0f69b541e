"""K networks of one architecture run as one wide network whose every layer is grouped by network.

A convolution with ``groups=K`` over ``K * C`` channels is K independent convolutions of ``C``
channels, a ``GroupNorm`` of ``K * G`` groups over ``K * C`` channels is K group norms of ``G``
groups, and the same holds, with the small layers below, for linear maps, layer norms and label
tables. So K networks of the same shape become one network of K times the width: network k owns
channels ``[k C, (k + 1) C)`` of every activation, the wide layer's weight is the K networks'
weights stacked along its first dimension (``stacked.flatten(0, 1)``), and one forward and
backward pass computes all K at once in large kernels. ``torch.func.vmap`` over the stacked
weights turns convolutions into the same grouped ones, but pays for its batching rules around
every other operation (group norms, embeddings, attention, the skip concatenations): the wide
network's pass is the faster of the two (``python -m benchmarks.pack --step``). The standard
memory layout is kept: in channels-last the grouped convolutions gain what the group norms and the
conversions lose (docs/results.md, "The packed network's memory layout").

Inputs and outputs are wide too: images ``(B, K * C, H, W)``, noise levels and labels ``(B, K)``.
:func:`widen` builds the wide network from one of the K (its grouped layers hold no weights, only
shapes on the meta device: pass the stacked weights to ``torch.func.functional_call``); networks whose forward pass mixes channels
across positions in ways the grouping does not see (a DiT's token reshapes) are not widened.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from memorize.models.common import ConditionEmbedding, SinusoidalEmbedding
from memorize.models.mlp import MLP
from memorize.models.unet import AttentionBlock, ResBlock, UNet


class GroupedLinear(nn.Module):
    """K linear maps ``y_k = W_k x_k + b_k`` on ``(..., K * in)`` inputs; ``weight`` is ``(K * out, in)``."""

    def __init__(self, cells: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.cells = cells
        self.weight = nn.Parameter(torch.empty(cells * out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(cells * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.unflatten(0, (self.cells, -1))  # (K, out, in)
        y = torch.einsum("...ki,koi->...ko", x.unflatten(-1, (self.cells, -1)), weight).flatten(-2)
        # in the product's dtype, as nn.Linear adds it: under bf16 autocast a float32 bias would lift the
        # activations that follow to float32, where the K networks alone run them in bf16
        return y if self.bias is None else y + self.bias.to(y.dtype)


class GroupedLayerNorm(nn.Module):
    """K layer norms over the last dimension of ``(..., K * width)`` inputs (Ba et al. 2016), each with its
    own affine weight and bias: ``weight`` and ``bias`` are ``(K * width,)``."""

    def __init__(self, cells: int, norm: nn.LayerNorm):
        super().__init__()
        self.cells, self.shape, self.eps = cells, tuple(norm.normalized_shape), norm.eps
        self.weight = nn.Parameter(torch.ones(cells * self.shape[0])) if norm.weight is not None else None
        self.bias = nn.Parameter(torch.zeros(cells * self.shape[0])) if norm.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.unflatten(-1, (self.cells, -1)), self.shape, eps=self.eps).flatten(-2)
        if self.weight is not None:  # in the norm's output dtype, as nn.LayerNorm applies it (GroupedLinear)
            y = y * self.weight.to(y.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class GroupedEmbedding(nn.Module):
    """K lookup tables of ``rows`` rows: labels ``(B, K)`` -> ``(B, K * dim)``; ``weight`` is ``(K * rows, dim)``."""

    def __init__(self, cells: int, rows: int, dim: int):
        super().__init__()
        self.cells, self.rows = cells, rows
        self.weight = nn.Parameter(torch.empty(cells * rows, dim))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(self.cells, device=labels.device) * self.rows
        return F.embedding(labels + offsets, self.weight).flatten(-2)


# modules whose forward pass is right on wide inputs as it stands (or with ``cells`` set)
_WIDE_AS_IS = (UNet, ResBlock, AttentionBlock, MLP, ConditionEmbedding, SinusoidalEmbedding, nn.Sequential,
               nn.ModuleList, nn.ModuleDict, nn.SiLU, nn.Identity, nn.AvgPool2d, nn.Upsample)


def _wide_layer(layer: nn.Module, cells: int) -> nn.Module | None:
    """The grouped version of one parameterized layer (None: not a layer this module groups)."""
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(cells * layer.in_channels, cells * layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, cells * layer.groups, layer.bias is not None,
                         layer.padding_mode)
    if isinstance(layer, nn.GroupNorm):
        return nn.GroupNorm(cells * layer.num_groups, cells * layer.num_channels, layer.eps, layer.affine)
    if isinstance(layer, nn.Linear):
        return GroupedLinear(cells, layer.in_features, layer.out_features, layer.bias is not None)
    if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) == 1:
        return GroupedLayerNorm(cells, layer)
    if isinstance(layer, nn.Embedding) and layer.padding_idx is None and layer.max_norm is None:
        return GroupedEmbedding(cells, layer.num_embeddings, layer.embedding_dim)
    return None


def widen(net: nn.Module, cells: int) -> nn.Module | None:
    """A network computing ``cells`` copies of ``net``'s architecture at once (module docstring), with
    parameters named as ``net``'s and each of shape ``(cells * d0, ...)`` for ``net``'s ``(d0, ...)``;
    None where ``net`` holds a module this grouping does not cover (then train with vmap)."""
    wide = copy.deepcopy(net)
    for name, module in list(wide.named_modules()):
        if isinstance(module, nn.Dropout) and module.p == 0:
            continue
        if isinstance(module, _WIDE_AS_IS):
            if hasattr(module, "cells"):
                module.cells = cells
            continue
        with torch.device("meta"):  # shapes only: the stacked parameters replace the layer's own
            layer = _wide_layer(module, cells)
        if layer is None:
            return None
        parent, _, attr = name.rpartition(".")
        setattr(wide.get_submodule(parent), attr, layer)
    return wide


def wide_parameters(stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """K networks' parameters stacked as ``(K, d0, ...)`` as the wide network's ``(K * d0, ...)`` (a view of
    each where its K slices lie back to back, else a copy that gradients flow through)."""
    return {name: p.flatten(0, 1) for name, p in stacked.items()}

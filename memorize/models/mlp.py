"""A residual MLP denoiser for vector data (``gmm`` mixtures, flattened features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memorize.models.common import ConditionEmbedding


class MLP(nn.Module):
    """``depth`` residual blocks ``h + W2 SiLU(W1 LN(h) + emb)`` of ``width`` units."""

    def __init__(self, dim: int, width: int = 256, depth: int = 3, dropout: float = 0.0, num_classes: int = 0,
                 null_label: bool = False):
        super().__init__()
        self.embed = ConditionEmbedding(width, num_classes, null_label)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(width), "fc1": nn.Linear(width, width), "emb": nn.Linear(width, width),
                           "drop": nn.Dropout(dropout), "fc2": nn.Linear(width, width)})
            for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = F.silu(self.embed(c_noise, labels))
        h = self.inp(x)
        for blk in self.blocks:
            h = h + blk["fc2"](blk["drop"](F.silu(blk["fc1"](blk["norm"](h)) + blk["emb"](emb))))
        return self.out(h)

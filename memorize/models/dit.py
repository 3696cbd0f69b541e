"""A DiT-style transformer denoiser built from timm's ViT blocks.

Images are cut into ``patch_size`` patches (timm ``PatchEmbed``), given learned
position embeddings, and the noise level (plus optional label) enters as one
extra token: the "in-context conditioning" variant of Peebles & Xie 2023 (DiT,
section 3.2), which needs no changes to timm's ``Block``. A zero-initialised
linear head maps each patch token back to pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from memorize.models.common import ConditionEmbedding, check_patch_size


class DiT(nn.Module):
    def __init__(self, in_channels: int, resolution: int, patch_size: int = 2, width: int = 128, depth: int = 4,
                 heads: int = 4, dropout: float = 0.0, num_classes: int = 0, null_label: bool = False):
        super().__init__()
        check_patch_size(resolution, patch_size)
        self.in_channels, self.patch_size, self.grid = in_channels, patch_size, resolution // patch_size
        # imported here: timm (and torchvision under it) take seconds to import, which every command would pay
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        self.patch = PatchEmbed(resolution, patch_size, in_channels, width)
        self.pos = nn.Parameter(torch.zeros(1, self.grid**2 + 1, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.embed = ConditionEmbedding(width, num_classes, null_label)
        self.blocks = nn.Sequential(*[Block(width, heads, qkv_bias=True, proj_drop=dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, patch_size**2 * in_channels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.embed(c_noise, labels)[:, None]
        tokens = torch.cat([cond, self.patch(x)], dim=1) + self.pos
        tokens = self.norm(self.blocks(tokens))[:, 1:]
        b, p, g, c = x.shape[0], self.patch_size, self.grid, self.in_channels
        patches = self.head(tokens).reshape(b, g, g, p, p, c)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

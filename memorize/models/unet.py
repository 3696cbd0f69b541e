"""A DDPM-style U-Net whose size is set by a few knobs.

Layout (Ho et al. 2020; Song et al. 2021 DDPM++ without the extras): per level
``blocks_per_level`` residual blocks at ``channels * channel_mult[level]``
channels, self-attention at the resolutions listed in
``attention_resolutions``, 2x down/up-sampling between levels, skip connections
from every encoder block to the decoder. GroupNorm throughout, so each sample is
processed independently of the others in its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memorize.models.common import ConditionEmbedding, check_unet_levels


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) if channels >= 4 else 1, channels)


class ResBlock(nn.Module):
    """GN-SiLU-Conv, add the conditioning, GN-SiLU-Dropout-Conv, plus a (1x1) skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Linear(emb_dim, out_ch)
        self.conv2 = nn.Sequential(_norm(out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        nn.init.zeros_(self.conv2[-1].weight)
        nn.init.zeros_(self.conv2[-1].bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.emb(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.conv2(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual."""

    cells = 1  # K networks' channels side by side (memorize.models.wide): attention within each network's own

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, self.cells, 3, self.heads, c // (self.cells * self.heads), h * w)
        # (B, cells x heads, H W, d): 4-D, the shape the fused SDPA kernels on CUDA take (5-D falls back to math),
        # and contiguous in d, as every fused kernel needs. On the CPU the strided views go in as they are: SDPA
        # takes them, and a copy would change its rounding (and every result trained on the CPU).
        q, k, v = (t.flatten(1, 2).transpose(-1, -2) for t in qkv.unbind(2))
        if x.device.type != "cpu":
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    cells = 1  # K networks' channels side by side (memorize.models.wide): skips joined within each network

    def __init__(self, in_channels: int, resolution: int, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2), blocks_per_level: int = 1,
                 attention_resolutions: tuple[int, ...] = (), dropout: float = 0.0, num_classes: int = 0,
                 null_label: bool = False):
        super().__init__()
        check_unet_levels(resolution, channel_mult)
        emb_dim = 4 * channels
        self.embed = ConditionEmbedding(emb_dim, num_classes, null_label)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [channels]
        ch, res = channels, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(blocks_per_level):
                self.down.append(self._stage(ch, channels * mult, emb_dim, dropout, res in attention_resolutions))
                ch = channels * mult
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.AvgPool2d(2))
                res //= 2
                skip_channels.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch), ResBlock(ch, ch, emb_dim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks_per_level + 1):
                self.up.append(self._stage(ch + skip_channels.pop(), channels * mult, emb_dim, dropout,
                                           res in attention_resolutions))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool) -> nn.ModuleList:
        stage = nn.ModuleList([ResBlock(in_ch, out_ch, emb_dim, dropout)])
        if attention:
            stage.append(AttentionBlock(out_ch))
        return stage

    @staticmethod
    def _run_stage(stage: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = stage[0](h, emb)
        return stage[1](h) if len(stage) > 1 else h

    def _join(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The decoder's input and its skip connection along the channels (each network's own, side by side)."""
        if self.cells == 1:
            return torch.cat([h, skip], dim=1)
        return torch.cat([h.unflatten(1, (self.cells, -1)), skip.unflatten(1, (self.cells, -1))], dim=2).flatten(1, 2)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(c_noise, labels)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, nn.AvgPool2d) else self._run_stage(layer, h, emb)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.Upsample):
                h = layer(h)
            else:
                h = self._run_stage(layer, self._join(h, skips.pop()), emb)
        return self.out(h)

"""Training-step benchmark: our U-Net against diffusers' UNet2DModel of about the same size.

Both take the same batch (CIFAR-shaped by default) and the same step: forward, MSE loss against a
fixed target, backward, AdamW. Reports images per second and the ratio (ours / diffusers; above 1
means ours is faster). diffusers is installed for this benchmark only (`pip install diffusers`);
without it the comparison row is skipped and says so.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import report
from memorize.config import ModelConfig
from memorize.models import build_network, count_parameters


def step_rate(model: torch.nn.Module, forward, batch: torch.Tensor, steps: int, warmup: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn_like(batch)
    noise_level = torch.rand(len(batch))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = (forward(batch, noise_level) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(batch) / (time.perf_counter() - start)


def diffusers_unet(channels: int, resolution: int, in_ch: int):
    from diffusers import UNet2DModel

    # DDPM's CIFAR layout at our widths: 2 blocks per level, attention at 16x16, as in our model below.
    return UNet2DModel(sample_size=resolution, in_channels=in_ch, out_channels=in_ch, layers_per_block=2,
                       block_out_channels=(channels, channels * 2, channels * 2),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def run(batch_size: int, resolution: int, channels: int, steps: int) -> list[dict]:
    torch.manual_seed(0)
    batch = torch.randn(batch_size, 3, resolution, resolution)
    ours = build_network(ModelConfig(channels=channels, channel_mult=(1, 2, 2), blocks_per_level=2,
                                     attention_resolutions=(resolution // 2,)), (3, resolution, resolution))
    rows = []
    ours_rate = step_rate(ours, lambda x, c: ours(x, c, None), batch, steps)
    rows.append({"model": "memorize UNet", "params": count_parameters(ours), "batch": batch_size,
                 "images_per_s": ours_rate, "x_diffusers": float("nan")})
    try:
        theirs = diffusers_unet(channels, resolution, 3)
    except ImportError:
        print("diffusers is not installed: `pip install diffusers` for the comparison row")
        return rows
    theirs_rate = step_rate(theirs, lambda x, c: theirs(x, c * 999).sample, batch, steps)
    rows.append({"model": "diffusers UNet2DModel", "params": count_parameters(theirs), "batch": batch_size,
                 "images_per_s": theirs_rate, "x_diffusers": 1.0})
    rows[0]["x_diffusers"] = ours_rate / theirs_rate
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    rows = run(args.batch_size, args.resolution, args.channels, args.steps)
    return report("training", rows)


if __name__ == "__main__":
    main()

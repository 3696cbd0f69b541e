"""Training-step benchmark: our U-Net against diffusers' UNet2DModel of about the same size.

Both take the same batch (CIFAR-shaped by default) and the same step: forward, MSE loss against a
fixed target, backward, AdamW. Reports images per second and the ratio (ours / diffusers; above 1
means ours is faster). diffusers is installed for this benchmark only (`pip install diffusers`);
without it the comparison row is skipped and says so.

``--device cuda`` runs both on the GPU in three settings: float32, bf16 autocast (what
``train.amp`` does), and bf16 autocast with ``torch.compile``; each ratio compares the two models
in the same setting. The compile row also reports the time its warm-up steps took (compilation).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import add_device_argument, report, result_name
from memorize.config import ModelConfig
from memorize.models import build_network, count_parameters


def step_rate(model: torch.nn.Module, forward, batch: torch.Tensor, steps: int, warmup: int = 2,
              amp: bool = False) -> tuple[float, float]:
    """Images per second over ``steps`` timed steps, and the seconds the ``warmup`` steps took."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn_like(batch)
    noise_level = torch.rand(len(batch), device=batch.device)
    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward(batch, noise_level)
        loss = (out.float() - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return steps * len(batch) / (time.perf_counter() - start), start - t0


def diffusers_unet(channels: int, resolution: int, in_ch: int = 3):
    from diffusers import UNet2DModel

    # DDPM's CIFAR layout at our widths: 2 blocks per level, attention at 16x16, as in our model below.
    return UNet2DModel(sample_size=resolution, in_channels=in_ch, out_channels=in_ch, layers_per_block=2,
                       block_out_channels=(channels, channels * 2, channels * 2),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def our_unet(channels: int, resolution: int) -> torch.nn.Module:
    return build_network(ModelConfig(channels=channels, channel_mult=(1, 2, 2), blocks_per_level=2,
                                     attention_resolutions=(resolution // 2,)), (3, resolution, resolution))


def run_gpu(batch_size: int, resolution: int, channels: int, steps: int, device: str = "cuda") -> list[dict]:
    """Ours vs diffusers in float32, bf16 autocast, and bf16 autocast + torch.compile, on ``device``."""
    torch.manual_seed(0)
    batch = torch.randn(batch_size, 3, resolution, resolution, device=device)
    rows = []
    for setting, amp, compiled in (("float32", False, False), ("bf16 autocast", True, False),
                                   ("bf16 autocast + torch.compile", True, True)):
        rates = {}
        for name, build, call in (("memorize UNet", our_unet, lambda m, x, c: m(x, c, None)),
                                  ("diffusers UNet2DModel", diffusers_unet, lambda m, x, c: m(x, c * 999).sample)):
            try:
                model = build(channels, resolution).to(device)
            except ImportError:
                print("diffusers is not installed: `pip install diffusers` for the comparison rows")
                continue
            net = torch.compile(model) if compiled else model
            rate, warmup_seconds = step_rate(model, lambda x, c: call(net, x, c), batch, steps, warmup=3, amp=amp)
            rates[name] = rate
            rows.append({"model": name, "setting": setting, "params": count_parameters(model), "batch": batch_size,
                         "images_per_s": rate, "x_diffusers": float("nan"), "warmup_seconds": warmup_seconds})
        if len(rates) == 2:
            rows[-2]["x_diffusers"] = rates["memorize UNet"] / rates["diffusers UNet2DModel"]
            rows[-1]["x_diffusers"] = 1.0
    return rows


def run(batch_size: int, resolution: int, channels: int, steps: int) -> list[dict]:
    torch.manual_seed(0)
    batch = torch.randn(batch_size, 3, resolution, resolution)
    ours = our_unet(channels, resolution)
    rows = []
    ours_rate, _ = step_rate(ours, lambda x, c: ours(x, c, None), batch, steps)
    rows.append({"model": "memorize UNet", "params": count_parameters(ours), "batch": batch_size,
                 "images_per_s": ours_rate, "x_diffusers": float("nan")})
    try:
        theirs = diffusers_unet(channels, resolution, 3)
    except ImportError:
        print("diffusers is not installed: `pip install diffusers` for the comparison row")
        return rows
    theirs_rate, _ = step_rate(theirs, lambda x, c: theirs(x, c * 999).sample, batch, steps)
    rows.append({"model": "diffusers UNet2DModel", "params": count_parameters(theirs), "batch": batch_size,
                 "images_per_s": theirs_rate, "x_diffusers": 1.0})
    rows[0]["x_diffusers"] = ours_rate / theirs_rate
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--batch-size", type=int, help="default: 32 on the CPU, 256 on a GPU")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--steps", type=int, help="timed steps; default: 10 on the CPU, 50 on a GPU")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        rows = run_gpu(args.batch_size or 256, args.resolution, args.channels, args.steps or 50, args.device)
        return report(result_name("training", args.device), rows)
    rows = run(args.batch_size or 32, args.resolution, args.channels, args.steps or 10)
    return report("training", rows)


if __name__ == "__main__":
    main()

from __future__ import annotations

import pytest
import torch

from memorize.config import CellConfig, from_dict

# A cell small enough to train in a few seconds on the CPU.
TINY_CELL = {
    "data": {"name": "digits", "n_train": 32, "n_heldout": 100},
    "model": {"arch": "unet", "channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
    "train": {"steps": 30, "batch_size": 16, "checkpoint_every": 10, "log_every": 5, "eval_every": 10,
              "warmup_steps": 5},
    "sample": {"num": 16, "steps": 6, "batch_size": 8},
}


def trained_tiny_cell(root, steps: int = 10, n_heldout: int = 100, num: int = 16, denoiser: str = "trained"):
    """TINY_CELL trained for ``steps`` at ``root``, with ``num`` samples of ``denoiser`` (named after it)."""
    import dataclasses
    import json

    from memorize.generate import sample_cell
    from memorize.train import train

    cfg = from_dict(CellConfig, json.loads(json.dumps(TINY_CELL)))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_heldout=n_heldout),
                              train=dataclasses.replace(cfg.train, steps=steps),
                              sample=dataclasses.replace(cfg.sample, num=num))
    train(cfg, root, progress=False)
    sample_cell(root, cfg.sample, denoiser, progress=False)
    return root


@pytest.fixture
def tiny_cfg() -> CellConfig:
    return from_dict(CellConfig, TINY_CELL)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def usr2():
    """Restore SIGUSR2's handler (SLURM's time-limit signal under submitit) after the test."""
    import signal

    previous = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, previous)

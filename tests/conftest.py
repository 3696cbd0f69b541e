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


@pytest.fixture
def tiny_cfg() -> CellConfig:
    return from_dict(CellConfig, TINY_CELL)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

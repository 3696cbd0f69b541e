"""Descriptors of a network embedder computed once per process, against computing them at every use.

One digits cell (8-channel U-Net, ``--n-train`` images, ``--steps`` steps) evaluated as a sweep does with
a network embedder for the copy-detection criterion (timm's ``test_resnet`` at random weights from a
local file: 160x160 inputs; a stand-in for SSCD, which is larger still), ``score.checkpoints`` on and the
comparison with the empirical denoiser: the final evaluation and every scored checkpoint embed the cell's
training and held-out images again (scoring, then calibrating the comparison's threshold). Run twice in
one process on the same trained cell, once with the descriptor memo of ``memorize.metrics.embedders``
switched off, once on; reports the images passed through the network and the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import torch

import memorize.metrics.embedders as embedders
from benchmarks.common import add_device_argument, report, result_name
from memorize.config import CellConfig, from_dict
from memorize.sweep.job import checkpoint_grid, run_cell
from memorize.sweep.spec import ScoreConfig
from memorize.train import train

CELL = {"data": {"name": "digits", "n_train": 64, "n_heldout": 197},
        "model": {"arch": "unet", "channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
        "train": {"steps": 200, "batch_size": 64, "warmup_steps": 20, "checkpoint_every": 100, "log_every": 50,
                  "eval_every": 100},
        "sample": {"num": 64, "batch_size": 64, "steps": 10}}


def evaluate(root: Path, cfg: CellConfig, score: ScoreConfig, memo: bool) -> dict:
    """Wall time and images embedded by one evaluation of the trained cell at ``root`` (outputs cleared first)."""
    for name in ("evals", "scores", "samples", "compare"):
        shutil.rmtree(root / name, ignore_errors=True)
    embedders._DESCRIPTORS.clear()
    counted = []
    real_preprocess, real_remember = embedders.Embedder.preprocess, embedders._remember

    def preprocess(self, images):
        counted.append(len(images))
        return real_preprocess(self, images)

    embedders.Embedder.preprocess = preprocess
    if not memo:
        embedders._remember = lambda key, features: None
    try:
        start = time.perf_counter()
        run_cell(root, [cfg], score)
        seconds = time.perf_counter() - start
    finally:
        embedders.Embedder.preprocess, embedders._remember = real_preprocess, real_remember
    return {"memo": "on" if memo else "off", "images embedded": sum(counted), "seconds": seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import timm

    base = from_dict(CellConfig, CELL)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, n_train=args.n_train),
                              train=dataclasses.replace(base.train, steps=args.steps, device=args.device))
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "test_resnet.pth"
        torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), weights)
        score = ScoreConfig(embedder=f"timm:test_resnet:{weights}", features="pixel", checkpoints=True,
                            checkpoint_samples=32)
        root = Path(tmp) / "cell"
        train(cfg, root, progress=False, keep_steps=tuple(checkpoint_grid(score, args.steps)))
        rows = [evaluate(root, cfg, score, memo) for memo in (False, True)]
    for row in rows:
        row["x off"] = rows[0]["seconds"] / row["seconds"]
    return report(result_name("descriptors", args.device), rows, f"one digits cell, N = {args.n_train}, {args.steps} steps, checkpoints "
                  f"scored, compared; embedder timm test_resnet (random weights, 160x160)")


if __name__ == "__main__":
    main()

"""One sweep cell as a job: train -> sample -> score -> compare -> summary.json.

Every step resumes from or reuses what is on disk (training from its last checkpoint,
samples and scores when their settings match), so a job killed anywhere and run again
finishes with the same results and never redoes finished work. ``summary.json`` is written
last, atomically: its presence (with the current score settings) marks the cell done.

:class:`CellJob` is the Submitit callable. It is ``Checkpointable``, so SLURM timeouts and
preemptions requeue it; the requeued job holds only the cell's directory and configs and
resumes from the files (DESIGN.md: never from state in the pickled object). A file lock
in the cell directory keeps two processes from working on one cell.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import submitit

from memorize.cell import CellPaths
from memorize.config import CellConfig, from_dict, to_dict
from memorize.io import atomic_write_json, atomic_write_text

SUMMARY = "summary.json"
ERROR = "error.txt"
LOCK = ".lock"


class CellBusy(RuntimeError):
    """Another process holds the cell's lock."""


@contextmanager
def cell_lock(root: Path) -> Iterator[None]:
    """Exclusive, non-blocking ``flock`` on ``root/.lock``; released when the process ends, however it ends."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CellBusy(f"{root} is being worked on by another process") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '')}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_locked(root: Path) -> bool:
    """Whether a live process holds the cell's lock."""
    lock = root / LOCK
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def read_summary(root: Path) -> dict | None:
    import json

    path = Path(root) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def is_done(root: Path, score: dict) -> bool:
    summary = read_summary(root)
    return summary is not None and summary.get("score_settings") == score


def model_name(cfg: CellConfig) -> str:
    m = cfg.model
    if m.arch == "unet":
        return f"unet-c{m.channels}-m{'x'.join(map(str, m.channel_mult))}-b{m.blocks_per_level}"
    if m.arch == "dit":
        return f"dit-p{m.patch_size}-w{m.width}-d{m.depth}"
    return f"mlp-w{m.width}-d{m.depth}"


def score_checkpoints(root: Path, cfg: CellConfig, score: Any, progress: bool) -> list[dict]:
    """Memorization ratio (nearest-neighbour criterion) of every kept checkpoint: the training-time view."""
    import numpy as np

    from memorize.cell import load_cell_data, load_trained_denoiser
    from memorize.metrics import memorization_ratio, nn_ratio
    from memorize.sampling import generate, sample_seeds

    paths = CellPaths(root)
    data = load_cell_data(cfg, paths)
    sample_cfg = dataclasses.replace(cfg.sample, num=score.checkpoint_samples)
    seeds = sample_seeds(sample_cfg.seed, np.arange(sample_cfg.num))
    rows = []
    for ckpt in sorted(paths.checkpoints.glob("step-*.pt")):
        denoiser, state = load_trained_denoiser(root, checkpoint=ckpt)
        samples = generate(denoiser, tuple(data.train.shape[1:]), seeds, sample_cfg, progress=False)
        r = memorization_ratio(nn_ratio(samples, data.train, score.ratio).memorized)
        rows.append({"step": state["step"], "mem_nn": r["ratio"], "mem_nn_lo": r["lo"], "mem_nn_hi": r["hi"]})
    return rows


def run_cell(root: str | Path, cfg: CellConfig, score: Any, cell_id: str = "", progress: bool = False) -> dict:
    """Run (or finish) the cell at ``root``; returns its summary."""
    import pandas as pd

    from memorize.compare import compare_cell
    from memorize.generate import sample_cell
    from memorize.metrics.score import score_cell
    from memorize.train import train

    root = Path(root)
    score_settings = dataclasses.asdict(score)
    if is_done(root, score_settings):
        return read_summary(root)
    with cell_lock(root):
        (root / ERROR).unlink(missing_ok=True)
        start = time.perf_counter()
        timings: dict[str, float] = {}

        def timed(stage: str, fn, *args, **kwargs):
            t = time.perf_counter()
            result = fn(*args, **kwargs)
            timings[stage] = time.perf_counter() - t
            return result

        trained = timed("train", train, cfg, root, progress=progress)
        timed("sample", sample_cell, root, cfg.sample, "trained", progress=progress)
        scores = timed("score", score_cell, root, "trained", score.embedder, score.ratio, score.threshold,
                       progress=progress)
        compared = {}
        if score.compare and cfg.data.labels == "none":  # the closed-form references are unconditional
            compared = timed("compare", compare_cell, root, "trained", score.embedder, score.threshold,
                             progress=progress)
        if score.checkpoints:
            rows = score_checkpoints(root, cfg, score, progress)
            atomic_write_text(root / "checkpoint_scores.csv", pd.DataFrame(rows).to_csv(index=False))
        nn, cos = scores["nn"], scores["cos"]
        summary = {
            "cell": cell_id, "dataset": cfg.data.name, "n_train": cfg.data.n_train, "model": model_name(cfg),
            "arch": cfg.model.arch, "params": trained["params"], "seed": cfg.seed, "steps": trained["steps"],
            "train_loss": trained["train_loss"], "heldout_loss": trained["heldout_loss"],
            "train_fixed_loss": trained["train_fixed_loss"],
            "mem_nn": nn["ratio"], "mem_nn_lo": nn["lo"], "mem_nn_hi": nn["hi"],
            "mem_cos": cos["ratio"], "mem_cos_lo": cos["lo"], "mem_cos_hi": cos["hi"],
            "n_samples": scores["n_samples"], "embedder": score.embedder, "ratio": score.ratio,
            "threshold": score.threshold,
            "agreement_empirical": compared.get("agreement", float("nan")),
            "reproducibility_empirical": compared.get("reproducibility", {}).get("score", float("nan")),
            "mem_nn_empirical": compared.get("mem_nn_empirical", float("nan")),
            "search_backend": nn["backend"], "train_seconds": trained["seconds"],
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "total_seconds": round(time.perf_counter() - start, 2),
            "score_settings": score_settings, "config": to_dict(cfg),
        }
        atomic_write_json(root / SUMMARY, summary)
        return summary


class CellJob(submitit.helpers.Checkpointable):
    """Submitit callable for one cell; holds only plain data so it pickles small and resumes from disk."""

    def __init__(self, root: str, config: dict, score: dict, cell_id: str):
        self.root, self.config, self.score, self.cell_id = str(root), config, score, cell_id

    def __call__(self) -> dict:
        import torch

        from memorize.sweep.spec import ScoreConfig

        previous_threads = torch.get_num_threads()
        threads = os.environ.get("SLURM_CPUS_PER_TASK")  # use the CPUs SLURM gave the task, no more
        if threads:
            torch.set_num_threads(int(threads))
        root = Path(self.root)
        try:
            return run_cell(root, from_dict(CellConfig, self.config), from_dict(ScoreConfig, self.score), self.cell_id)
        except CellBusy:
            raise
        except Exception:
            atomic_write_text(root / ERROR, traceback.format_exc())
            raise
        finally:  # the debug executor runs cells in the caller's process: leave its thread count as it was
            torch.set_num_threads(previous_threads)

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Requeue a fresh job over the same directory: all progress lives in the cell's files.
        return submitit.helpers.DelayedSubmission(CellJob(self.root, self.config, self.score, self.cell_id))

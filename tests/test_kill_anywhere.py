"""Kill anywhere: a one-cell sweep (training, checkpoint rotation, sampling, scoring, compare, collect), and a
pack of two cells, are SIGKILLed at seeded random moments of their life and re-run; every resumed run must
end with the results of an uninterrupted one (bit-exact for a cell alone; within the pack tests' tolerance
for a pack), with no temporary file or held lock left. Four
moments run in the default suite; ``-m slow`` runs 50 of the single cell and 20 of the pack."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from memorize.sweep.layout import is_locked
from tests.conftest import write_spec

# Columns that differ between runs by nature: timings, threads, code and where the results are.
VOLATILE = {"seconds", "threads", "code", "cell", "eval", "compare_dir", "requeues", "search_backend"}


def _spec(tmp_path, n_train=(16,)):
    return write_spec(tmp_path / "s.yaml", grid={"data.n_train": list(n_train), "seed": [0]},
                      base={"data": {"name": "digits", "n_heldout": 100},
                            "model": {"arch": "unet", "channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
                            "train": {"steps": 60, "batch_size": 16, "checkpoint_every": 10, "log_every": 5,
                                      "eval_every": 20, "warmup_steps": 5},
                            "sample": {"num": 16, "steps": 6, "batch_size": 8}})


def _run(spec, out, kill_after: float | None = None, pack: int = 1) -> int | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "memorize.cli", "sweep", "run", str(spec), "--out", str(out), "--quiet", "--no-plot",
           "--threads", "1", "--pack", str(pack)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    if kill_after is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        return 0
    try:
        proc.wait(timeout=kill_after)
        return proc.returncode  # finished before the moment came
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its cell job: nothing gets to clean up
        proc.wait()
        return None


def _final_state(out):
    table = pd.read_csv(out / "results.csv").sort_values("n_train").reset_index(drop=True)
    table = table[[c for c in table.columns if c not in VOLATILE]]
    cells = sorted((out / "cells").iterdir())
    checkpoints = [torch.load(sorted((c / "checkpoints").glob("step-*.pt"))[-1], weights_only=False) for c in cells]
    samples = {f"{c.name}/{path.name}": np.load(path)["samples"] for c in cells
               for path in sorted((c / "samples").glob("*.npz"))}
    return table, checkpoints, samples, cells


def _reference(root, pack: int):
    spec = _spec(root, (16, 24) if pack > 1 else (16,))
    start = time.perf_counter()
    _run(spec, root / "sweep", pack=pack)
    return spec, _final_state(root / "sweep"), time.perf_counter() - start, pack


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("uninterrupted"), 1)


@pytest.fixture(scope="module")
def packed_reference(tmp_path_factory):
    """Two cells trained together (--pack 2): a kill stops both; the re-run packs them again."""
    return _reference(tmp_path_factory.mktemp("uninterrupted-packed"), 2)


def _kill_and_resume(reference, tmp_path, fraction: float):
    """Kill, re-run, compare. A single cell must match bit for bit. A pack matches within the pack tests'
    tolerance: where a kill leaves one cell of the pack finished, the re-run trains the other alone, and a
    cell alone adds its grouped convolutions in another order than the pack."""
    spec, (table, checkpoints, samples, _), seconds, pack = reference
    out = tmp_path / "sweep"
    _run(spec, out, kill_after=max(0.3, fraction * seconds), pack=pack)
    _run(spec, out, pack=pack)
    got_table, got_checkpoints, got_samples, cells = _final_state(out)
    exact = pack == 1
    pd.testing.assert_frame_equal(got_table, table, **({} if exact else {"rtol": 1e-4, "atol": 1e-5}))
    for got, want in zip(got_checkpoints, checkpoints, strict=True):
        for key in ("model", "ema"):
            for name, tensor in want[key].items():
                if exact:
                    assert torch.equal(got[key][name], tensor), (key, name)
                else:
                    torch.testing.assert_close(got[key][name], tensor, rtol=0, atol=1e-5)
    assert got_samples.keys() == samples.keys() and len(samples) >= 2  # the trained and empirical sets
    for name in samples:
        assert np.array_equal(got_samples[name], samples[name]) if exact else \
            np.allclose(got_samples[name], samples[name], rtol=0, atol=1e-4), name
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert not any(is_locked(c) for c in cells)


@pytest.mark.parametrize("fraction", np.random.default_rng(0).uniform(0.05, 1.0, size=3).round(3).tolist())
def test_a_sweep_killed_at_a_random_moment_resumes_to_the_same_results(reference, tmp_path, fraction):
    _kill_and_resume(reference, tmp_path, fraction)


@pytest.mark.parametrize("fraction", np.random.default_rng(2).uniform(0.05, 1.0, size=1).round(3).tolist())
def test_a_packed_sweep_killed_at_a_random_moment_resumes_to_the_same_results(packed_reference, tmp_path, fraction):
    _kill_and_resume(packed_reference, tmp_path, fraction)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", np.random.default_rng(1).uniform(0.02, 1.0, size=50).round(3).tolist())
def test_fifty_kill_moments_resume_to_the_same_results(reference, tmp_path, fraction):
    _kill_and_resume(reference, tmp_path, fraction)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", np.random.default_rng(3).uniform(0.02, 1.0, size=20).round(3).tolist())
def test_twenty_kill_moments_of_a_pack_resume_to_the_same_results(packed_reference, tmp_path, fraction):
    _kill_and_resume(packed_reference, tmp_path, fraction)

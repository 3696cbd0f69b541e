from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from submitit.core.job_environment import SignalHandler
from torch.utils._python_dispatch import TorchDispatchMode

import memorize.train as train_module

from memorize.config import CellConfig, from_dict
from memorize.sweep.local import available_cores, usable_cpus

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


# A sweep of two tiny cells (N = 16, 32) that runs end to end in seconds.
TINY_SPEC = {
    "name": "tiny",
    "base": {
        "data": {"name": "digits", "n_heldout": 100},
        "model": {"channels": 8},
        "train": {"steps": 20, "batch_size": 16, "checkpoint_every": 10, "eval_every": 10, "log_every": 5,
                  "warmup_steps": 5},
        "sample": {"num": 16, "steps": 6, "batch_size": 16},
    },
    "grid": {"data.n_train": [16, 32], "seed": [0]},
    "score": {"compare": True, "features": "pixel"},  # the classifier features have tests of their own
}


def write_spec(path, spec=None, **changes):
    """``spec`` (default :data:`TINY_SPEC`) with top-level ``changes``, as YAML at ``path``."""
    spec = json.loads(json.dumps(spec or TINY_SPEC))
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


def count_training(monkeypatch):
    """Count the optimizer steps taken in this process (learning_rate is called once per step)."""
    import memorize.train as train_module

    steps = {"n": 0}
    real = train_module.learning_rate

    def counting(*args):
        steps["n"] += 1
        return real(*args)

    monkeypatch.setattr(train_module, "learning_rate", counting)
    return steps


def newest_write(folder: Path) -> tuple[int, int]:
    """(how many files, the newest modification time in ns) under ``folder``: it changes whenever a run there
    writes a file."""
    times = []
    for where, _, files in os.walk(folder):  # a folder or file replaced during the walk is passed over
        for name in files:
            try:
                times.append(os.stat(os.path.join(where, name)).st_mtime_ns)
            except FileNotFoundError:
                continue
    return len(times), max(times, default=0)


def wait_until(ready, proc: subprocess.Popen, watch: Path, stall: float = 300.0, poll: float = 0.05):
    """Poll ``ready()`` until it returns a true value, and return that value. Fail, with the process's stderr,
    where ``proc`` ends first, and where nothing under ``watch`` was written for ``stall`` seconds: a hang,
    told apart from a slow run (on CPUs shared with other jobs a run can take ten times as long). A hung
    process is killed, with its group where it leads one, so that it outlives no test."""
    started = changed = looked = time.monotonic()
    seen = newest_write(watch)
    while not (value := ready()):
        if proc.poll() is not None:
            stream = proc.stderr or proc.stdout  # stderr, or stdout where stderr goes to it
            err = stream.read() if stream else ""
            err = err.decode(errors="replace") if isinstance(err, bytes) else err
            pytest.fail(f"the process ended (exit status {proc.returncode}) before the awaited moment: {err[-3000:]}")
        if (now := time.monotonic()) - looked >= 1.0:  # the folder is walked once a second: hangs take minutes
            looked, state = now, newest_write(watch)
            if state != seen:
                seen, changed = state, now
            elif now - changed > stall:
                kill_run(proc)
                pytest.fail(f"nothing written under {watch} for {stall:.0f} s ({now - started:.0f} s in all): a hang")
        time.sleep(poll)
    return value


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, with its process group where it leads one (a sweep's driver and its cells), and reap it."""
    if os.getpgid(proc.pid) == proc.pid:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.wait()


@functools.cache
def slurm_missing() -> str | None:
    """Why the tests marked ``slurm`` cannot run here (None where a SLURM controller with a usable node answers)."""
    for command in ("sbatch", "srun", "sinfo", "squeue", "scancel"):
        if shutil.which(command) is None:
            return f"needs SLURM: {command} is not on PATH (CI starts a single-node SLURM with .ci/slurm.sh)"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "needs SLURM: sinfo did not answer within 15 s"
    if nodes.returncode != 0 or not any(s in nodes.stdout for s in ("idle", "mixed", "allocated")):
        return f"needs SLURM: no controller with a usable node answers (sinfo: {(nodes.stderr or nodes.stdout).strip()!r})"
    return None


def pytest_runtest_setup(item):
    """A test marked ``slurm`` is skipped, with the reason, where no SLURM answers."""
    if item.get_closest_marker("slurm") is not None and slurm_missing() is not None:
        pytest.skip(slurm_missing())


# Workers of `pytest -n auto` (pytest-xdist): at most this many, each ~1 GiB of memory.
MAX_WORKERS = 8


def cpu_share(cpus: list[int], index: int, workers: int) -> list[int]:
    """Worker ``index`` of ``workers``: every ``workers``-th CPU from its index on; with more workers than CPUs,
    one CPU, shared round the ring."""
    return cpus[index::workers] or [cpus[index % len(cpus)]]


def xdist_worker() -> tuple[int, int] | None:
    """(this worker's index, the number of workers) under pytest-xdist; None in a run of one process."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    return (int(worker.removeprefix("gw")), int(count)) if worker and count else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may use (as a local sweep counts them), at most MAX_WORKERS."""
    return min(available_cores(), MAX_WORKERS)


def pytest_configure(config):
    """The package's pytest plugin (:mod:`memorize.pytest_plugin`) registered where its entry point is not, a
    checkout on ``PYTHONPATH`` without an install (the GPU machines'). Under pytest-xdist each worker runs on
    its own share of the CPUs, with that many torch threads, and the processes its tests start inherit that
    share: workers that each used every core would spin against each other's threads (docs/development.md
    has the measurement)."""
    import memorize.pytest_plugin

    if not config.pluginmanager.is_registered(memorize.pytest_plugin):
        config.pluginmanager.register(memorize.pytest_plugin, "memorize")
    if (worker := xdist_worker()) is None:
        return
    share = cpu_share(usable_cpus(), *worker)
    if hasattr(os, "sched_setaffinity"):  # Linux; elsewhere the worker keeps to its thread count alone
        os.sched_setaffinity(0, share)
    torch.set_num_threads(len(share))


@pytest.fixture
def slurm_executor_offline(monkeypatch):
    """Submitit builds its SLURM executor only where ``srun`` is on PATH; what a test reads of it (its
    parameters, the sbatch text it would submit) needs no cluster."""
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))


@pytest.fixture
def tiny_cfg() -> CellConfig:
    return from_dict(CellConfig, TINY_CELL)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test leaves open are closed after it: pyplot keeps every figure until closed, and a worker
    runs many test files, so that they add up (matplotlib warns past 20)."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


@pytest.fixture
def usr2():
    """Restore SIGUSR2's handler (SLURM's time-limit signal under submitit) after the test."""
    import signal

    previous = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, previous)


def signal_at(monkeypatch, at_step: int, signum=signal.SIGUSR2):
    """Send ``signum`` to this process when the loop starts the step after ``at_step``."""
    real_lr = train_module.learning_rate

    def lr(base, warmup, step):
        if step == at_step:
            os.kill(os.getpid(), signum)
        return real_lr(base, warmup, step)

    monkeypatch.setattr(train_module, "learning_rate", lr)


class FakeSubmitit(SignalHandler):
    """Stands in for submitit's handler of the time-limit signal: records the call, then exits as submitit
    does after requeueing (or raises where requeues are used up)."""

    def __init__(self, used_up: bool = False):
        self.calls, self.used_up = [], used_up

    def checkpoint_and_try_requeue(self, signum, frame=None):
        self.calls.append(signum)
        if self.used_up:
            from submitit.core.utils import UncompletedJobError

            raise UncompletedJobError("Job not requeued because: timed-out too many times.")
        raise SystemExit(-1)


def brute_force(train: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Direct float64 formula: softmax over explicit squared distances."""
    t, q = train.reshape(len(train), -1).double(), x.reshape(len(x), -1).double()
    d2 = ((q[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=1)
    return (w @ t).reshape(x.shape)


def pack_variants(tiny_cfg):
    """Three cells of one architecture: different N, seed, budget, learning rate, weight decay, gradient clip,
    EMA decay and sigma_data."""
    t = tiny_cfg.train
    return [
        dataclasses.replace(tiny_cfg, train=dataclasses.replace(t, steps=30)),
        dataclasses.replace(tiny_cfg, seed=3, data=dataclasses.replace(tiny_cfg.data, n_train=16),
                            train=dataclasses.replace(t, steps=20, lr=5e-4, weight_decay=0.05, grad_clip=0.05)),
        dataclasses.replace(tiny_cfg, seed=1, data=dataclasses.replace(tiny_cfg.data, n_train=24),
                            diffusion=dataclasses.replace(tiny_cfg.diffusion, sigma_data="auto"),
                            train=dataclasses.replace(t, steps=25, checkpoint_every=7, grad_clip=None, ema_decay=0.9)),
    ]


def same_weights(a: dict, b: dict, atol: float) -> None:
    for key in ("model", "ema"):
        for name, tensor in b[key].items():
            if tensor.is_floating_point():
                torch.testing.assert_close(a[key][name], tensor, atol=atol, rtol=0, msg=f"{key}.{name}")
            else:
                assert torch.equal(a[key][name], tensor), f"{key}.{name}"
    for index, state in b["optimizer"]["state"].items():  # AdamW's moments and step count, parameter by parameter
        assert float(a["optimizer"]["state"][index]["step"]) == float(state["step"])
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a["optimizer"]["state"][index][moment], state[moment], atol=atol, rtol=0,
                                       msg=f"optimizer {index} {moment}")


HOST_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.masked_select.default, torch.ops.aten.equal.default)


def reads_on_host(func, args) -> bool:
    """Whether the operator ``func`` hands a tensor's value to the host (on a GPU, a wait for the device):
    ``.item()`` and ``float()``, ``int()``, ``bool()`` of a tensor, ``nonzero``, indexing by a boolean mask,
    ``masked_select``, ``torch.equal``. Not ``.tolist()`` or ``.cpu()``, which a CPU tensor answers without
    an operator."""
    masked = func is torch.ops.aten.index.Tensor and any(torch.is_tensor(i) and i.dtype == torch.bool
                                                          for i in args[1])
    return func in HOST_READS or masked


class CountReads(TorchDispatchMode):
    """Counts the operators that read a tensor's value on the host (:func:`reads_on_host`)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += reads_on_host(func, args)
        return func(*args, **(kwargs or {}))

"""SLURM: the executor of a sweep's job arrays, job states, waiting for and cancelling a sweep's jobs.

Status, waiting and cancelling ask SLURM once per refresh for all the sweep's jobs (one
``squeue``, one ``sacct`` for jobs that left the queue), from the job ids recorded in the sweep
directory (:func:`memorize.sweep.layout.read_jobs`).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError

from memorize.config import ConfigError
from memorize.sweep.layout import (ERROR, cell_dir, is_done, read_grid, read_jobs, record_cancelled, record_jobs,
                                   unfinished_cells)
from memorize.sweep.snapshot import setup_lines
from memorize.sweep.spec import SweepSpec

TERMINAL_SLURM_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                         "BOOT_FAIL", "DEADLINE", "ENDED"}
ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                       "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def _run(command: list[str]) -> str | None:
    """stdout of a SLURM command, or None where it fails or does not answer within 60 s. ``squeue -j``
    naming only jobs SLURM has forgotten fails with "Invalid job id": that is an empty answer."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return "" if "Invalid job id" in done.stderr else None
    return done.stdout


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each recorded job id (array tasks as ``JOB_TASK``), with one ``squeue`` call for
    the jobs in the queue and, for the others, one ``sacct`` call where accounting is on; ``ENDED``
    (left the queue, outcome unknown) where it is off, ``UNKNOWN`` where no SLURM answers."""
    job_ids = [j for j in dict.fromkeys(job_ids) if j]
    if not job_ids:
        return {}
    parents = ",".join(dict.fromkeys(j.split("_")[0] for j in job_ids))
    queued = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", parents])
    if queued is None:
        return dict.fromkeys(job_ids, "UNKNOWN")
    states = dict(line.split("|", 1) for line in queued.split() if "|" in line)
    gone = [j for j in job_ids if j not in states]
    ended = {}
    if gone:
        accounted = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j",
                          ",".join(dict.fromkeys(j.split("_")[0] for j in gone))]) or ""
        # sacct states may carry a reason: "CANCELLED by 0"
        ended = {job: state.split(" ")[0] for job, state in
                 (line.split("|", 1) for line in accounted.splitlines() if "|" in line)}
    return {j: states.get(j) or ended.get(j) or "ENDED" for j in job_ids}


def wait_for_slurm(out: Path, ids: list[str], timeout: float, poll: float = 5.0) -> dict:
    """Wait until every cell is done or its job ended, at most ``timeout`` seconds (never forever: a job that
    dies without a result is seen through its SLURM state). One status query per ``poll`` seconds."""
    jobs = read_jobs(out)
    deadline = time.time() + timeout
    open_ids = set(ids)
    keys = read_grid(out).groupby("cell")["eval"].apply(list).to_dict() if (out / "cells.csv").is_file() else {}
    while open_ids and time.time() < deadline:
        states = slurm_states([jobs.get(cid, "") for cid in open_ids])
        for cid in list(open_ids):
            root = cell_dir(out, cid)
            if all(is_done(root, k) for k in keys.get(cid, [])) or (root / ERROR).exists():
                open_ids.discard(cid)
            elif states.get(jobs.get(cid, ""), "UNKNOWN") in TERMINAL_SLURM_STATES - {"COMPLETED"}:
                open_ids.discard(cid)
        if open_ids:
            time.sleep(poll)
    failed = sum(1 for cid in ids if cid not in open_ids and not all(is_done(cell_dir(out, cid), k)
                                                                      for k in keys.get(cid, [])))
    return {"unfinished_after_wait": len(open_ids), "failed": failed}


def cancel_sweep(out: str | Path, wait_timeout: float = 120.0, poll: float = 1.0) -> dict:
    """Cancel the SLURM jobs (ids from ``DIR/jobs.json``) of the sweep's unfinished cells that are still in
    the queue, with one ``scancel``; finished cells and their files are left alone. Waits, at most
    ``wait_timeout`` seconds, until the cancelled jobs have left the queue, so that a following
    ``memorize sweep run`` finds their cells unlocked and resumes them from their last checkpoints."""
    out = Path(out)
    grid = read_grid(out)  # a directory that is no sweep is named as such
    jobs = read_jobs(out)
    if not jobs:
        raise FileNotFoundError(f"{out / 'jobs.json'}: no SLURM jobs recorded for this sweep "
                                f"(it was not launched with --executor slurm)")
    unfinished = unfinished_cells(out)
    mine = {cid: jobs[cid] for cid in unfinished if cid in jobs}
    states = slurm_states(list(mine.values()))
    if states and set(states.values()) == {"UNKNOWN"}:
        raise RuntimeError("no SLURM answers (squeue failed): nothing was cancelled")
    active = {cid: job for cid, job in mine.items() if states.get(job) in ACTIVE_SLURM_STATES}
    report = {"cells": len(grid["cell"].unique()), "unfinished": len(unfinished), "running": 0, "pending": 0,
              "cancelled": 0, "still_queued": 0}
    for job in active.values():
        kind = "running" if states[job] == "RUNNING" else "pending"
        report[kind] += 1
    if not active:
        return report
    ids = list(active.values())
    for start in range(0, len(ids), 1000):  # bounded command lines
        try:
            subprocess.run(["scancel", *ids[start:start + 1000]], check=True, capture_output=True, text=True,
                           timeout=120)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", None) or err
            raise RuntimeError(f"scancel failed: {str(detail).strip()}") from None
    report["cancelled"] = len(ids)
    record_cancelled(out, ids)
    deadline = time.time() + wait_timeout
    while True:
        left = [j for j, state in slurm_states(ids).items() if state in ACTIVE_SLURM_STATES]
        if not left or time.time() >= deadline:
            break
        time.sleep(poll)
    report["still_queued"] = len(left)
    return report


def queued_cells(out: Path, cells: list[str]) -> list[str]:
    """Those of ``cells`` whose recorded SLURM job (``DIR/jobs.json``) is still in the queue, pending,
    running or requeued: a launch leaves them to it rather than submitting them twice. One SLURM query;
    none where no SLURM answers."""
    jobs = read_jobs(out)
    mine = {cid: jobs[cid] for cid in cells if cid in jobs}
    states = slurm_states(list(mine.values()))
    return [cid for cid, job in mine.items() if states.get(job) in ACTIVE_SLURM_STATES]


def check_slurm_here() -> None:
    """Refuse a SLURM launch, before anything is written, on a machine that cannot submit (no ``sbatch``,
    or no ``srun``, which the jobs' scripts call and Submitit looks for)."""
    for command in ("sbatch", "srun"):
        if shutil.which(command) is None:
            raise ConfigError(f"--executor slurm: {command} is not on PATH here; launch from a machine of the "
                              f"cluster (a login node), or run the cells here with --executor local")


def slurm_executor(out: Path, spec: SweepSpec, code: dict | None = None) -> submitit.Executor:
    """A Submitit SLURM executor with the spec's resources (``slurm:``) and, with ``code`` (a
    :func:`memorize.sweep.snapshot.take_snapshot` record), jobs that import that snapshot. A job of
    several processes (:attr:`memorize.sweep.spec.SlurmConfig.processes`) is that many tasks on one node
    sharing the cell's CPUs, and a task that fails ends the others (``srun --kill-on-bad-exit``) rather
    than leaving them waiting for it."""
    s = spec.slurm
    executor = submitit.AutoExecutor(folder=out / "logs" / "%j", cluster="slurm", slurm_max_num_timeout=s.max_requeues)
    params = {"timeout_min": s.time_min, "slurm_array_parallelism": s.array_parallelism,
              "cpus_per_task": max(1, s.cpus_per_cell // s.processes), "mem_gb": s.mem_gb,
              "name": f"memorize-{spec.name}", "slurm_signal_delay_s": s.signal_delay_s}
    if s.processes > 1:
        params.update(tasks_per_node=s.processes, nodes=1, slurm_srun_args=["--kill-on-bad-exit=1"])
    if code is not None:
        params["slurm_setup"] = setup_lines(code["pythonpath"])
    if s.gpus_per_cell:
        params["gpus_per_node"] = s.gpus_per_cell
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[f"slurm_{key}"] = getattr(s, key)
    if s.extra:
        params["slurm_additional_parameters"] = dict(s.extra)
    executor.update_parameters(**params)
    return executor


class SubmissionError(RuntimeError):
    """sbatch refused a job array: its last line, and how many cells were submitted before it."""


def submit_slurm(executor: submitit.Executor, out: Path, units: list[list[str]], job: Callable[[list[str]], Any],
                 max_array_size: int) -> int:
    """Submit one job per unit (a cell, or a pack of cells) as job arrays of at most ``max_array_size``
    tasks, recording each array's ids in ``DIR/jobs.json`` as soon as it is submitted; returns the
    number of cells submitted. An array sbatch refuses is a :class:`SubmissionError` of one line."""
    submitted, total = 0, sum(map(len, units))
    for start in range(0, len(units), max_array_size):
        chunk = units[start:start + max_array_size]
        try:
            # Submitit prints sbatch's stderr before it raises: held back here, said once in the error
            with contextlib.redirect_stderr(io.StringIO()) as printed:
                with executor.batch():  # one job array; each task's function is the Checkpointable job itself
                    jobs = [executor.submit(job(unit)) for unit in chunk]
        except FailedJobError as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            raise SubmissionError(f"sbatch could not submit the jobs ({lines[-1] if lines else 'no reason given'}); "
                                  f"{submitted} of {total} cells were submitted before it ({out / 'jobs.json'}); "
                                  f"once sbatch works, the same command submits the others") from None
        sys.stderr.write(printed.getvalue())  # what else was said on the way (warnings)
        record_jobs(out, {cid: j.job_id for unit, j in zip(chunk, jobs) for cid in unit})
        submitted += sum(map(len, chunk))
    return submitted

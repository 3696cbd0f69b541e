"""Launching a sweep with Submitit, its status, and collecting its results.

Sweep directory::

    DIR/spec.yaml       the spec as last launched
    DIR/cells.csv       cell id and grid values of every cell of that spec
    DIR/cells/<id>/     one directory per cell (see memorize.cell and memorize.sweep.cell)
    DIR/jobs.json       SLURM job ids by cell id (status and collect re-attach from it)
    DIR/logs/           Submitit logs (put DIR on a filesystem the compute nodes share)
    DIR/results.csv     one row per finished cell (memorize sweep collect)

Executors: ``local`` runs cells in subprocesses on this machine, ``--parallel`` at a time, in
the foreground; ``debug`` runs them in this process (for a debugger); ``slurm`` submits a job
array (chunked below SLURM's MaxArraySize), records the job ids and returns unless ``wait``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import submitit
import torch
import yaml
from tqdm.auto import tqdm

from memorize.config import save_config, to_dict
from memorize.io import atomic_write_json, atomic_write_text
from memorize.sweep.cell import ERROR, CellJob, is_done, is_locked, read_summary
from memorize.sweep.spec import Cell, SweepSpec, check_data, expand

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # a local cell runs as long as it needs
TERMINAL_SLURM_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                         "BOOT_FAIL", "DEADLINE", "ENDED"}
RESULT_COLUMNS = ["dataset", "n_train", "model", "arch", "params", "seed", "steps", "train_loss", "heldout_loss",
                  "mem_nn", "mem_nn_lo", "mem_nn_hi", "mem_cos", "mem_cos_lo", "mem_cos_hi", "agreement_empirical",
                  "reproducibility_empirical", "mem_nn_empirical", "n_samples", "embedder", "ratio", "threshold",
                  "train_fixed_loss", "search_backend", "total_seconds", "cell"]


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.id


def prepare(spec: SweepSpec, out: Path) -> list[Cell]:
    """Validate every cell (before anything is launched), then write the spec and the cell index."""
    cells = expand(spec)
    check_data(cells)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "spec.yaml", yaml.safe_dump(to_dict(spec), sort_keys=False))
    index = pd.DataFrame([{"cell": c.id, **dict(c.point)} for c in cells])
    atomic_write_text(out / "cells.csv", index.to_csv(index=False))
    for cell in cells:
        path = cell_dir(out, cell) / "config.yaml"
        if not path.exists():
            save_config(cell.config, path)
    return cells


def _executor(kind: str, out: Path, spec: SweepSpec) -> submitit.Executor:
    executor = submitit.AutoExecutor(folder=out / "logs" / "%j", cluster=kind)
    if kind == "slurm":
        s = spec.slurm
        params = {"timeout_min": s.time_min, "slurm_array_parallelism": s.array_parallelism,
                  "cpus_per_task": s.cpus_per_cell, "mem_gb": s.mem_gb, "name": f"memorize-{spec.name}"}
        if s.gpus_per_cell:
            params["gpus_per_node"] = s.gpus_per_cell
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(s, key):
                params[f"slurm_{key}"] = getattr(s, key)
        if s.extra:
            params["slurm_additional_parameters"] = dict(s.extra)
        executor.update_parameters(**params)
    elif kind == "local":
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN,
                                   **local_gpu_parameters(os.environ, torch.cuda.device_count()))
    return executor


def local_gpu_parameters(environ: Mapping[str, str], device_count: int) -> dict[str, Any]:
    """Submitit parameters that give a local job the GPUs its caller sees.

    Submitit's local executor sets ``CUDA_VISIBLE_DEVICES`` to ``gpus_per_node`` devices
    (default none), which would hide the GPU from every cell. A caller's own non-empty
    ``CUDA_VISIBLE_DEVICES`` (indices, GPU UUIDs or MIG instances) is exported again, as is, by
    a setup line; without one, the job gets all ``device_count`` GPUs.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return {"gpus_per_node": device_count} if device_count else {}
    if not visible.strip():
        return {}
    return {"local_setup": [f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}"]}


def describe_submission(kind: str, spec: SweepSpec, n: int) -> str:
    if kind != "slurm":
        return f"{n} cells would run with the {kind} executor"
    s = spec.slurm
    arrays = -(-n // s.max_array_size) if n else 0
    return (f"{n} cells would go to SLURM as {arrays} job array(s) of at most {s.max_array_size} tasks, "
            f"{s.array_parallelism} at a time; each task: {s.gpus_per_cell} GPU, {s.cpus_per_cell} CPUs, "
            f"{s.mem_gb:g} GB, {s.time_min} min, partition={s.partition}, account={s.account}, qos={s.qos}, "
            f"constraint={s.constraint}, extra={s.extra}")


def run_sweep(spec: SweepSpec, out: str | Path, executor: str = "local", parallel: int = 1, dry_run: bool = False,
              wait: bool = False, wait_timeout: float = 24 * 3600, progress: bool = True) -> dict:
    """Launch the cells of ``spec`` that are not finished; returns counts by what happened."""
    out = Path(out)
    cells = prepare(spec, out) if not dry_run else expand(spec)
    if dry_run:
        check_data(cells)
    score = dataclasses.asdict(spec.score)
    todo = [c for c in cells if not is_done(cell_dir(out, c), score)]
    busy = [c for c in todo if is_locked(cell_dir(out, c))]
    todo = [c for c in todo if c not in busy]
    report = {"cells": len(cells), "done_before": len(cells) - len(todo) - len(busy), "running_elsewhere": len(busy),
              "launched": 0, "failed": 0}
    if dry_run:
        for c in cells:
            state = "done" if c not in todo and c not in busy else ("running" if c in busy else "to run")
            print(f"{c.id}  {state:8s}  {c.label}")
        print(describe_submission(executor, spec, len(todo)))
        return report
    if not todo:
        return report
    jobs_fn = lambda c: CellJob(str(cell_dir(out, c)), to_dict(c.config), score, c.id)  # noqa: E731
    ex = _executor(executor, out, spec)
    if executor == "slurm":
        record_path = out / "jobs.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        size = spec.slurm.max_array_size
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            with ex.batch():  # one job array; each task's function is the Checkpointable CellJob itself
                jobs = [ex.submit(jobs_fn(c)) for c in chunk]
            record.update({c.id: j.job_id for c, j in zip(chunk, jobs)})
            atomic_write_json(record_path, record)
        report["launched"] = len(todo)
        if wait:
            report.update(wait_for_slurm(out, [c.id for c in todo], wait_timeout))
        return report
    # local / debug: in the foreground, `parallel` cells at a time
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="cell", disable=not progress)
    pending, running = list(todo), []
    try:
        while pending or running:
            while pending and len(running) < max(1, parallel):
                cell = pending.pop(0)
                running.append((cell, ex.submit(jobs_fn(cell))))
                report["launched"] += 1
                if executor == "debug":
                    break
            for cell, job in list(running):
                if executor == "debug" or job.done():
                    running.remove((cell, job))
                    try:
                        job.result()
                    except Exception as err:  # the cell wrote error.txt; go on with the others
                        report["failed"] += 1
                        tqdm.write(f"cell {cell.id} ({cell.label}) failed: {str(err).strip().splitlines()[-1]}; "
                                   f"see {cell_dir(out, cell) / ERROR}")
                    bar.update(1)
            time.sleep(0.2 if running and executor != "debug" else 0)
    except KeyboardInterrupt:
        for _, job in running:
            job.cancel(check=False)
        raise
    finally:
        bar.close()
    return report


def _jobs(out: Path) -> dict[str, str]:
    path = out / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def slurm_state(out: Path, job_id: str) -> str:
    """State of a recorded SLURM job: from ``squeue`` while it is queued or running; after that from
    ``sacct`` (through submitit) where accounting is on, else ``ENDED`` (left the queue, outcome
    unknown). ``UNKNOWN`` where no SLURM answers. Every call is bounded by a timeout."""
    import subprocess

    try:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    if queued.returncode == 0 and queued.stdout.strip():
        return queued.stdout.split()[0]
    try:
        state = submitit.SlurmJob(folder=out / "logs" / "%j", job_id=job_id).state
    except Exception:  # accounting off, or the job is forgotten
        state = "UNKNOWN"
    return state if state not in ("UNKNOWN", "PENDING", "READY") else "ENDED"


def wait_for_slurm(out: Path, ids: list[str], timeout: float, poll: float = 5.0) -> dict:
    """Wait until every cell is done or its job ended, at most ``timeout`` seconds (never forever: a job that
    dies without a result is seen through its SLURM state)."""
    jobs = _jobs(out)
    deadline = time.time() + timeout
    open_ids = set(ids)
    while open_ids and time.time() < deadline:
        for cid in list(open_ids):
            root = out / "cells" / cid
            if read_summary(root) is not None or (root / ERROR).exists():
                open_ids.discard(cid)
            elif slurm_state(out, jobs.get(cid, "")).split(" ")[0] in TERMINAL_SLURM_STATES - {"COMPLETED"}:
                open_ids.discard(cid)
        if open_ids:
            time.sleep(poll)
    return {"unfinished_after_wait": len(open_ids)}


def sweep_status(out: str | Path) -> pd.DataFrame:
    """Per-cell state: done, running, failed (with the log to read), pending (with training progress)."""
    from memorize.cell import CellPaths

    out = Path(out)
    if not (out / "cells.csv").is_file():
        raise FileNotFoundError(f"{out} is not a sweep directory (no cells.csv): run `memorize sweep run` first")
    index = pd.read_csv(out / "cells.csv", dtype={"cell": str})
    jobs = _jobs(out)
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    score = spec.get("score", {})
    rows = []
    for _, row in index.iterrows():
        root = out / "cells" / row["cell"]
        job = jobs.get(row["cell"], "")
        detail = ""
        if is_done(root, score):
            state = "done"
            detail = f"mem_nn={read_summary(root)['mem_nn']:.3f}"
        elif is_locked(root):
            state = "running"
        elif (root / ERROR).exists():
            state = "failed"
            last = (root / ERROR).read_text().strip().splitlines()[-1:] or [""]
            log = out / "logs" / job / f"{job}_0_log.err" if job else root / ERROR
            detail = f"{last[0][:120]} (log: {log})"
        else:
            slurm = slurm_state(out, job) if job else ""
            state = "running" if slurm.startswith("RUNNING") else "pending"
            if slurm.split(" ")[0] in TERMINAL_SLURM_STATES:
                state = "failed"  # the job ended without a summary or an error report
                detail = f"job ended ({slurm}) without a result (log: {out / 'logs' / job})"
            ckpt = CellPaths(root).latest_checkpoint()
            detail = detail or (f"slurm {slurm}" if slurm else "")
            if ckpt is not None:
                detail += f" checkpoint {ckpt.stem}"
        rows.append({"cell": row["cell"], "state": state, "job": job, **{k: row[k] for k in index.columns[1:]},
                     "detail": detail.strip()})
    return pd.DataFrame(rows)


def collect(out: str | Path) -> pd.DataFrame:
    """``DIR/results.csv``: one row per finished cell of the current spec, grid values as extra columns."""
    out = Path(out)
    if not (out / "cells.csv").is_file():
        raise FileNotFoundError(f"{out} is not a sweep directory (no cells.csv): run `memorize sweep run` first")
    index = pd.read_csv(out / "cells.csv", dtype={"cell": str})
    rows = []
    for _, row in index.iterrows():
        summary = read_summary(out / "cells" / row["cell"])
        if summary is None:
            continue
        record = {k: summary.get(k) for k in RESULT_COLUMNS}
        for axis in index.columns[1:]:
            record.setdefault(axis, row[axis])
        rows.append(record)
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS + [c for c in index.columns[1:] if c not in RESULT_COLUMNS])
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    return table

"""Launching a sweep with Submitit, its status, and collecting its results.

Sweep directory::

    DIR/sweep.json      layout version of the directory
    DIR/spec.yaml       the spec as last launched
    DIR/cells.csv       one row per grid point of that spec: cell id, evaluation key, grid values
    DIR/cells/<id>/     one directory per cell (see memorize.cell and memorize.sweep.cell)
    DIR/jobs.json       SLURM job ids by cell id (status, collect and cancel re-attach from it)
    DIR/code/<hash>/    the memorize package as launched (SLURM; memorize.sweep.snapshot), DIR/code.json the latest
    DIR/logs/           Submitit logs (put DIR on a filesystem the compute nodes share)
    DIR/results.csv     one row per finished grid point of the current spec (memorize sweep collect)
    DIR/curves.csv      memorization over training steps, where the spec scores checkpoints

Executors: ``local`` runs cells in subprocesses on this machine, ``--parallel`` at a time, in
the foreground; ``debug`` runs them in this process (for a debugger); ``slurm`` submits a job
array (chunked below SLURM's MaxArraySize) that runs a snapshot of the code taken at launch,
records the job ids and returns unless ``wait``. Status, waiting and cancelling ask SLURM once
per refresh for all the sweep's jobs (one ``squeue``, one ``sacct`` for jobs that left the queue).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import submitit
import torch
import yaml
from tqdm.auto import tqdm

from memorize.cell import LAYOUT, OLD_LAYOUT
from memorize.config import CellConfig, ConfigError, to_dict
from memorize.io import atomic_write_json, atomic_write_text, check_directory
from memorize.sweep.cell import ERROR, CellJob, PackJob, is_done, is_locked, read_eval
from memorize.sweep.snapshot import setup_lines, take_snapshot
from memorize.sweep.spec import GridPoint, SweepSpec, check_data, expand

LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # a local cell runs as long as it needs
TERMINAL_SLURM_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                         "BOOT_FAIL", "DEADLINE", "ENDED"}
RESULT_COLUMNS = ["dataset", "n_train", "model", "arch", "params", "params_total", "seed", "step", "budget",
                  "stopped_early", "sigma_data", "running_loss", "train_loss", "heldout_loss", "mem_nn", "mem_nn_lo", "mem_nn_hi", "mem_cos", "mem_cos_lo",
                  "mem_cos_hi", "labels", "guidance", "mem_nn_class", "mem_nn_class_lo", "mem_nn_class_hi", "agreement_empirical", "reproducibility_empirical", "mem_nn_empirical", "n_samples",
                  "sampler", "sample_steps", "embedder", "ratio", "threshold", "threshold_cos", "fpr_nn", "fpr_cos",
                  "fid", "kid", "precision", "precision_lo", "precision_hi", "recall", "recall_lo", "recall_hi",
                  "features", "consistency", "consistency_lo", "consistency_hi", "twin_cell", "search_backend", "threads", "code", "requeues", "cell", "eval"]
# curves.csv: a result record per scored checkpoint (its own evaluation, ``step_eval``), tagged with the grid
# point it belongs to (cell, eval, budget) and its grid values; the comparisons run at the budget only.
CURVE_COLUMNS = [c for c in RESULT_COLUMNS if c not in (
    "model", "params", "n_train", "seed", "cell", "eval", "budget", "stopped_early", "agreement_empirical", "reproducibility_empirical",
    "mem_nn_empirical", "consistency", "consistency_lo", "consistency_hi", "twin_cell")]


def cell_dir(out: Path, point: GridPoint | str) -> Path:
    return out / "cells" / (point if isinstance(point, str) else point.cell)


def check_layout(out: Path) -> None:
    """Refuse a sweep directory written by an older layout (its cell ids mean something else)."""
    marker = out / "sweep.json"
    if marker.is_file():
        version = json.loads(marker.read_text()).get("layout")
        if version != LAYOUT:
            raise ConfigError(f"{out}: sweep layout {version!r}, this memorize reads {LAYOUT}")
    elif (out / "cells.csv").is_file():
        raise ConfigError(f"sweep directory {out} {OLD_LAYOUT}")


def prepare(spec: SweepSpec, out: Path) -> list[GridPoint]:
    """Validate every grid point (before anything is launched), then write the spec and the grid index."""
    check_directory(out, "--out")
    check_layout(out)
    points = expand(spec)
    check_data(points, spec.score.consistency)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep.json", {"layout": LAYOUT})
    atomic_write_text(out / "spec.yaml", yaml.safe_dump(to_dict(spec), sort_keys=False))
    index = pd.DataFrame([{"cell": p.cell, "eval": p.key, **dict(p.point)} for p in points])
    atomic_write_text(out / "cells.csv", index.to_csv(index=False))
    return points


def by_cell(points: list[GridPoint]) -> dict[str, list[GridPoint]]:
    """Grid points grouped by the cell they train (one job per cell)."""
    groups: dict[str, list[GridPoint]] = {}
    for p in points:
        groups.setdefault(p.cell, []).append(p)
    return groups


def _executor(kind: str, out: Path, spec: SweepSpec, code: dict | None = None) -> submitit.Executor:
    """A submitit executor for ``kind``; on SLURM with the spec's resources and, with ``code`` (a
    :func:`memorize.sweep.snapshot.take_snapshot` record), jobs that import that snapshot."""
    if kind == "slurm":
        s = spec.slurm
        executor = submitit.AutoExecutor(folder=out / "logs" / "%j", cluster=kind, slurm_max_num_timeout=s.max_requeues)
        params = {"timeout_min": s.time_min, "slurm_array_parallelism": s.array_parallelism,
                  "cpus_per_task": s.cpus_per_cell, "mem_gb": s.mem_gb, "name": f"memorize-{spec.name}",
                  "slurm_signal_delay_s": s.signal_delay_s}
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
    executor = submitit.AutoExecutor(folder=out / "logs" / "%j", cluster=kind)
    if kind == "local":
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


def describe_submission(kind: str, spec: SweepSpec, n: int, jobs: int | None = None) -> str:
    """What a launch of ``n`` cells as ``jobs`` jobs (fewer where cells are packed; default one per cell) does."""
    jobs = n if jobs is None else jobs
    packed = f" in {jobs} job{'' if jobs == 1 else 's'} (cells trained together: --pack)" if jobs != n else ""
    if kind != "slurm":
        return f"{n} cells would run{packed} with the {kind} executor"
    s = spec.slurm
    arrays = -(-jobs // s.max_array_size) if jobs else 0
    return (f"{n} cells would go to SLURM{packed} as {arrays} job array(s) of at most {s.max_array_size} tasks, "
            f"{s.array_parallelism} at a time; each task: {s.gpus_per_cell} GPU, {s.cpus_per_cell} CPUs, "
            f"{s.mem_gb:g} GB, {s.time_min} min, partition={s.partition}, account={s.account}, qos={s.qos}, "
            f"constraint={s.constraint}, extra={s.extra}")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_cell(executor: str, parallel: int, threads: int | None = None) -> int | None:
    """Torch threads of each cell: ``threads`` if given; on SLURM none here (the job uses the CPUs SLURM
    gave it); else this machine's cores divided among the ``parallel`` cells, at least 1 each."""
    if threads:
        return threads
    if executor == "slurm":
        return None
    return max(1, available_cores() // max(1, parallel))


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point this process's stderr (fd 2) at ``path`` while a local job starts: submitit's local controller
    inherits it and would print its own KeyboardInterrupt traceback to the terminal on Ctrl-C."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (from /proc; empty where there is none)."""
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


def stop_local_jobs(jobs: list, grace: float = 10.0) -> None:
    """Stop local submitit jobs and every process under them: SIGINT first (the controller stops its task),
    then, after ``grace`` seconds, SIGKILL to whatever is left."""
    import signal

    processes = [job._process for job in jobs if getattr(job, "_process", None) is not None]
    tree = {pid for p in processes for pid in _descendants(p.pid)}
    for job in jobs:
        job.cancel(check=False)
    deadline = time.time() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except Exception:  # still running after the grace period
            pass
    for pid in tree | {p.pid for p in processes if p.poll() is None}:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in processes:
        try:
            p.wait(timeout=5)
        except Exception:
            pass


def _progress(root: Path) -> str:
    """What a running cell is doing, from its ``progress.json`` (``training 3,400/8,000``, and ``, requeued 2
    times`` for a SLURM job requeued), or ``starting``."""
    try:
        state = json.loads((root / "progress.json").read_text())
    except (OSError, ValueError):
        return "starting"
    done = f" {state['done']:,}/{state['total']:,}" if state.get("total") else ""
    requeues = state.get("requeues", 0)
    again = f", requeued {requeues} time{'s' if requeues > 1 else ''}" if requeues else ""
    return f"{state['stage']}{done}{again}"


def _running_line(out: Path, cid: str, label: str) -> str:
    return f"{cid} ({label}): {_progress(cell_dir(out, cid))}"


def run_sweep(spec: SweepSpec, out: str | Path, executor: str = "local", parallel: int = 1, dry_run: bool = False,
              wait: bool = False, wait_timeout: float = 24 * 3600, progress: bool = True,
              threads: int | None = None, snapshot: bool = True, pack: int = 1) -> dict:
    """Launch the cells of ``spec`` that have unfinished grid points; returns counts by what happened.

    One job per cell: it trains the cell once, to each budget its grid points ask for, and
    evaluates each point, with ``threads_per_cell`` torch threads. Counts are of cells, ``points``
    of grid points. ``snapshot`` (SLURM): the jobs run a copy of the package taken now
    (:mod:`memorize.sweep.snapshot`; ``report["code"]`` is its record), not the code on disk when
    they start. ``pack`` > 1: up to that many cells of one architecture train together in one job
    (:mod:`memorize.pack`, :func:`pack_units`)."""
    out = Path(out)
    if dry_run:
        check_layout(out)
        points = expand(spec)
        check_data(points, spec.score.consistency)
    else:
        points = prepare(spec, out)
    cells = by_cell(points)
    slots = 1 if executor != "local" else max(1, parallel)  # jobs at a time (local)
    todo = {cid: ps for cid, ps in cells.items() if not all(is_done(cell_dir(out, cid), p.key) for p in ps)}
    busy = [cid for cid in todo if is_locked(cell_dir(out, cid))]
    todo = {cid: ps for cid, ps in todo.items() if cid not in busy}
    report = {"cells": len(cells), "points": len(points), "done_before": len(cells) - len(todo) - len(busy),
              "running_elsewhere": len(busy), "launched": 0, "failed": 0}
    if dry_run:
        for p in points:
            state = ("done" if is_done(cell_dir(out, p.cell), p.key) else
                     "running" if p.cell in busy else "to run")
            print(f"{p.cell}  {p.key}  {state:8s}  {p.label}")
        units = pack_units(todo, pack, slots)
        for unit in units:
            if len(unit) > 1:
                print(f"pack of {len(unit)}: {' '.join(unit)}")
        print(describe_submission(executor, spec, len(todo), len(units)))
        return report
    if not todo:
        return report
    score = dataclasses.asdict(spec.score)

    cell_threads = threads_per_cell(executor, parallel, threads)

    def job(unit: list[str]) -> CellJob | PackJob:
        if len(unit) == 1:
            return CellJob(str(cell_dir(out, unit[0])), [to_dict(p.config) for p in todo[unit[0]]], score, cell_threads)
        return PackJob([(str(cell_dir(out, cid)), [to_dict(p.config) for p in todo[cid]]) for cid in unit], score,
                       cell_threads)

    units = pack_units(todo, pack, slots)

    if executor == "slurm":
        code = take_snapshot(out) if snapshot else None
        report["code"] = code
        ex = _executor(executor, out, spec, code)
        record_path = out / "jobs.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        size = spec.slurm.max_array_size
        ids = list(todo)
        for start in range(0, len(units), size):
            chunk = units[start:start + size]
            with ex.batch():  # one job array; each task's function is the Checkpointable CellJob (or PackJob) itself
                jobs = [ex.submit(job(unit)) for unit in chunk]
            record.update({cid: j.job_id for unit, j in zip(chunk, jobs) for cid in unit})
            atomic_write_json(record_path, record)
        report["launched"] = len(ids)
        if wait:
            report.update(wait_for_slurm(out, ids, wait_timeout))
        return report
    ex = _executor(executor, out, spec)
    # local / debug: in the foreground, `parallel` cells at a time, a progress line per running cell
    labels = {cid: " | ".join(p.label for p in ps) for cid, ps in todo.items()}
    per = f"{cell_threads} threads per {'job' if pack > 1 else 'cell'}"
    bar = tqdm(total=len(todo), desc=f"sweep {spec.name} ({per})", unit="cell", disable=not progress)
    lines = [tqdm(total=0, position=i + 1, bar_format="  {desc}", leave=False, disable=not progress or executor ==
                  "debug") for i in range(slots)]
    pending, running = list(units), []
    refreshed = 0.0

    def failed(cid: str, why: str) -> None:
        report["failed"] += 1
        tqdm.write(f"cell {cid} ({labels[cid]}) failed: {why.strip().splitlines()[-1] if why.strip() else why}; "
                   f"see {cell_dir(out, cid) / ERROR}")

    try:
        while pending or running:
            while pending and len(running) < slots:
                unit = pending.pop(0)
                if executor == "local":
                    with _stderr_to(out / "logs" / "local-controller.err"):
                        running.append((unit, ex.submit(job(unit))))
                else:
                    running.append((unit, ex.submit(job(unit))))
                report["launched"] += len(unit)
                if executor == "debug":
                    break
            for unit, handle in list(running):
                if executor == "debug" or handle.done():
                    running.remove((unit, handle))
                    try:
                        outcome = handle.result()
                    except Exception as err:  # the cells wrote error.txt; go on with the others
                        for cid in unit:
                            failed(cid, str(err))
                    else:
                        if len(unit) > 1:  # a pack: per cell, None or its error
                            for cid in unit:
                                if outcome.get(str(cell_dir(out, cid))):
                                    failed(cid, outcome[str(cell_dir(out, cid))])
                    bar.update(len(unit))
            if progress and time.time() - refreshed > 1.0:
                refreshed = time.time()
                for i, line in enumerate(lines):
                    unit = running[i][0] if i < len(running) else None
                    more = f" (+{len(unit) - 1} packed)" if unit and len(unit) > 1 else ""
                    line.set_description_str(_running_line(out, unit[0], labels[unit[0]]) + more if unit else "")
            time.sleep(0.2 if running and executor != "debug" else 0)
    except KeyboardInterrupt as err:
        if executor == "local":
            stop_local_jobs([handle for _, handle in running])
        done = len(todo) - sum(map(len, pending)) - sum(len(unit) for unit, _ in running)
        err.resume_hint = (f"{report['done_before'] + done} of {len(cells)} cells are done; the {len(running)} "
                           f"running were stopped; re-running the same command resumes them from their last "
                           f"checkpoints (logs: {out / 'logs'})")
        raise
    finally:
        for line in lines:
            line.close()
        bar.close()
    return report


def trains_on_cpu(cfg: CellConfig) -> bool:
    """Whether a cell's training runs on this machine's CPU (``train.device`` cpu, or auto without a GPU)."""
    return cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())


def pack_units(todo: dict[str, list[GridPoint]], pack: int, slots: int = 1) -> list[list[str]]:
    """The jobs of a launch: with ``pack`` > 1, cells that can train together (equal
    :func:`memorize.pack.pack_key` of their longest-budget config) in as few packs of at most ``pack``
    as they fit, of sizes differing by at most one (12 cells at ``pack`` 10: two packs of 6), each pack
    consecutive cells in grid order; every other cell alone. ``slots``: jobs that run at once (a local
    sweep's ``--parallel``); while there are fewer jobs than that, the largest pack
    is halved, so no slot waits idle at the start (two packs of 5 on two 1-thread slots train ten
    8-channel digits cells faster than one pack of 10 with both threads: ``benchmarks/README.md``). Only
    packs that train on the CPU are halved (:func:`trains_on_cpu`): on a GPU, packing is what saves the
    launches, and splitting a pack to share the GPU is unmeasured."""
    if pack <= 1:
        return [[cid] for cid in todo]
    from memorize.pack import pack_key

    groups: dict[str, list[str]] = {}
    for cid, points in todo.items():
        key = pack_key(max((p.config for p in points), key=lambda c: c.train.steps))
        groups.setdefault(key if key is not None else f"alone {cid}", []).append(cid)
    units: list[list[str]] = []
    for group in groups.values():
        count = -(-len(group) // pack)
        bounds = [round(i * len(group) / count) for i in range(count + 1)]
        units.extend(group[a:b] for a, b in zip(bounds, bounds[1:]))
    on_cpu = {cid for cid, points in todo.items() if trains_on_cpu(points[0].config)}
    while len(units) < slots:
        splittable = [i for i, unit in enumerate(units) if len(unit) > 1 and unit[0] in on_cpu]
        if not splittable:
            break
        largest = max(splittable, key=lambda i: len(units[i]))
        unit = units[largest]
        units[largest:largest + 1] = [unit[:(len(unit) + 1) // 2], unit[(len(unit) + 1) // 2:]]
    order = {cid: i for i, cid in enumerate(todo)}
    return sorted(units, key=lambda unit: order[unit[0]])


def _jobs(out: Path) -> dict[str, str]:
    path = out / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _cancelled(out: Path) -> list[str]:
    """Job ids ``memorize sweep cancel`` cancelled (``DIR/cancelled.json``; SLURM without accounting forgets them)."""
    path = out / "cancelled.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _run(command: list[str]) -> str | None:
    """stdout of a SLURM command, or None where it fails or does not answer within 60 s. ``squeue -j``
    naming only jobs SLURM has forgotten fails with "Invalid job id": that is an empty answer."""
    import subprocess

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


def _unfinished(out: Path) -> dict[str, list[str]]:
    """The cells of the current grid with a grid point not done: their evaluation keys."""
    keys = _grid(out).groupby("cell")["eval"].apply(list).to_dict()
    return {cid: ks for cid, ks in keys.items() if not all(is_done(cell_dir(out, cid), k) for k in ks)}


def wait_for_slurm(out: Path, ids: list[str], timeout: float, poll: float = 5.0) -> dict:
    """Wait until every cell is done or its job ended, at most ``timeout`` seconds (never forever: a job that
    dies without a result is seen through its SLURM state). One status query per ``poll`` seconds."""
    jobs = _jobs(out)
    deadline = time.time() + timeout
    open_ids = set(ids)
    keys = _grid(out).groupby("cell")["eval"].apply(list).to_dict() if (out / "cells.csv").is_file() else {}
    while open_ids and time.time() < deadline:
        states = slurm_states([jobs.get(cid, "") for cid in open_ids])
        for cid in list(open_ids):
            root = out / "cells" / cid
            if all(is_done(root, k) for k in keys.get(cid, [])) or (root / ERROR).exists():
                open_ids.discard(cid)
            elif states.get(jobs.get(cid, ""), "UNKNOWN") in TERMINAL_SLURM_STATES - {"COMPLETED"}:
                open_ids.discard(cid)
        if open_ids:
            time.sleep(poll)
    return {"unfinished_after_wait": len(open_ids)}


ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                       "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def cancel_sweep(out: str | Path, wait_timeout: float = 120.0, poll: float = 1.0) -> dict:
    """Cancel the SLURM jobs (ids from ``DIR/jobs.json``) of the sweep's unfinished cells that are still in
    the queue, with one ``scancel``; finished cells and their files are left alone. Waits, at most
    ``wait_timeout`` seconds, until the cancelled jobs have left the queue, so that a following
    ``memorize sweep run`` finds their cells unlocked and resumes them from their last checkpoints."""
    out = Path(out)
    jobs = _jobs(out)
    if not jobs:
        raise FileNotFoundError(f"{out / 'jobs.json'}: no SLURM jobs recorded for this sweep "
                                f"(it was not launched with --executor slurm)")
    unfinished = _unfinished(out)
    mine = {cid: jobs[cid] for cid in unfinished if cid in jobs}
    states = slurm_states(list(mine.values()))
    if states and set(states.values()) == {"UNKNOWN"}:
        raise RuntimeError("no SLURM answers (squeue failed): nothing was cancelled")
    active = {cid: job for cid, job in mine.items() if states.get(job) in ACTIVE_SLURM_STATES}
    report = {"cells": len(_grid(out)["cell"].unique()), "unfinished": len(unfinished), "running": 0, "pending": 0,
              "cancelled": 0, "still_queued": 0}
    for job in active.values():
        kind = "running" if states[job] == "RUNNING" else "pending"
        report[kind] += 1
    if not active:
        return report
    import subprocess

    ids = list(active.values())
    for start in range(0, len(ids), 1000):  # bounded command lines
        try:
            subprocess.run(["scancel", *ids[start:start + 1000]], check=True, capture_output=True, text=True,
                           timeout=120)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", None) or err
            raise RuntimeError(f"scancel failed: {str(detail).strip()}") from None
    report["cancelled"] = len(ids)
    atomic_write_json(out / "cancelled.json", sorted({*_cancelled(out), *ids}))
    deadline = time.time() + wait_timeout
    while True:
        left = [j for j, state in slurm_states(ids).items() if state in ACTIVE_SLURM_STATES]
        if not left or time.time() >= deadline:
            break
        time.sleep(poll)
    report["still_queued"] = len(left)
    return report


def _grid(out: Path) -> pd.DataFrame:
    """``DIR/cells.csv``: the grid points of the spec last launched into ``out``."""
    if not (out / "cells.csv").is_file():
        raise FileNotFoundError(f"{out} is not a sweep directory (no cells.csv): run `memorize sweep run` first")
    check_layout(out)
    return pd.read_csv(out / "cells.csv", dtype={"cell": str, "eval": str})


def sweep_status(out: str | Path) -> pd.DataFrame:
    """Per grid point: done, running (with its stage and progress), failed (with the log to read), pending
    (with its last checkpoint)."""
    from memorize.cell import CellPaths

    out = Path(out)
    index = _grid(out)
    jobs = _jobs(out)
    axes = list(index.columns[2:])
    unfinished = _unfinished(out)
    states = slurm_states([jobs[cid] for cid in unfinished if cid in jobs])
    cancelled = set(_cancelled(out))
    rows = []
    for row in index.to_dict("records"):
        root = cell_dir(out, row["cell"])
        job = jobs.get(row["cell"], "")
        detail = ""
        if is_done(root, row["eval"]):
            state = "done"
            detail = f"mem_nn={read_eval(root, row['eval'])['mem_nn']:.3f}"
        elif is_locked(root):
            state = "running"
            detail = _progress(root)
        elif (root / ERROR).exists():
            state = "failed"
            last = (root / ERROR).read_text().strip().splitlines()[-1:] or [""]
            log = out / "logs" / job / f"{job}_0_log.err" if job else root / ERROR
            detail = f"{last[0][:120]} (log: {log})"
        else:
            slurm = states.get(job, "") if job else ""
            state = "running" if slurm == "RUNNING" else "pending"
            if slurm == "CANCELLED" or (job in cancelled and slurm not in ACTIVE_SLURM_STATES):
                state = "cancelled"
                detail = "job cancelled; `memorize sweep run` resumes the cell"
            elif slurm in TERMINAL_SLURM_STATES:
                state = "failed"  # the job ended without a result or an error report
                detail = f"job ended ({slurm}) without a result (log: {out / 'logs' / job})"
            ckpt = CellPaths(root).latest_checkpoint()
            detail = detail or (f"slurm {slurm}" if slurm else "")
            if ckpt is not None:
                detail += f" checkpoint {ckpt.stem}"
        rows.append({"cell": row["cell"], "eval": row["eval"], "state": state, "job": job,
                     **{k: row[k] for k in axes}, "detail": detail.strip()})
    return pd.DataFrame(rows)


def collect(out: str | Path) -> pd.DataFrame:
    """``DIR/results.csv``: one row per grid point of the current spec that is finished under its current
    sampling and scoring settings, grid values as extra columns (named by their dotted field). Points not
    finished under them are left out and counted in ``table.attrs["pending"]``; they are never filled from
    results of other settings. Curves over training steps, where scored, go to ``DIR/curves.csv``."""
    out = Path(out)
    index = _grid(out)
    axes = list(index.columns[2:])
    rows, curves, pending = [], [], 0
    for row in index.to_dict("records"):
        summary = read_eval(cell_dir(out, row["cell"]), row["eval"])
        if summary is None:
            pending += 1
            continue
        record = {k: summary.get(k) for k in RESULT_COLUMNS}
        record["budget"] = summary.get("budget", summary["step"])  # results from before train.stop_when
        record["stopped_early"] = bool(summary.get("stopped_early", False))
        record["labels"] = summary.get("labels", summary["config"]["data"]["labels"])  # from before conditioning
        record["guidance"] = summary.get("guidance", 0.0)
        record["compare_dir"] = (summary.get("files") or {}).get("compare")
        for axis in axes:
            record.setdefault(axis, row[axis])
        rows.append(record)
        for c in summary.get("over_steps", []):
            # one row per scored checkpoint: its own result record (older sweeps stored a few columns inline)
            at_step = read_eval(cell_dir(out, row["cell"]), c["eval"]) if "eval" in c else c
            curves.append({**{k: record[k] for k in ("model", "params", "n_train", "seed", "cell")},
                           **{axis: row[axis] for axis in axes}, "budget": record["budget"], "eval": record["eval"],
                           **{k: at_step.get(k) for k in CURVE_COLUMNS}, "step_eval": at_step.get("eval")})
    columns = RESULT_COLUMNS + ["compare_dir"] + [c for c in axes if c not in RESULT_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    if curves:
        atomic_write_text(out / "curves.csv", pd.DataFrame(curves).to_csv(index=False))
    table.attrs["pending"] = pending
    return table

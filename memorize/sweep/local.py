"""Running a sweep's jobs on this machine: threads and GPUs per job, the foreground loop with its live
display, and stopping local jobs with everything under them."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import submitit
from tqdm.auto import tqdm

from memorize.sweep.layout import BUSY, ERROR, cell_dir, is_locked, progress_line


LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # a local cell runs as long as it needs


def visible_gpus(environ: Mapping[str, str], device_count: int) -> list[str]:
    """The GPUs local jobs may use, as ``CUDA_VISIBLE_DEVICES`` entries: the caller's own list (indices, GPU
    UUIDs or MIG instances; set but empty: none), else all ``device_count`` GPUs this process sees."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(device_count)]
    return [entry.strip() for entry in visible.split(",") if entry.strip()]


def slot_gpus(gpus: list[str], slots: int) -> list[list[str]]:
    """The GPUs of each of ``slots`` local jobs running side by side: disjoint contiguous shares (sizes
    differing by at most one) where there are at least as many GPUs as slots, else slot i gets GPU i mod n
    (slots then share GPUs); none without GPUs."""
    if not gpus:
        return [[] for _ in range(slots)]
    if len(gpus) >= slots:
        bounds = [round(i * len(gpus) / slots) for i in range(slots + 1)]
        return [gpus[a:b] for a, b in zip(bounds, bounds[1:])]
    return [[gpus[i % len(gpus)]] for i in range(slots)]


def slot_parameters(gpus: list[str]) -> dict[str, Any]:
    """Submitit parameters that give a local job exactly ``gpus``. Submitit's local executor sets
    ``CUDA_VISIBLE_DEVICES`` to ``gpus_per_node`` devices (default none), which would hide every GPU; a setup
    line exports the job's own list instead. No GPUs: nothing to add (the job sees none)."""
    return {"local_setup": [f"export CUDA_VISIBLE_DEVICES={shlex.quote(','.join(gpus))}"]} if gpus else {}


def wait_until_free(out: Path, cells: list[str], progress: bool = True, poll: float = 1.0) -> None:
    """Wait while another process holds any of ``cells`` (a second launch into the same sweep), so that
    this launch, too, ends with their results; a lock a killed process left behind is free at once
    (``flock`` locks end with their process)."""
    waiting = [cid for cid in cells if is_locked(cell_dir(out, cid))]
    if waiting and progress:
        print(f"waiting for {len(waiting)} cells another process is running (Ctrl-C stops waiting; they go on)",
              file=sys.stderr, flush=True)
    while waiting:
        time.sleep(poll)
        waiting = [cid for cid in waiting if is_locked(cell_dir(out, cid))]


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


def _running_line(out: Path, cid: str, label: str) -> str:
    return f"{cid} ({label}): {progress_line(cell_dir(out, cid))}"


def run_local(executor: submitit.Executor, out: Path, units: list[list[str]], job: Callable[[list[str]], Any],
              labels: dict[str, str], slots: int, report: dict, title: str, debug: bool = False,
              progress: bool = True, gpus: list[list[str]] | None = None,
              elsewhere: list[str] | None = None) -> dict:
    """Run ``units`` (a cell, or a pack of cells, each) in the foreground, ``slots`` at a time, with a
    progress bar and a line per running job saying what it does (:func:`memorize.sweep.layout.progress_line`).
    A failing cell is reported and the others go on; ``report["launched"]`` and ``report["failed"]``
    count cells. On Ctrl-C the running jobs are stopped (:func:`stop_local_jobs`) and the interrupt,
    with a ``resume_hint``, goes up. ``debug``: Submitit's debug executor, one job at a time in this process.
    ``gpus``: each slot's GPUs (:func:`slot_gpus`); a job started in a free slot sees only that slot's.
    A cell that another process turned out to hold is counted in ``report["running_elsewhere"]`` and its
    id appended to ``elsewhere``, not failed."""
    cells = sum(map(len, units))
    bar = tqdm(total=cells, desc=title, unit="cell", disable=not progress)
    lines = [tqdm(total=0, position=i + 1, bar_format="  {desc}", leave=False, disable=not progress or debug)
             for i in range(slots)]
    pending, running, free = list(units), [], list(range(slots))
    refreshed = 0.0

    def held(cid: str) -> None:
        report["running_elsewhere"] += 1
        report["launched"] -= 1
        if elsewhere is not None:
            elsewhere.append(cid)

    def failed(cid: str, why: str) -> None:
        report["failed"] += 1
        tqdm.write(f"cell {cid} ({labels[cid]}) failed: {why.strip().splitlines()[-1] if why.strip() else why}; "
                   f"see {cell_dir(out, cid) / ERROR}")

    try:
        while pending or running:
            while pending and len(running) < slots:
                unit, slot = pending.pop(0), free.pop(0)
                if gpus and not debug:
                    executor.update_parameters(**slot_parameters(gpus[slot]))
                if debug:
                    running.append((unit, executor.submit(job(unit)), slot))
                else:
                    with _stderr_to(out / "logs" / "local-controller.err"):
                        running.append((unit, executor.submit(job(unit)), slot))
                report["launched"] += len(unit)
                if debug:
                    break
            for unit, handle, slot in list(running):
                if debug or handle.done():
                    running.remove((unit, handle, slot))
                    free.append(slot)
                    try:
                        outcome = handle.results()[0]  # rank 0's, where the job has several tasks
                    except Exception as err:  # the cells wrote error.txt; go on with the others
                        for cid in unit:
                            failed(cid, str(err))
                    else:
                        if len(unit) > 1:  # a pack: per cell, None or its error
                            for cid in unit:
                                why = outcome.get(str(cell_dir(out, cid)))
                                if why and why.startswith(f"{BUSY}:"):
                                    held(cid)
                                elif why:
                                    failed(cid, why)
                        elif isinstance(outcome, dict) and BUSY in outcome:
                            held(unit[0])
                    bar.update(len(unit))
            if progress and time.time() - refreshed > 1.0:
                refreshed = time.time()
                for i, line in enumerate(lines):
                    unit = running[i][0] if i < len(running) else None
                    more = f" (+{len(unit) - 1} packed)" if unit and len(unit) > 1 else ""
                    line.set_description_str(_running_line(out, unit[0], labels[unit[0]]) + more if unit else "")
            time.sleep(0.2 if running and not debug else 0)
    except KeyboardInterrupt as err:
        if not debug:
            stop_local_jobs([handle for _, handle, _ in running])
        done = cells - sum(map(len, pending)) - sum(len(unit) for unit, _, _ in running)
        err.resume_hint = (f"{report['done_before'] + done} of {report['cells']} cells are done; the {len(running)} "
                           f"running were stopped; re-running the same command resumes them from their last "
                           f"checkpoints (logs: {out / 'logs'})")
        raise
    finally:
        for line in lines:
            line.close()
        bar.close()
    return report

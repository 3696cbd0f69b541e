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

from memorize.progress import LOG_EVERY_S
from memorize.sweep.layout import (BUSY, ERROR, cell_dir, error_hint, is_locked, last_log_line, progress_line,
                                   write_error)


LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # a local cell runs as long as it needs


class PlainProgress:
    """A sweep's progress as plain lines, for stderr that is a log file rather than a terminal (a bar redrawn
    in place there is a line of escape codes a second): the cells done whenever the count changes, and
    :meth:`say`, what each running process does, at most every ``every`` seconds and only when it changed.
    It stands in for the bar (``update``, ``close``) and, through :meth:`line`, for each process's line
    (``set_description_str``, ``close``)."""

    def __init__(self, title: str, total: int, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.time):
        self.title, self.total, self.every, self.clock = title, total, every, clock
        self.done, self.start, self.said = 0, clock(), {}

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        if n:
            self.done += n
            minutes, seconds = divmod(int(self.clock() - self.start), 60)
            self._print(f"{self.title}: {self.done}/{self.total} cells done ({minutes}:{seconds:02d})")

    def say(self, i: int, text: str) -> None:
        last_text, last_time = self.said.get(i, ("", -self.every))
        if text and text != last_text and self.clock() - last_time >= self.every:
            self.said[i] = (text, self.clock())
            self._print(f"  {text}")

    def line(self, i: int) -> _PlainLine:
        return _PlainLine(self, i)

    def close(self) -> None:
        pass


class _PlainLine:
    """Process ``i``'s line of a :class:`PlainProgress`, in place of its tqdm line."""

    def __init__(self, progress: PlainProgress, i: int):
        self.progress, self.i = progress, i

    def set_description_str(self, text: str) -> None:
        self.progress.say(self.i, text)

    def close(self) -> None:
        pass


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


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(usable_cpus())


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


def share_out(units: list[list[str]], slots: int,
              work: Callable[[list[str]], float] = len) -> list[list[list[str]]]:
    """The units of a launch (a cell, or a pack of cells, each) as at most ``slots`` batches, each run from
    start to end by one process. Longest processing time first (Graham 1969, "Bounds on multiprocessing
    timing anomalies": within 4/3 of the best makespan): the units in decreasing ``work`` (default: their
    number of cells; a launch passes :func:`memorize.sweep.launch.training_work`), each to the batch with
    the least work so far (the first of equals); each batch then runs its units in the launch's order."""
    batches: list[list[int]] = [[] for _ in range(max(1, min(slots, len(units))))]
    load = [0.0] * len(batches)
    for i in sorted(range(len(units)), key=lambda i: -work(units[i])):
        least = load.index(min(load))
        batches[least].append(i)
        load[least] += work(units[i])
    return [[units[i] for i in sorted(batch)] for batch in batches if batch]


def left_no_result(handle: submitit.Job) -> str:
    """Why a local job's process ended without a result: the last line of its stderr, else the likeliest
    cause of such a silent end."""
    said = last_log_line(handle.paths.stderr)
    return f"it left no result; its last word: {said}" if said else \
        "it left no result and said nothing: killed, by a signal or the kernel's out-of-memory killer"


def run_local(executor: submitit.Executor, out: Path, units: list[list[str]], job: Callable[[list[list[str]]], Any],
              labels: dict[str, str], slots: int, report: dict, title: str, debug: bool = False,
              progress: bool = True, gpus: list[list[str]] | None = None,
              elsewhere: list[str] | None = None, one_process_per_slot: bool = True,
              finished: Callable[[str], bool] | None = None, work: Callable[[list[str]], float] = len) -> dict:
    """Run ``units`` (a cell, or a pack of cells, each) in the foreground, ``slots`` processes at a time, with
    a progress bar and a line per running process saying what it does
    (:func:`memorize.sweep.layout.progress_line`). ``job(batch)`` is the Submitit callable that runs a batch
    of units one after another in one process (:class:`memorize.sweep.job.BatchJob`): with
    ``one_process_per_slot`` the units are shared out among the slots (:func:`share_out`), one process each,
    so no unit pays a process start (Python, imports, a CUDA context); else each unit is a process of its
    own, the units with the most ``work`` started first. ``finished(cid)`` (a cell's results are written, or
    its error) advances the bar as cells end inside a process. A failing cell is reported and the others go
    on; a process that ends without returning (killed, out of memory) fails the unit it was running (its
    ``error.txt`` says so) and runs the units it had not begun in a new process; ``report["launched"]`` and
    ``report["failed"]`` count cells. On Ctrl-C the running jobs are stopped
    (:func:`stop_local_jobs`) and the interrupt, with a ``resume_hint``, goes up. ``debug``: Submitit's debug
    executor, one unit at a time in this process. ``gpus``: each slot's GPUs (:func:`slot_gpus`); a job
    started in a free slot sees only that slot's. A cell that another process turned out to hold is counted in
    ``report["running_elsewhere"]`` and its id appended to ``elsewhere``, not failed."""
    cells = sum(map(len, units))
    if debug:
        batches = [[unit] for unit in units]
    elif one_process_per_slot:
        batches = share_out(units, slots, work)
    else:  # each unit a process of its own, taken by the first free slot: the most work first
        batches = [[unit] for unit in sorted(units, key=lambda unit: -work(unit))]
    if progress and not sys.stderr.isatty():  # a log file: plain lines, not bars redrawn in place
        bar = PlainProgress(title, cells)
        lines = [bar.line(i) for i in range(slots)]
    else:
        bar = tqdm(total=cells, desc=title, unit="cell", disable=not progress)
        lines = [tqdm(total=0, position=i + 1, bar_format="  {desc}", leave=False, disable=not progress or debug)
                 for i in range(slots)]
    pending, running, free = list(batches), [], list(range(slots))
    counted: set[str] = set()  # cells the bar has counted
    refreshed = 0.0

    def count(cids: list[str]) -> None:
        new = [cid for cid in cids if cid not in counted]
        counted.update(new)
        bar.update(len(new))

    def held(cid: str) -> None:
        report["running_elsewhere"] += 1
        report["launched"] -= 1
        if elsewhere is not None:
            elsewhere.append(cid)

    def failed(cid: str, why: str) -> None:
        report["failed"] += 1
        tqdm.write(f"cell {cid} ({labels[cid]}) failed: {why.strip().splitlines()[-1] if why.strip() else why}; "
                   f"{error_hint(cell_dir(out, cid))}")

    def died(batch: list[list[str]], handle: Any, why: str) -> list[list[str]]:
        """A batch whose process ended without returning (killed, out of memory, a crash in native code). Its
        units ran in order: those that ended are settled from their files; the first that had not is where it
        died, failed (a later ``sweep run`` resumes it from its last checkpoint); the ones after it never
        began and are returned, to run in a new process."""
        ended = finished or (lambda cid: False)
        rest = [unit for unit in batch if not all(cid in counted or ended(cid) for cid in unit)]
        for unit in batch:
            if unit not in rest:
                for cid in unit:  # a cell clears its error.txt as it starts: one there now is this launch's
                    error = cell_dir(out, cid) / ERROR
                    if cid not in counted and error.is_file():
                        failed(cid, error.read_text())
                count(unit)
        while rest and all(is_locked(cell_dir(out, cid)) for cid in rest[0]):  # skipped: another process holds it
            for cid in rest[0]:
                held(cid)
            count(rest.pop(0))
        if rest:
            said = why.strip().splitlines()[-1][:200] if why.strip() else "no reason given"
            text = (f"the process running this cell ended ({said}); `memorize sweep run` again resumes it from "
                    f"its last checkpoint (log: {out / 'logs' / handle.job_id})\n")
            for cid in rest[0]:
                write_error(cell_dir(out, cid), text)  # what the dead process could not write
                failed(cid, text)
            count(rest[0])
        return rest[1:]

    def settle(unit: list[str], outcome: Any) -> None:
        """What a unit's job returned (or the error it raised, as text)."""
        if isinstance(outcome, str):  # it raised: its cells wrote error.txt
            for cid in unit:
                failed(cid, outcome)
        elif len(unit) > 1:  # a pack: per cell, None or its error
            for cid in unit:
                why = outcome.get(str(cell_dir(out, cid)))
                if why and why.startswith(f"{BUSY}:"):
                    held(cid)
                elif why:
                    failed(cid, why)
        elif isinstance(outcome, dict) and BUSY in outcome:
            held(unit[0])
        count(unit)

    try:
        while pending or running:
            while pending and len(running) < slots:
                batch, slot = pending.pop(0), free.pop(0)
                if gpus and not debug:
                    executor.update_parameters(**slot_parameters(gpus[slot]))
                if debug:
                    running.append((batch, executor.submit(job(batch)), slot))
                else:
                    with _stderr_to(out / "logs" / "local-controller.err"):
                        running.append((batch, executor.submit(job(batch)), slot))
                report["launched"] += sum(map(len, batch))
                if debug:
                    break
            for batch, handle, slot in list(running):
                if debug or handle.done():
                    running.remove((batch, handle, slot))
                    free.append(slot)
                    outcomes, why = None, None
                    rank0 = handle.task(0)  # the job itself where it has one task; rank 0 runs the batch
                    if not debug and not rank0.paths.result_pickle.exists():
                        why = left_no_result(rank0)  # seen now: Submitit would wait 15 s for a result
                    else:
                        try:
                            outcomes = rank0.result()
                        except Exception as err:  # the process ended (killed, out of memory) before its batch did
                            why = str(err)
                    if why is not None:
                        rest = died(batch, handle, why)
                        if rest:  # the units it had not begun: a process of their own, next
                            pending.insert(0, rest)
                            report["launched"] -= sum(map(len, rest))  # counted again as they start
                    else:
                        for unit, outcome in zip(batch, outcomes):
                            settle(unit, outcome)
            if progress and time.time() - refreshed > 1.0:
                refreshed = time.time()
                if finished is not None:  # cells that ended inside a running process
                    count([cid for batch, _, _ in running for unit in batch for cid in unit
                           if cid not in counted and finished(cid)])
                for i, line in enumerate(lines):
                    batch = running[i][0] if i < len(running) else []
                    unit = next((u for u in batch if not all(cid in counted for cid in u)), None)
                    more = f" (+{len(unit) - 1} packed)" if unit and len(unit) > 1 else ""
                    line.set_description_str(_running_line(out, unit[0], labels[unit[0]]) + more if unit else "")
            time.sleep(0.2 if running and not debug else 0)
    except KeyboardInterrupt as err:
        if not debug:
            stop_local_jobs([handle for _, handle, _ in running])
        stopped = sum(cid not in counted for batch, _, _ in running for unit in batch for cid in unit)
        err.resume_hint = (f"{report['done_before'] + len(counted)} of {report['cells']} cells are done; the "
                           f"{stopped} running were stopped; re-running the same command resumes them from their "
                           f"last checkpoints (logs: {out / 'logs'})")
        raise
    finally:
        for line in lines:
            line.close()
        bar.close()
        if not debug:
            _remove_unexpanded_log_folder(out / "logs")
    return report


def _remove_unexpanded_log_folder(logs: Path) -> None:
    """Remove the empty ``logs/%j`` that Submitit's local controller makes from the executor's folder
    before it puts the job's id in the name (its logs go to ``logs/<job id>/``); a folder with anything
    in it is left alone."""
    try:
        (logs / "%j").rmdir()
    except OSError:  # not there, or not empty
        pass

"""The sweep directory: everything that reads or writes it, outside the cells' own files.

::

    DIR/sweep.json      layout version of the directory
    DIR/spec.yaml       the spec as last launched
    DIR/cells.csv       one row per grid point of that spec: cell id, evaluation key, grid values
    DIR/cells/<id>/     one directory per cell (memorize.cell; its job: memorize.sweep.job), and in it
        .lock           held by the process working on the cell (cell_lock)
        error.txt       the traceback of a cell that failed
        evals/<key>.json  the result of one grid point; its presence marks the point done
    DIR/jobs.json       SLURM job ids by cell id (status, collect and cancel re-attach from it)
    DIR/cancelled.json  job ids `memorize sweep cancel` cancelled
    DIR/code/<hash>/    the memorize package as launched (SLURM; memorize.sweep.snapshot), DIR/code.json the latest
    DIR/logs/           Submitit logs (put DIR on a filesystem the compute nodes share)
    DIR/results.csv     one row per finished grid point of the current spec (memorize.sweep.results)
    DIR/curves.csv      memorization over training steps, where the spec scores checkpoints
    DIR/figures/        the phase-transition figures (memorize.sweep.figures)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import yaml

from memorize.cell import LAYOUT, OLD_LAYOUT, CellPaths
from memorize.config import ConfigError, to_dict
from memorize.io import atomic_write_json, atomic_write_text, check_directory
from memorize.sweep.spec import GridPoint, SweepSpec, check_data, expand


ERROR = "error.txt"


LOCK = ".lock"


# What a job returns for a cell that another process holds (its lock): running elsewhere, not failed.
BUSY = "busy"


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
        previous = fh.read().split()
        if len(previous) >= 2 and previous[0] == socket.gethostname() and previous[1].isdigit() \
                and not _alive(int(previous[1])):
            print(f"memorize: {root / LOCK} was held by process {previous[1]} on this host, which has ended; "
                  f"taken over", file=sys.stderr)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '')}\n")
        fh.flush()
        # Half-written files of a killed run (atomic writes go through ".NAME.*.tmp"): nobody else writes here now.
        leftovers = list(root.rglob(".*.tmp"))
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            print(f"memorize: removed {len(leftovers)} half-written file(s) a killed run left in {root} "
                  f"(e.g. {leftovers[0].name})", file=sys.stderr)
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()  # released in order: only a process that was killed leaves its id behind
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    """Whether a process of that id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def eval_path(root: Path, key: str) -> Path:
    """``<cell>/evals/<key>.json``: the result of one grid point; its presence marks the point done."""
    return CellPaths(Path(root)).evals / f"{key}.json"


def read_eval(root: Path, key: str) -> dict | None:
    """The result of evaluation ``key`` of the cell at ``root``, None where there is none. A damaged file
    (truncated, emptied, overwritten: what a full disk or an interrupted copy leaves) counts as none: it is
    named once on stderr, the grid point is pending again, and the next ``sweep run`` recomputes it."""
    path = eval_path(root, key)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        record = None
    if not isinstance(record, dict) or not {"cell", "eval", "config"} <= set(record):
        if str(path) not in _REPORTED_DAMAGE:
            _REPORTED_DAMAGE.add(str(path))
            print(f"memorize: {path} is damaged (not a complete result record); its grid point counts as not done "
                  f"and `memorize sweep run` recomputes it", file=sys.stderr)
        return None
    return record


_REPORTED_DAMAGE: set[str] = set()  # damaged result files already named in this process


def is_done(root: Path, key: str) -> bool:
    """Whether the cell at ``root`` has the (undamaged) result of evaluation ``key``."""
    return read_eval(root, key) is not None


def cell_dir(out: Path, point: GridPoint | str) -> Path:
    """``DIR/cells/<id>`` of a grid point or cell id."""
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


def read_jobs(out: Path) -> dict[str, str]:
    """``DIR/jobs.json``: the SLURM job id of each cell launched there (empty where none was)."""
    path = out / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_cancelled(out: Path) -> list[str]:
    """Job ids ``memorize sweep cancel`` cancelled (``DIR/cancelled.json``; SLURM without accounting forgets them)."""
    path = out / "cancelled.json"
    return json.loads(path.read_text()) if path.is_file() else []


def unfinished_cells(out: Path) -> dict[str, list[str]]:
    """The cells of the current grid with a grid point not done: their evaluation keys."""
    keys = read_grid(out).groupby("cell")["eval"].apply(list).to_dict()
    return {cid: ks for cid, ks in keys.items() if not all(is_done(cell_dir(out, cid), k) for k in ks)}


def read_grid(out: Path) -> pd.DataFrame:
    """``DIR/cells.csv``: the grid points of the spec last launched into ``out``."""
    if not (out / "cells.csv").is_file():
        raise FileNotFoundError(f"{out} is not a sweep directory (no cells.csv): run `memorize sweep run` first")
    check_layout(out)
    return pd.read_csv(out / "cells.csv", dtype={"cell": str, "eval": str})


def progress_line(root: Path) -> str:
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


def record_jobs(out: Path, jobs: dict[str, str]) -> None:
    """Add ``{cell id: SLURM job id}`` to ``DIR/jobs.json`` (a requeued or relaunched cell's newest id wins)."""
    atomic_write_json(out / "jobs.json", {**read_jobs(out), **jobs})


def record_cancelled(out: Path, job_ids: list[str]) -> None:
    """Add job ids to ``DIR/cancelled.json``."""
    atomic_write_json(out / "cancelled.json", sorted({*read_cancelled(out), *job_ids}))

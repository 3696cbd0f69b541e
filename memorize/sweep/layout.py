"""The sweep directory: everything that reads or writes it, outside the cells' own files.

::

    DIR/sweep.json      layout version of the directory
    DIR/spec.yaml       the spec as last launched
    DIR/cells.csv       one row per grid point of that spec: cell id, evaluation key, grid values
    DIR/cells/<id>/     one directory per cell (memorize.cell; its job: memorize.sweep.job), and in it
        .lock           held by the process working on the cell (cell_lock)
        error.txt       the traceback of a cell that failed
        evals/<key>.json  the result of one grid point; its presence, with the files it lists, marks the point done
    DIR/jobs.json       SLURM job ids by cell id (status, collect and cancel re-attach from it)
    DIR/cancelled.json  job ids `memorize sweep cancel` cancelled
    DIR/code/<hash>/    the memorize package as launched (SLURM; memorize.sweep.snapshot), DIR/code.json the latest
    DIR/logs/           Submitit logs (put DIR on a filesystem the compute nodes share)
    DIR/results.csv     one row per finished grid point of the current spec (memorize.sweep.results)
    DIR/curves.csv      memorization over training steps, where the spec scores checkpoints
    DIR/figures/        the phase-transition figures (memorize.sweep.figures)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from memorize.cell import LAYOUT, OLD_LAYOUT, CellPaths
from memorize.config import ConfigError, to_dict
from memorize.io import atomic_write_json, atomic_write_text, check_directory
from memorize.sweep.spec import GridPoint, SweepSpec, check_data, check_networks, expand, load_spec
from memorize.train import resume_point


ERROR = "error.txt"


def write_error(root: Path, text: str) -> bool:
    """Write a failed cell's ``error.txt``; where that write fails too (a full disk, a quota), say so on stderr
    instead of raising, so that the error it records is the one raised. Returns whether it was written."""
    try:
        atomic_write_text(root / ERROR, text)
        return True
    except OSError as err:
        with contextlib.suppress(OSError):  # stderr may be a log file on the same full disk
            print(f"memorize: could not write {root / ERROR} ({err})", file=sys.stderr)
        return False


def error_hint(root: Path) -> str:
    """Where a failed cell's error is, as said beside it: its ``error.txt``, or that it could not be written."""
    path = root / ERROR
    return f"see {path}" if path.is_file() else f"{path} could not be written (is the disk full?)"


LOCK = ".lock"


# What a job returns for a cell that another process holds (its lock): running elsewhere, not failed.
BUSY = "busy"


class CellBusy(RuntimeError):
    """Another process holds the cell's lock."""


_HELD: dict[Path, int] = {}  # cells whose lock this process holds, and how many cell_lock calls hold it


@contextmanager
def cell_lock(root: Path) -> Iterator[None]:
    """Exclusive, non-blocking ``flock`` on ``root/.lock``; released when the process ends, however it ends.
    Re-entrant within a process: a job that holds a cell's lock (a pack, from training to the last
    evaluation) goes on through the stages that take it again."""
    key = Path(root).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    with _flock(root):
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]


@contextmanager
def _flock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    # a lock file overwritten with anything (garbage bytes included) is still a lock file: its text is only a note
    with open(root / LOCK, "a+", errors="replace") as fh:
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


def last_log_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a job's log (at most 120 characters of it, read from its last ``tail``
    bytes): what a job that died before it could write an error said last, e.g. srun's "task 0: User
    defined signal 2" for one signalled before Python had set its handler; "" where there is no log."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - tail))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    said = [line.strip() for line in lines if line.strip()]
    return said[-1][:120] if said else ""


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
    """``<cell>/evals/<key>.json``: the result of one grid point; its presence, with the files it lists
    (:func:`read_done`), marks the point done."""
    return CellPaths(Path(root)).evals / f"{key}.json"


REMADE = "its grid point counts as not done and `memorize sweep run` recomputes it"


def read_eval(root: Path, key: str, consequence: str = REMADE) -> dict | None:
    """The result of evaluation ``key`` of the cell at ``root``, None where there is none. A damaged file
    (truncated, emptied, overwritten: what a full disk or an interrupted copy leaves) counts as none: it is
    named once on stderr with its ``consequence`` (by default: the grid point is pending again, and the next
    ``sweep run`` recomputes it)."""
    path = eval_path(root, key)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        record = None
    if not isinstance(record, dict) or not {"cell", "eval", "config"} <= set(record):
        _damaged(path, "not a complete result record", consequence)
        return None
    return record


def checkpoint_records(root: Path, record: dict) -> tuple[list[dict], list[Path]]:
    """The result records of the scored checkpoints that a grid point's result ``record`` lists (its
    ``over_steps``), in its order, and the files that the next ``sweep run`` makes again: records gone or
    damaged, and files that a record lists and that are gone (:func:`own_to_remake`), where the checkpoint is there
    to evaluate again; each named once on stderr. A record gone whose checkpoint is gone too is left out:
    the curves lack its step."""
    paths = CellPaths(Path(root))
    found, remake, records = [], [], None
    for entry in record.get("over_steps") or []:
        if "eval" not in entry:
            records = _cell_records(root) if records is None else records
            at = _listed_inline(root, record, entry, records)
            found += [] if at is None else [at]
            continue
        step, path = int(entry["step"]), eval_path(root, entry["eval"])
        remakable = paths.checkpoint(step).is_file()
        consequence = (f"its grid point counts as not done and `memorize sweep run` evaluates step {step:,} again "
                       f"from its checkpoint" if remakable else
                       f"the curves leave step {step:,} out: its checkpoint is gone too, so only training the cell "
                       f"again would restore it")
        at = read_eval(root, entry["eval"], consequence)
        if at is None:
            if not path.exists():
                _damaged(path, "missing", consequence)
            remake += [path] if remakable else []
        else:
            found.append(at)
            remake += own_to_remake(root, entry["eval"], at)
    return found, remake


def _cell_records(root: Path) -> list[dict]:
    """Every readable result record of the cell at ``root``."""
    return [at for path in sorted(eval_path(root, "-").parent.glob("*.json")) if (at := read_eval(root, path.stem))]


def _listed_inline(root: Path, record: dict, entry: dict, records: list[dict]) -> dict | None:
    """The result record of a scored checkpoint that a sweep written before 2026-11-24 lists by a few of its
    columns and no key: every checkpoint was also evaluated into a record of its own, the one of the cell's
    ``records`` at that step with these values. None, named once, where there is none."""
    for at in records:
        if at.get("step") == entry["step"] and all(_same(at.get(k), v) for k, v in entry.items()):
            return at
    _damaged(eval_path(root, record["eval"]), f"it lists a scored checkpoint at step {entry['step']:,} whose own "
                                              f"result record is gone", "the curves leave that step out")
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal, counting two NaN (a measurement that JSON wrote as NaN) as equal."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


_REPORTED_DAMAGE: set[str] = set()  # damaged files already named in this process

COMPARE_TABLES = ("compare.json", "gap.csv")  # of a comparison: its summary and gap curves (every version wrote both)


def missing_files(root: Path, record: dict) -> list[Path]:
    """The files of the cell at ``root`` that the evaluation ``record`` lists and that are gone or empty: its
    samples, its per-sample scores, its comparison's summary and gap curves. (Whether one was overwritten
    shows only when it is read: where a figure reads it, it is named there.)"""
    files = record.get("files") or {}
    paths = [root / files[k] for k in ("samples", "scores") if files.get(k)]
    if files.get("compare"):
        paths += [root / files["compare"] / name for name in COMPARE_TABLES]
    return [path for path in paths if not path.is_file() or path.stat().st_size == 0]  # (emptied: as good as gone)


def how_gone(path: Path) -> str:
    """``emptied`` or ``missing``: how a file of :func:`missing_files` is gone."""
    return "emptied" if path.exists() else "missing"


def read_done(root: Path, key: str) -> dict | None:
    """:func:`read_eval`, and None as well where the result is :func:`to_remake`: the grid point is pending
    again and the next ``sweep run`` evaluates it again (seeded: the same samples and scores)."""
    record = read_eval(root, key)
    return None if record is None or to_remake(root, key, record) else record


def to_remake(root: Path, key: str, record: dict) -> list[Path]:
    """The files of the result ``record`` of evaluation ``key`` that the next ``sweep run`` makes again: its own
    (:func:`own_to_remake`) and its scored checkpoints' (:func:`checkpoint_records`)."""
    return own_to_remake(root, key, record) + checkpoint_records(root, record)[1]


def own_to_remake(root: Path, key: str, record: dict) -> list[Path]:
    """The files that the result ``record`` of evaluation ``key`` lists and that are gone (deleted from
    outside: :func:`missing_files`), where its checkpoint is there to make them again; named once on stderr.
    Where the checkpoint is gone too the result stands (named once: only training again restores them)
    and this is empty."""
    missing = missing_files(root, record)
    if not missing:
        return []
    checkpoint = CellPaths(root).checkpoint(int(record["step"])) if record.get("step") is not None else None
    why = how_gone(missing[0])
    if checkpoint is not None and checkpoint.is_file():
        _damaged(missing[0], why, "its grid point counts as not done and `memorize sweep run` evaluates it again "
                                  "from its checkpoint")
        return missing
    _damaged(missing[0], why, f"its grid point's checkpoint is gone too, so only training the cell again would "
                              f"restore it (delete {eval_path(root, key)} for that)")
    return []


def is_done(root: Path, key: str) -> bool:
    """Whether the cell at ``root`` has the (undamaged) result of evaluation ``key`` (:func:`read_done`)."""
    return read_done(root, key) is not None


def cell_dir(out: Path, point: GridPoint | str) -> Path:
    """``DIR/cells/<id>`` of a grid point or cell id."""
    return out / "cells" / (point if isinstance(point, str) else point.cell)


def _damaged(path: Path, why: str, consequence: str) -> None:
    """Name a damaged sweep file once per process, with what follows from it."""
    if str(path) not in _REPORTED_DAMAGE:
        _REPORTED_DAMAGE.add(str(path))
        print(f"memorize: {path} is damaged ({why}); {consequence}", file=sys.stderr)


@dataclass(frozen=True)
class _Bad:
    """What a damaged file of the sweep directory was read as: why it could not be read."""

    why: str


def _read_json(path: Path, default):
    """A small JSON record of the sweep directory; ``default`` where there is none, :class:`_Bad` where it
    cannot be parsed."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        return _Bad(f"{type(err).__name__}: {err}")


def _grid_table(points: list[GridPoint]) -> pd.DataFrame:
    return pd.DataFrame([{"cell": p.cell, "eval": p.key, **dict(p.point)} for p in points])


def _spec_grid(out: Path) -> pd.DataFrame | None:
    """The grid index that ``DIR/spec.yaml`` expands to (what :func:`prepare` wrote beside it as cells.csv),
    None where the spec there cannot be read."""
    try:
        return _grid_table(expand(load_spec(out / "spec.yaml")))
    except (ConfigError, OSError, ValueError, TypeError, KeyError):
        return None


def _listed_grid(out: Path) -> pd.DataFrame | _Bad | None:
    """``DIR/cells.csv`` as written, None where absent, ``_Bad`` where it is not a whole grid index."""
    path = out / "cells.csv"
    try:
        table = pd.read_csv(path, dtype={"cell": str, "eval": str})
    except FileNotFoundError:
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as err:
        return _Bad(f"{type(err).__name__}: {err}".splitlines()[0])
    if not {"cell", "eval"} <= set(table.columns) or table[["cell", "eval"]].isna().any().any():
        return _Bad("a row without its cell or evaluation key")
    return table


def left_out_points(out: Path, points: list[GridPoint]) -> list[dict]:
    """The finished grid points of the spec last launched into ``out`` (rows of its ``cells.csv``) whose cells
    are not among those of ``points``: after this launch its results and figures leave them out, though their
    cells stay. Empty where there is no readable grid index."""
    listed = _listed_grid(out) if out.is_dir() else None
    if not isinstance(listed, pd.DataFrame):
        return []
    cells = {p.cell for p in points}
    return [row for row in listed.to_dict("records")
            if row["cell"] not in cells and is_done(cell_dir(out, row["cell"]), row["eval"])]


def _same_points(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return list(zip(a["cell"], a["eval"])) == list(zip(b["cell"], b["eval"]))


def check_layout(out: Path) -> None:
    """Refuse a sweep directory written by an older layout (its cell ids mean something else). A damaged or
    missing ``sweep.json`` beside a grid index that this layout's expansion of ``spec.yaml`` reproduces is
    written again, with a line saying so."""
    marker = out / "sweep.json"
    record = _read_json(marker, None)
    if isinstance(record, dict) and record.get("layout") == LAYOUT:
        return
    if isinstance(record, dict) and "layout" in record:
        raise ConfigError(f"{out}: sweep layout {record['layout']!r}, this memorize reads {LAYOUT}")
    listed = _listed_grid(out)
    if record is None and listed is None:
        return  # not a sweep directory (yet)
    expected = _spec_grid(out)
    if expected is not None and isinstance(listed, pd.DataFrame) and _same_points(listed, expected):
        atomic_write_json(marker, {"layout": LAYOUT})
        print(f"memorize: {marker} was {'missing' if record is None else 'damaged'}; cells.csv and spec.yaml are "
              f"this layout's ({LAYOUT}), so it was written again", file=sys.stderr)
        return
    if record is None:
        raise ConfigError(f"sweep directory {out} {OLD_LAYOUT}")
    why = record.why if isinstance(record, _Bad) else "no layout in it"
    raise ConfigError(f"{marker} is damaged ({why}) and cells.csv with spec.yaml cannot tell the layout; if this "
                      f"version of memorize wrote the sweep, write {{\"layout\": {LAYOUT}}} into it")


def check_sweep_directory(out: Path, flag: str = "--out") -> None:
    """``out`` as a sweep's directory to create or reuse (:func:`memorize.io.check_directory`); a cell's
    directory (its ``cell.json``) is refused: the sweep's files and cells would lie among the cell's.
    ``flag``: how errors name the argument."""
    check_directory(out, flag)
    identity = CellPaths(out).identity
    if identity.is_file():
        raise ConfigError(f"{flag} {out} is a cell's directory ({identity.name}); give the sweep a directory of its "
                          f"own")


def sweep_name(out: Path) -> str | None:
    """The name of the sweep in the directory ``out`` (its ``spec.yaml``), None where there is none or the
    spec cannot be read."""
    try:
        spec = yaml.safe_load((out / "spec.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def check_same_sweep(name: str, out: Path) -> None:
    """Refuse to launch the sweep ``name`` into a directory that holds a sweep of another name
    (:func:`sweep_name`): its spec, grid index, results table and figures would be replaced by this one's.
    A spec of the same name may change anything else (grid, budgets, scoring): that is the same sweep
    carried on. Where the spec on disk cannot be read, nothing can be told and nothing is refused."""
    there = sweep_name(out)
    if there is not None and there != name:
        raise ConfigError(f"--out {out} holds the sweep {there!r} ({out / 'spec.yaml'}), not {name!r}: give another "
                          f"--out (or name this spec {there!r} to change that sweep)")


def check_launch(spec: SweepSpec, out: Path, points: list[GridPoint]) -> None:
    """Everything :func:`prepare` checks before it writes (a dry run checks the same): ``out`` as a sweep's
    directory of this layout and of this spec's name, every grid point's data and budget, and the score's
    networks."""
    check_sweep_directory(out)
    check_layout(out)
    check_same_sweep(spec.name, out)
    check_data(points, spec.score)
    check_networks(spec.score)
    check_budgets(out, points)


def check_budgets(out: Path, points: list[GridPoint]) -> None:
    """Refuse a grid point that could only fail: one not done whose cell was trained past its budget
    (``train.steps``) without keeping the checkpoint at it (:func:`memorize.train.resume_point`), as when
    a finished sweep is run again with fewer steps. Points that stop early (``train.stop_when``) choose
    their own step and are not checked."""
    for p in points:
        root = cell_dir(out, p.cell)
        if p.config.train.stop_when == "budget" and root.is_dir() and not is_done(root, p.key):
            try:
                resume_point(CellPaths(root), p.config.train.steps)
            except ConfigError as err:
                raise ConfigError(f"grid point ({p.label}): {err}") from None


def prepare(spec: SweepSpec, out: Path, points: list[GridPoint] | None = None) -> list[GridPoint]:
    """Validate every grid point (before anything is launched), then write the spec and the grid index.
    ``points``: the spec's grid points where the caller has expanded it already."""
    points = expand(spec) if points is None else points
    check_launch(spec, out, points)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep.json", {"layout": LAYOUT})
    atomic_write_text(out / "spec.yaml", yaml.safe_dump(to_dict(spec), sort_keys=False))
    atomic_write_text(out / "cells.csv", _grid_table(points).to_csv(index=False))
    return points


def read_jobs(out: Path) -> dict[str, str]:
    """``DIR/jobs.json``: the SLURM job id of each cell launched there (empty where none was, or where the
    file is damaged: named once, and the next launch records its jobs anew)."""
    jobs = _read_json(out / "jobs.json", {})
    if isinstance(jobs, dict):
        return jobs
    _damaged(out / "jobs.json", jobs.why if isinstance(jobs, _Bad) else "not a mapping of cell ids to job ids",
             "the cells' SLURM job ids are unknown here: their state is read from their own files, and the next "
             "launch writes the file again")
    return {}


def read_cancelled(out: Path) -> list[str]:
    """Job ids ``memorize sweep cancel`` cancelled (``DIR/cancelled.json``; SLURM without accounting forgets
    them); empty where the file is damaged (named once)."""
    ids = _read_json(out / "cancelled.json", [])
    if isinstance(ids, list):
        return ids
    _damaged(out / "cancelled.json", ids.why if isinstance(ids, _Bad) else "not a list of job ids",
             "cancelled jobs show as failed, and the next `memorize sweep cancel` writes the file again")
    return []


def unfinished_cells(out: Path) -> dict[str, list[str]]:
    """The cells of the current grid with a grid point not done: their evaluation keys."""
    keys = read_grid(out).groupby("cell")["eval"].apply(list).to_dict()
    return {cid: ks for cid, ks in keys.items() if not all(is_done(cell_dir(out, cid), k) for k in ks)}


def read_grid(out: Path) -> pd.DataFrame:
    """``DIR/cells.csv``: the grid points of the spec last launched into ``out``. Where it is damaged,
    missing or cut short (its points a strict prefix of what ``DIR/spec.yaml`` expands to; both are
    written by :func:`prepare`), it is written again from the spec, with a line saying so; where neither
    can be read, the error names both. A whole cells.csv is trusted over a spec.yaml that disagrees
    with it (a damaged spec may still parse); ``memorize sweep run`` writes both again."""
    check_directory(out, "sweep directory")  # (a file, or a path below one)
    check_layout(out)
    path, listed = out / "cells.csv", _listed_grid(out)
    if listed is None and not (out / "spec.yaml").is_file():
        raise FileNotFoundError(f"{out} is not a sweep directory (no cells.csv): run `memorize sweep run` first")
    if isinstance(listed, pd.DataFrame) and not _cut_short(path, listed, out):
        return listed
    expected = _spec_grid(out)
    if expected is None:
        why = "missing" if listed is None else listed.why if isinstance(listed, _Bad) else "cut short"
        raise ConfigError(f"{path} is damaged ({why}) and {out / 'spec.yaml'} cannot rebuild it: run "
                          f"`memorize sweep run SPEC --out {out}` with the sweep's spec to write both again")
    why = "missing" if listed is None else f"damaged ({listed.why})" if isinstance(listed, _Bad) else "cut short"
    atomic_write_text(path, expected.to_csv(index=False))
    print(f"memorize: {path} was {why}; written again from {out / 'spec.yaml'}", file=sys.stderr)
    return pd.read_csv(path, dtype={"cell": str, "eval": str})


def _cut_short(path: Path, listed: pd.DataFrame, out: Path) -> bool:
    """Whether a readable cells.csv lost its end: it does not end a line (every write ends one), or its
    points are a strict prefix of the spec's."""
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            return True
    expected = _spec_grid(out)
    return expected is not None and len(listed) < len(expected) and _same_points(listed, expected.iloc[:len(listed)])


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

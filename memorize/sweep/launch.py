"""Launching a sweep: which cells to run, how they are grouped into jobs, and handing the jobs to an
executor.

Executors: ``local`` runs jobs in subprocesses on this machine, ``--parallel`` at a time, in the
foreground (:mod:`memorize.sweep.local`); ``debug`` runs them in this process (for a debugger);
``slurm`` submits job arrays (chunked below SLURM's MaxArraySize) that run a snapshot of the code
taken at launch, records the job ids and returns unless ``wait`` (:mod:`memorize.sweep.slurm`).
The sweep directory is :mod:`memorize.sweep.layout`'s; results and status are
:mod:`memorize.sweep.results`'.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import submitit
import torch

from memorize.cell import CellPaths, resolve_device
from memorize.config import CellConfig, ConfigError, cell_id, to_dict
from memorize.sweep.job import BatchJob, CellJob, PackJob, checkpoint_grid
from memorize.sweep.layout import ERROR, cell_dir, check_launch, is_done, is_locked, left_out_points, prepare
from memorize.sweep.local import (LOCAL_TIMEOUT_MIN, run_local, share_out, slot_gpus, slot_parameters,
                                  threads_per_cell, visible_gpus, wait_until_free)
from memorize.sweep.slurm import check_slurm_here, queued_cells, slurm_executor, submit_slurm, wait_for_slurm
from memorize.sweep.snapshot import take_snapshot
from memorize.sweep.spec import GridPoint, SweepSpec, expand


def by_cell(points: list[GridPoint]) -> dict[str, list[GridPoint]]:
    """Grid points grouped by the cell they train (one job per cell)."""
    groups: dict[str, list[GridPoint]] = {}
    for p in points:
        groups.setdefault(p.cell, []).append(p)
    return groups


def _executor(kind: str, out: Path, spec: SweepSpec, code: dict | None = None, processes: int = 1) -> submitit.Executor:
    """A submitit executor for ``kind``: on SLURM :func:`memorize.sweep.slurm.slurm_executor`; a local
    one gives each job the GPUs this process sees (:func:`memorize.sweep.local.visible_gpus`; with several
    jobs at once, :func:`run_local` gives each its own share) and runs it as ``processes`` tasks."""
    if kind == "slurm":
        return slurm_executor(out, spec, code)
    executor = submitit.AutoExecutor(folder=out / "logs" / "%j", cluster=kind)
    if kind == "local":
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, tasks_per_node=processes,
                                   **slot_parameters(local_gpus()))
    return executor


def local_gpus() -> list[str]:
    """The GPUs local jobs may use (:func:`memorize.sweep.local.visible_gpus` of this process)."""
    return visible_gpus(os.environ, torch.cuda.device_count())


AUTO_PACK = 8  # --pack auto: cells trained together per job on this machine


def resolve_pack(pack: int | str, executor: str, processes: int) -> int:
    """``--pack``: a number of cells per job, or ``auto``: on this machine up to :data:`AUTO_PACK` cells that can
    train together (:func:`memorize.pack.pack_key`) per job, since a small cell's step is mostly overhead that
    a pack shares (on a GPU, kernel launches); each cell alone on SLURM (a job's resources, ``slurm:``, are
    sized for one cell) and where cells train data-parallel (packs train in one process)."""
    if pack != "auto":
        return int(pack)
    return 1 if executor == "slurm" or processes > 1 else AUTO_PACK


def describe_submission(kind: str, spec: SweepSpec, n: int, jobs: int | None = None, pack: str = "1",
                        processes: int | None = None, slots: int = 1) -> str:
    """What a launch of ``n`` cells as ``jobs`` jobs (fewer where cells are packed; default one per cell) does;
    ``pack``: the ``--pack`` setting as said; ``processes``: locally, how many processes run those jobs (None:
    a process per job, ``slots`` at a time)."""
    jobs = n if jobs is None else jobs
    packed = f" in {jobs} job{'' if jobs == 1 else 's'} (cells trained together: --pack {pack})" if jobs != n else ""
    if kind != "slurm":
        alone = " (--pack 1: each cell alone)" if pack == "1" and kind == "local" else ""
        run_by = (f", run by {processes} process{'' if processes == 1 else 'es'} (one per --parallel slot, each "
                  f"running its jobs one after another)" if processes else
                  f", {slots} at a time (--parallel {slots}), each job a process of its own" if slots > 1 else "")
        return f"{n} cells would run{packed}{alone} with the {kind} executor{run_by}"
    s = spec.slurm
    arrays = -(-jobs // s.max_array_size) if jobs else 0
    parallel = f" ({s.processes} processes training it data-parallel)" if s.processes > 1 else ""
    return (f"{n} cells would go to SLURM{packed} as {arrays} job array(s) of at most {s.max_array_size} jobs, "
            f"{s.array_parallelism} at a time; each job{parallel}: {s.gpus_per_cell} GPU, {s.cpus_per_cell} CPUs, "
            f"{s.mem_gb:g} GB, {s.time_min} min, partition={s.partition}, account={s.account}, qos={s.qos}, "
            f"constraint={s.constraint}, extra={s.extra}")


def bf16_twins(out: Path, todo: dict[str, list[GridPoint]]) -> list[str]:
    """The cells of ``todo`` not yet begun in ``out`` (float32 training, ``train.amp: false``) whose twin with
    ``train.amp: true``, the default of earlier versions, was begun there: those twins' ids. ``train.amp`` is
    part of a cell, so the twins are not resumed unless the sweep sets it back."""
    twins = []
    for cid, points in todo.items():
        cfg = points[0].config
        if cfg.train.amp or CellPaths(cell_dir(out, cid)).identity.is_file():
            continue
        twin = cell_id(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=True)))
        if CellPaths(cell_dir(out, twin)).identity.is_file():
            twins.append(twin)
    return twins


def say_bf16_twins(out: Path, todo: dict[str, list[GridPoint]]) -> None:
    """One line where :func:`bf16_twins` finds any: what runs anew, and the setting that resumes the twins."""
    twins = bf16_twins(out, todo)
    if twins:
        cells = "1 cell of this grid was" if len(twins) == 1 else f"{len(twins)} cells of this grid were"
        print(f"memorize: {cells} begun in {out} with train.amp: true (bf16 autocast, the default before "
              f"2026-12-05) and not resumed: trained anew in float32; add --set base.train.amp=true to resume "
              f"{'it' if len(twins) == 1 else 'them'} instead", file=sys.stderr, flush=True)


def unkept_checkpoints(out: Path, todo: dict[str, list[GridPoint]], score: Any) -> dict[str, list[int]]:
    """The cells of ``todo`` trained past steps of the log-spaced grid that ``score.checkpoints`` scores without
    keeping a checkpoint there (trained before it was set): those steps, by cell. They are left out of the
    cell's curve, never trained again (:func:`memorize.sweep.job.scored_steps`)."""
    lost = {}
    for cid, points in todo.items():
        kept = CellPaths(cell_dir(out, cid)).checkpoint_steps()
        grid = checkpoint_grid(score, max(p.config.train.steps for p in points))
        missing = [s for s in grid if kept and s < kept[-1] and s not in kept]
        if missing:
            lost[cid] = missing
    return lost


def say_unkept_checkpoints(out: Path, todo: dict[str, list[GridPoint]], score: Any) -> None:
    """One line where :func:`unkept_checkpoints` finds any: which steps the curves lack, and what scores them."""
    lost = unkept_checkpoints(out, todo, score)
    if lost:
        steps = sorted({s for missing in lost.values() for s in missing})
        shown = ", ".join(f"{s:,}" for s in steps[:6]) + (", ..." if len(steps) > 6 else "")
        cells = "1 cell of this grid was" if len(lost) == 1 else f"{len(lost)} cells of this grid were"
        print(f"memorize: {cells} trained in {out} past steps that score.checkpoints scores ({shown}) without "
              f"keeping their checkpoints: their curves will have only the steps kept; run the sweep into a new "
              f"--out to score the whole training time", file=sys.stderr, flush=True)


def say_left_out(out: Path, left_out: list[dict], n: int) -> None:
    """One line where a launch leaves out finished grid points of the spec launched before
    (:func:`memorize.sweep.layout.left_out_points`): what the table will show, and how to show them again."""
    if not left_out:
        return
    first = ", ".join(f"{k}={v}" for k, v in left_out[0].items() if k not in ("cell", "eval"))
    one = len(left_out) == 1
    points = "1 finished grid point" if one else f"{len(left_out)} finished grid points"
    print(f"memorize: {points} of the spec last launched into {out} {'is' if one else 'are'} not in this one "
          f"({first}{'' if one else ', ...'}): results.csv and the figures will show this spec's {n} grid "
          f"point{'' if n == 1 else 's'} only; {'its cell stays' if one else 'their cells stay'} in {out / 'cells'}, "
          f"and launching a spec that lists {'it' if one else 'them'} again shows {'it' if one else 'them'} without "
          f"computing anything", file=sys.stderr, flush=True)


def run_sweep(spec: SweepSpec, out: str | Path, executor: str = "local", parallel: int | None = None,
              dry_run: bool = False,
              wait: bool = False, wait_timeout: float = 24 * 3600, progress: bool = True,
              threads: int | None = None, snapshot: bool = True, pack: int | str = 1, processes: int = 1) -> dict:
    """Launch the cells of ``spec`` that have unfinished grid points; returns counts by what happened.

    One job per cell: it trains the cell once, to each budget its grid points ask for, and
    evaluates each point, with ``threads_per_cell`` torch threads. Counts are of cells, ``points``
    of grid points. ``snapshot`` (SLURM): the jobs run a copy of the package taken now
    (:mod:`memorize.sweep.snapshot`; ``report["code"]`` is its record), not the code on disk when
    they start. ``pack`` > 1: up to that many cells of one architecture train together in one job
    (:mod:`memorize.pack`, :func:`pack_units`); ``auto``: :func:`resolve_pack`. Locally, the jobs are shared
    out among the ``parallel`` slots by their :func:`training_work`, longest first, and each slot's run one
    after another in one process (:func:`memorize.sweep.local.run_local`). ``parallel`` (local): jobs at a
    time, default one per GPU where cells train on GPUs (each job then sees its own GPU), else 1.
    ``processes`` (local; on SLURM ``slurm.tasks_per_cell``): processes training each cell data-parallel,
    one per GPU of its job where cells train on GPUs (:func:`run_cell_parallel`)."""
    out = Path(out)
    flag = "--processes-per-cell"
    if executor == "slurm":
        if processes > 1:
            raise ConfigError(f"--processes-per-cell {processes}: for the local executor; on SLURM the processes "
                              f"of a cell are slurm.tasks_per_cell (--tasks-per-cell)")
        processes = spec.slurm.processes
        flag = "slurm.tasks_per_cell" if spec.slurm.tasks_per_cell else "slurm.gpus_per_cell"
    said = f"auto: up to {resolve_pack(pack, executor, processes)}" if pack == "auto" else str(pack)
    pack = resolve_pack(pack, executor, processes)
    here = local_gpus() if executor != "slurm" else []  # the GPUs of this machine's cells (debug: in-process)
    gpus = here if executor == "local" else []
    points = expand(spec)
    if executor != "slurm":
        check_local_devices(points, len(here))
    on_gpu = bool(gpus) and any(not trains_on_cpu(p.config) for p in points)
    check_processes(points, processes, flag, executor, pack, len(gpus) if on_gpu else None, parallel)
    if executor == "slurm" and not dry_run:
        check_slurm_here()
    left_out = left_out_points(out, points)
    if dry_run:
        check_launch(spec, out, points)
    else:
        points = prepare(spec, out, points)
    say_left_out(out, left_out, len(points))
    cells = by_cell(points)
    if parallel is None:
        parallel = max(1, len(gpus) // processes) if on_gpu else 1
    slots = 1 if executor != "local" else max(1, parallel)  # jobs at a time (local)
    todo = {cid: ps for cid, ps in cells.items() if not all(is_done(cell_dir(out, cid), p.key) for p in ps)}
    busy = [cid for cid in todo if is_locked(cell_dir(out, cid))]
    # an earlier launch's jobs still in SLURM's queue keep their cells: not submitted twice
    queued = queued_cells(out, [cid for cid in todo if cid not in busy]) if executor == "slurm" else []
    todo = {cid: ps for cid, ps in todo.items() if cid not in busy and cid not in queued}
    report = {"cells": len(cells), "points": len(points),
              "done_before": len(cells) - len(todo) - len(busy) - len(queued), "running_elsewhere": len(busy),
              "queued": len(queued), "launched": 0, "failed": 0}
    say_bf16_twins(out, todo)
    say_unkept_checkpoints(out, todo, spec.score)
    if dry_run:
        for p in points:
            state = ("done" if is_done(cell_dir(out, p.cell), p.key) else
                     "running" if p.cell in busy else "queued" if p.cell in queued else "to run")
            print(f"{p.cell}  {p.key}  {state:8s}  {p.label}")
        units = pack_units(todo, pack, slots)
        for unit in units:
            if len(unit) > 1:
                print(f"pack of {len(unit)}: {' '.join(unit)}")
        batches = (len(share_out(units, slots)) if executor == "local" and processes == 1 and (slots == 1 or on_gpu)
                   else None)
        print(describe_submission(executor, spec, len(todo), len(units), said, batches, slots))
        return report
    if not todo:
        if executor != "slurm":
            wait_until_free(out, busy, progress)
        return report
    score = dataclasses.asdict(spec.score)

    cell_threads = threads_per_cell(executor, parallel, threads)

    def job(unit: list[str]) -> CellJob | PackJob:
        if len(unit) == 1:
            return CellJob(str(cell_dir(out, unit[0])), [to_dict(p.config) for p in todo[unit[0]]], score, cell_threads)
        return PackJob([(str(cell_dir(out, cid)), [to_dict(p.config) for p in todo[cid]]) for cid in unit], score,
                       cell_threads)

    launched = time.time()

    def finished(cid: str) -> bool:  # its results written, or its error (this launch's, not one left from before)
        try:
            failed_now = (cell_dir(out, cid) / ERROR).stat().st_mtime >= launched
        except OSError:
            failed_now = False
        return failed_now or all(is_done(cell_dir(out, cid), p.key) for p in todo[cid])

    units = pack_units(todo, pack, slots)

    if executor == "slurm":
        code = take_snapshot(out) if snapshot else None
        report["code"] = code
        report["launched"] = submit_slurm(_executor(executor, out, spec, code, processes), out, units, job,
                                          spec.slurm.max_array_size)
        if wait:
            report.update(wait_for_slurm(out, list(todo) + queued, wait_timeout))
        return report
    labels = {cid: " | ".join(p.label for p in ps) for cid, ps in todo.items()}
    per = f"{cell_threads} thread{'s' if cell_threads != 1 else ''} per {'job' if pack > 1 else 'cell'}" + \
        (f", {processes} processes per cell" if processes > 1 else "")
    elsewhere = list(busy)
    shares = slot_gpus(gpus[:slots * processes] if on_gpu and processes > 1 else gpus, slots) if gpus else None
    # One process per slot saves each job a Python start, its imports and (on a GPU) a CUDA context, but fixes
    # which slot runs what; on the CPU with several slots, jobs taken by the first free slot balance better.
    # A data-parallel cell's processes join one process group per job: each cell a job of its own.
    per_slot = processes == 1 and (slots == 1 or on_gpu)
    work = {cid: training_work(longest_budget(ps)) for cid, ps in todo.items()}
    run_local(_executor(executor, out, spec, processes=processes), out, units,
              lambda batch: BatchJob([job(unit) for unit in batch]), labels, slots, report,
              title=f"sweep {spec.name} ({per})", debug=executor == "debug", progress=progress,
              gpus=shares, elsewhere=elsewhere, one_process_per_slot=per_slot, finished=finished,
              work=lambda unit: sum(work[cid] for cid in unit))
    wait_until_free(out, elsewhere, progress)  # a second launch ends, as the first, with every result
    return report


def check_local_devices(points: list[GridPoint], gpus: int) -> None:
    """Where the cells run on this machine (the local and debug executors), each grid point's
    ``train.device`` must be one of its ``gpus`` GPUs or the CPU: ``cuda`` on a machine without one would
    fail every cell once launched. On SLURM the devices are the nodes', not checked here."""
    for p in points:
        try:
            resolve_device(p.config.train.device, "train.device", gpus)
        except ConfigError as err:
            raise ConfigError(f"grid point ({p.label}): {err}") from None


def check_processes(points: list[GridPoint], processes: int, flag: str, executor: str, pack: int, gpus: int | None,
                    parallel: int | None) -> None:
    """Refuse, before anything is written, a data-parallel launch (``processes`` > 1 per cell, set by ``flag``)
    that cannot run:
    packed cells (a pack batches several cells in one process; data parallelism splits one cell over
    several: they are for opposite sizes, and packs train in one process), the debug executor (one
    process), a ``train.batch_size`` that does not divide among the processes, or fewer local ``gpus``
    (None: cells train on the CPU) than the ``parallel`` cells' processes."""
    if processes <= 1:
        return
    if pack > 1:
        raise ConfigError(f"--pack {pack}: packed cells train in one process; with {flag} {processes} each cell "
                          f"trains alone (drop one of them)")
    if executor == "debug":
        raise ConfigError(f"{flag} {processes}: the debug executor runs one process; use --executor local")
    for p in points:
        if p.config.train.batch_size % processes:
            raise ConfigError(f"train.batch_size: {p.config.train.batch_size} (grid point {p.label}) does not "
                              f"divide among the {processes} processes of a cell ({flag})")
    if gpus is not None and processes * (parallel or 1) > gpus:
        raise ConfigError(f"{flag} {processes}" + (f" with --parallel {parallel}" if parallel else "") +
                          f" needs {processes * (parallel or 1)} GPUs, one per process; this process sees {gpus}")


def trains_on_cpu(cfg: CellConfig) -> bool:
    """Whether a cell's training runs on this machine's CPU (``train.device`` cpu, or auto without a GPU)."""
    return cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available())


def longest_budget(points: list[GridPoint]) -> CellConfig:
    """The config of a cell's grid point with the most training steps: what its job trains to."""
    return max((p.config for p in points), key=lambda c: c.train.steps)


def training_work(cfg: CellConfig) -> float:
    """A cell's training work up to a constant, to balance a local launch's jobs: steps x batch size x its
    network's multiply-adds per image relative to its width (U-Net: channels^2 x the sum over levels of
    mult^2 x blocks / 4^level, each level at a quarter of the pixels of the one above; DiT and MLP:
    width^2 x depth). Comparable among the cells of one dataset and architecture, as a sweep's are."""
    m = cfg.model
    if m.arch == "unet":
        net = m.channels ** 2 * sum(mult ** 2 * m.blocks_per_level / 4 ** level
                                    for level, mult in enumerate(m.channel_mult))
    else:
        net = m.width ** 2 * m.depth
    return float(cfg.train.steps * cfg.train.batch_size * net)


def pack_units(todo: dict[str, list[GridPoint]], pack: int, slots: int = 1) -> list[list[str]]:
    """The jobs of a launch: with ``pack`` > 1, cells that can train together (equal
    :func:`memorize.pack.pack_key` of their longest-budget config) in as few packs of at most ``pack``
    as they fit, of sizes differing by at most one (12 cells at ``pack`` 10: two packs of 6), each pack
    consecutive cells in grid order; every other cell alone. ``slots``: jobs that run at once (a local
    sweep's ``--parallel``); while there are fewer jobs than that, the largest pack
    is halved, so no slot waits idle at the start. Only packs that train on the CPU are halved
    (:func:`trains_on_cpu`): on a GPU, packing is what saves the launches, so a pack stays whole."""
    if pack <= 1:
        return [[cid] for cid in todo]
    from memorize.pack import pack_key

    groups: dict[str, list[str]] = {}
    for cid, points in todo.items():
        key = pack_key(longest_budget(points))
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



"""One sweep cell as a job: for each of its grid points (budgets, sampling settings), train ->
sample -> score -> compare -> ``evals/<key>.json``.

Every step resumes from or reuses what is on disk (training from its last checkpoint,
samples and scores when their settings match), so a job killed anywhere and run again
finishes with the same results and never redoes finished work. ``evals/<key>.json`` is written
last, atomically: its presence, with the samples, scores and comparison it lists, marks that grid
point done (:func:`memorize.sweep.layout.read_done`).

:class:`CellJob` is the Submitit callable. It is ``Checkpointable``, so SLURM timeouts and
preemptions requeue it; the requeued job holds only the cell's directory and configs and
resumes from the files, never from state in the pickled object. When SLURM signals the
time limit (``slurm.signal_delay_s`` ahead) during training, the cell first writes a
checkpoint at the next step boundary (:func:`memorize.train.request_checkpoint`), then
Submitit requeues it, at most ``slurm.max_requeues`` times for time limits; a signal in any
other stage requeues at once and the stage starts again. A file lock in the cell directory
keeps two processes from working on one cell.

A job of several tasks (``slurm.tasks_per_cell``, or the local executor's ``--processes-per-cell``) trains
its cell data-parallel (:mod:`memorize.distributed`): rank 0 runs the cell as one process would, and each
training it starts is started on every rank (:func:`run_cell_parallel`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit
import torch

from memorize import distributed
from memorize.cell import CellPaths, resolve_device
from memorize.config import CellConfig, cell_id, from_dict, sample_settings, settings_key, to_dict
from memorize.io import atomic_write_json, progress_note
from memorize.train import CheckpointRequested, request_checkpoint
from memorize.sweep.layout import (BUSY, ERROR, CellBusy, cell_lock, eval_path, is_done, own_to_remake, read_done,
                                   read_eval, write_error)
from memorize.sweep.results import result_record
from memorize.sweep.spec import eval_settings, twin_config

# What a cell's trainings go through: memorize.train.train, or a data-parallel job's rank 0 (ParallelTraining)
Trainer = Callable[..., dict]


def training_at(root: Path, step: int) -> dict:
    """Training figures of the cell at checkpoint ``step``: parameters and the last logged losses."""
    from memorize.cell import checkpoint_at, load_checkpoint
    from memorize.train import losses_at

    state = load_checkpoint(checkpoint_at(root, step))
    return {"params": state["params"], "params_total": state["params_total"], "train_seconds": state["seconds"],
            "sigma_data": state.get("sigma_data", state["config"]["diffusion"]["sigma_data"]),
            **losses_at(state["log"], step)}


def samples_name(cfg: CellConfig, step: int) -> str:
    """The name of the trained samples an evaluation of ``cfg`` at checkpoint ``step`` draws and scores."""
    return f"trained-{step:07d}-{settings_key(sample_settings(cfg.sample), 8)}"


def evaluate(root: Path, cfg: CellConfig, score: Any, progress: bool = False, stopped_at: int | None = None,
             trainer: Trainer | None = None) -> dict:
    """The result of the trained cell at ``root`` at budget ``cfg.train.steps`` under ``cfg.sample`` and
    ``score``: sample, score with both criteria, compare with the empirical denoiser, and (with
    ``score.checkpoints``) the same for every kept checkpoint up to the budget. Every artefact is
    named by its settings and reused when present; the summary goes to ``evals/<key>.json``.
    ``stopped_at``: the step ``train.stop_when`` ended the cell at, where the results are taken instead.
    ``trainer``: what trains the twin (default :func:`memorize.train.train`)."""
    from memorize.compare import compare_cell, disjoint_consistency
    from memorize.generate import drawing_seconds, sample_cell
    from memorize.score import score_cell
    from memorize.train import train

    trainer = trainer or train

    settings = eval_settings(cfg, score)
    key = settings_key(settings)
    done = read_done(root, key)
    if done is not None:
        return done
    done = read_eval(root, key)
    if done is not None and not own_to_remake(root, key, done):  # only scored checkpoints' results to make again
        for entry in done["over_steps"]:
            if "eval" in entry:  # (sweeps before 2026-11-24 listed them by value: those are read, never remade)
                evaluate(root, *at_checkpoint(cfg, score, entry["step"]), progress)
        return done
    step = stopped_at or cfg.train.steps
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):
        progress_note(root, f"{stage} (step {step})")
        t = time.perf_counter()
        with torch.profiler.record_function(f"memorize.{stage}"):  # the stage by name in a profiler's trace
            result = fn(*args, **kwargs)
        timings[stage] = round(time.perf_counter() - t, 2)
        return result

    samples = samples_name(cfg, step)
    scoring = [score.embedder, score.ratio, score.threshold, score.target_fpr, score.features]
    measure = f"{samples}-{settings_key(scoring, 8)}"
    drawn = timed("sample", sample_cell, root, cfg.sample, "trained", name=samples, device=cfg.train.device,
                  progress=progress, step=step)
    if (seconds := drawing_seconds(drawn)) is not None:  # the drawing's own time (a pack's share: drawn before)
        timings["sample"] = round(seconds, 2)
    scores = timed("score", score_cell, root, samples, score.embedder, score.ratio, score.threshold,
                   device=cfg.train.device, progress=progress, name=measure, target_fpr=score.target_fpr,
                   features=score.features)
    twin: dict[str, Any] = {}
    if score.consistency:  # the same experiment on the disjoint subset; same-seed samples compared
        twin_cfg = twin_config(cfg)
        twin_root = root.parent / cell_id(twin_cfg)
        with cell_lock(twin_root):
            timed("train twin", trainer, twin_cfg, twin_root, progress=progress)
            timed("sample twin", sample_cell, twin_root, cfg.sample, "trained", name=samples, device=cfg.train.device,
                  progress=progress, step=step)
        twin = timed("consistency", disjoint_consistency, root, twin_root, samples, score.embedder,
                     scores["cos"]["threshold"], device=cfg.train.device)
        twin["cell"] = twin_root.name
    compared, compare_dir = {}, None
    if score.compare:
        # the aligned ELS machine's comparison in a folder of its own, beside those of the rule that records none
        compare_dir = f"compare/{measure}" + ("-aligned" if score.local and score.els_boundary == "aligned" else "")
        compared = timed("compare", compare_cell, root, samples, score.embedder, scores["cos"]["threshold"],
                         device=cfg.train.device, progress=progress, step=step, out_dir=compare_dir,
                         local=score.local, boundary=score.els_boundary)
    over_steps = []
    if score.checkpoints:  # the training-time view, through this same function
        for ckpt in scored_steps(root, step):
            r = evaluate(root, *at_checkpoint(cfg, score, ckpt), progress)
            over_steps.append({"step": ckpt, "eval": r["eval"]})
    summary = result_record(root, cfg, score, key, step, training_at(root, step), scores, compared, twin, timings,
                            files={"samples": f"samples/{samples}.npz", "scores": f"scores/{measure}.csv",
                                   "compare": compare_dir},
                            over_steps=over_steps, settings=settings)
    atomic_write_json(eval_path(root, key), summary)
    return summary


def checkpoint_grid(score: Any, budget: int) -> list[int]:
    """The log-spaced steps a cell is checkpointed at for ``score.checkpoints`` (none without it)."""
    from memorize.train import log_spaced_steps

    return log_spaced_steps(score.checkpoints_from, score.checkpoints_per_decade, budget) if score.checkpoints else []


def at_checkpoint(cfg: CellConfig, score: Any, step: int) -> tuple[CellConfig, Any]:
    """The config and score settings of a checkpoint's evaluation: ``score.checkpoint_samples`` samples scored
    with both criteria and the quality metrics, no comparisons, no twin."""
    train = dataclasses.replace(cfg.train, steps=step, stop_when="budget")
    sample = dataclasses.replace(cfg.sample, num=score.checkpoint_samples)
    return (dataclasses.replace(cfg, train=train, sample=sample),
            dataclasses.replace(score, compare=False, checkpoints=False, consistency=False))


def stop_step(root: Path, cfg: CellConfig, score: Any, grid: tuple[int, ...], progress: bool = False,
              trainer: Trainer | None = None) -> int | None:
    """``train.stop_when: memorization_converged``: train the cell from checkpoint to checkpoint of ``grid`` up
    to the budget, scoring each, and return the step where memorization converged
    (:func:`memorize.timescales.memorization_converged`), or None (trained to the budget). A re-run finds
    the checkpoints and their scores on disk and only reads them."""
    from memorize.timescales import memorization_converged
    from memorize.train import train

    trainer = trainer or train
    ratios = []
    for step in grid:
        c, s = at_checkpoint(cfg, score, step)
        trainer(c, root, progress=progress, keep_steps=grid)
        ratios.append(evaluate(root, c, s, progress)["mem_nn"])
        if step < cfg.train.steps and memorization_converged(ratios, cfg.train.stop_window, cfg.train.stop_tolerance):
            return step
    return None


def scored_steps(root: Path, budget: int) -> list[int]:
    """The checkpoints scored for the training-time view up to ``budget``: the log-spaced grid and every
    other kept checkpoint, where on disk (a cell trained before ``score.checkpoints`` was set lacks the
    grid's earlier steps: they are left out, never retrained)."""
    return [s for s in CellPaths(root).checkpoint_steps() if s <= budget]


def run_cell(root: str | Path, configs: list[CellConfig], score: Any, progress: bool = False,
             trainer: Trainer | None = None) -> list[dict]:
    """Train the cell at ``root`` to each budget of ``configs`` (shortest first: one run, extended) and
    evaluate it there; returns the evaluation summaries. Finished evaluations are read, not redone.
    ``trainer``: what trains (default :func:`memorize.train.train`)."""
    from memorize.train import train

    trainer = trainer or train
    root = Path(root)
    configs = sorted(configs, key=lambda c: c.train.steps)
    keys = [settings_key(eval_settings(c, score)) for c in configs]
    done = [read_done(root, k) for k in keys]
    if all(record is not None for record in done):
        return done
    with cell_lock(root):
        (root / ERROR).unlink(missing_ok=True)
        results = []
        grid = tuple(checkpoint_grid(score, configs[-1].train.steps))
        stop = None
        if configs[-1].train.stop_when != "budget":
            stop = stop_step(root, configs[-1], score, grid, progress, trainer)
        for cfg, key in zip(configs, keys):
            stopped = stop if stop is not None and stop < cfg.train.steps else None
            if not is_done(root, key) and stopped is None and not CellPaths(root).checkpoint(cfg.train.steps).is_file():
                trainer(cfg, root, progress=progress, keep_steps=grid)  # (its budget's checkpoint: trained before)
            results.append(evaluate(root, cfg, score, progress, stopped_at=stopped, trainer=trainer))
        return results


class ParallelTraining:
    """Rank 0's trainer in a data-parallel cell job: each training it is asked for is first sent to the other
    ranks (:func:`follow_training`), then run on every rank at once (:func:`memorize.train.train` with the
    job's ranks)."""

    def __init__(self, r: distributed.Ranks):
        self.ranks = r
        self.training = False  # inside a training: the other ranks are too, and end it as rank 0 does

    def __call__(self, cfg: CellConfig, root: str | Path, progress: bool = False,
                 keep_steps: tuple[int, ...] = ()) -> dict:
        from memorize.train import train

        distributed.from_main((to_dict(cfg), str(root), tuple(keep_steps)), self.ranks)
        self.training = True
        summary = train(cfg, root, progress=progress, keep_steps=tuple(keep_steps), ranks=self.ranks)
        self.training = False
        return summary

    def finish(self) -> None:
        """Tell the other ranks, waiting for the next training, that there is none (not needed where a
        training raised: every rank raised it)."""
        if not self.training:
            distributed.from_main(None, self.ranks)


def follow_training(r: distributed.Ranks) -> None:
    """The other ranks of a data-parallel cell job: run each training rank 0 sends, until it sends None."""
    from memorize.train import train

    while (call := distributed.from_main(None, r)) is not None:
        cfg, root, keep_steps = call
        train(from_dict(CellConfig, cfg), root, progress=False, keep_steps=keep_steps, ranks=r)


def run_cell_parallel(root: Path, configs: list[CellConfig], score: Any, r: distributed.Ranks) -> list[dict] | None:
    """:func:`run_cell` by the ``r.world`` tasks of one job: rank 0 runs it, and every training it starts (the
    cell's budgets, its twin, ``train.stop_when``'s segments) runs data-parallel on all the ranks, which
    wait in between while rank 0 alone samples, scores, compares and writes. Returns rank 0's results
    (None on the other ranks)."""
    device = resolve_device(configs[0].train.device, "train.device")
    if device.type == "cuda":
        device = distributed.rank_device(r, torch.cuda.device_count())
    distributed.start(r, device)
    try:
        if not r.main:
            follow_training(r)
            return None
        lead = ParallelTraining(r)
        try:
            return run_cell(root, configs, score, trainer=lead)
        finally:
            lead.finish()
    finally:
        distributed.stop(r)


def _preemption_signal() -> tuple[int, Any]:
    """The signal SLURM sends ahead of a time limit or a preemption (submitit's, USR2 by default) and the
    handler submitit installed for it in this process (None where there is none: the debug executor)."""
    from submitit.core.job_environment import SignalHandler
    from submitit.slurm.slurm import SlurmJobEnvironment

    signum = getattr(signal, f"SIG{SlurmJobEnvironment.USR_SIG}", signal.SIGUSR2)
    handler = signal.getsignal(signum)
    return signum, handler if isinstance(getattr(handler, "__self__", None), SignalHandler) else None


def _checkpoint_first(submitit_handler: Any) -> Any:
    """A handler for the preemption signal: a running training loop writes a checkpoint at its next step
    and raises :class:`CheckpointRequested` (``CellJob`` then hands over to submitit); outside training,
    submitit's own handler requeues the job at once."""
    def handler(signum: int, frame: Any) -> None:
        if not request_checkpoint():
            submitit_handler(signum, frame)
    return handler


@contextmanager
def job_environment(threads: int | None, what: str) -> Iterator[None]:
    """What a cell job (``CellJob``, ``PackJob``) runs inside: the torch threads it was allotted (given at
    launch, else the CPUs SLURM gave the task), and, under SLURM, the time-limit signal turned into a
    checkpoint at the next training step before submitit requeues the job (a ``CheckpointRequested``
    from training is handed over to submitit here). Restores both on the way out: the debug executor
    runs jobs in the caller's process."""
    previous_threads = torch.get_num_threads()
    threads = threads or os.environ.get("SLURM_CPUS_PER_TASK")
    if threads:
        torch.set_num_threads(int(threads))
    signum, submitit_handler = _preemption_signal()
    if submitit_handler is not None:
        signal.signal(signum, _checkpoint_first(submitit_handler))
    try:
        yield
    except CheckpointRequested as stop:  # signalled in training: checkpoints written, now let submitit requeue
        if submitit_handler is None:
            raise
        if distributed.job_ranks().main:  # the task that requeues (the others end: rank 0 requeues the whole job)
            print(f"memorize: {what}: signalled by SLURM; checkpoint written at step {stop.step}, requeueing "
                  f"(SLURM_RESTART_COUNT={os.environ.get('SLURM_RESTART_COUNT', 0)})", file=sys.stderr, flush=True)
        try:
            submitit_handler(signum, None)  # requeues and exits, or raises where requeues are used up
        except Exception as err:
            raise RequeuesUsedUp(f"{err} (training saved at step {stop.step}; `memorize sweep run` again "
                                 f"resumes it)") from err
        raise
    finally:
        torch.set_num_threads(previous_threads)
        if submitit_handler is not None:
            signal.signal(signum, submitit_handler)


class RequeuesUsedUp(RuntimeError):
    """SLURM's time limit came again after ``slurm.max_requeues`` requeues: the job ends; a later run resumes."""


class CellJob(submitit.helpers.Checkpointable):
    """Submitit callable for one cell (all its grid points); holds only plain data so it pickles small and
    resumes from disk."""

    def __init__(self, root: str, configs: list[dict], score: dict, threads: int | None = None):
        self.root, self.configs, self.score, self.threads = str(root), configs, score, threads

    def __call__(self) -> list[dict] | dict | None:
        """The cell's evaluation summaries, or ``{BUSY: why}`` where another process holds the cell; in a job
        of several tasks, rank 0's, and None on the others (:func:`run_cell_parallel`)."""
        from memorize.sweep.spec import ScoreConfig

        root = Path(self.root)
        r = distributed.job_ranks()
        threads = max(1, self.threads // r.world) if self.threads else None  # the cell's threads, shared out
        try:
            configs, score = [from_dict(CellConfig, c) for c in self.configs], from_dict(ScoreConfig, self.score)
            with job_environment(threads, root.name):
                if r.world > 1:
                    return run_cell_parallel(root, configs, score, r)
                return run_cell(root, configs, score)
        except CellBusy as err:  # another launch has it: it trains there, this job has nothing to do
            return {BUSY: str(err)}
        except Exception as err:  # the message first where it says what to do
            if isinstance(err, CheckpointRequested) and not r.main:
                return None  # signalled in training: rank 0 requeues the job, and these tasks with it
            if r.main:
                head = f"{err}\n" if isinstance(err, RequeuesUsedUp) else ""
                write_error(root, head + traceback.format_exc())
            raise

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Requeue a fresh job over the same directory: all progress lives in the cell's files.
        return submitit.helpers.DelayedSubmission(CellJob(self.root, self.configs, self.score, self.threads))


class PackJob(submitit.helpers.Checkpointable):
    """Submitit callable for cells trained together (:mod:`memorize.pack`): trains every cell to its largest
    budget in one batched computation, then evaluates each cell as :class:`CellJob` would. Returns, per
    cell directory, None or the error that stopped that cell (written to its ``error.txt``); one cell
    failing does not stop the others."""

    def __init__(self, cells: list[tuple[str, list[dict]]], score: dict, threads: int | None = None):
        self.cells, self.score, self.threads = cells, score, threads

    def __call__(self) -> dict[str, str | None]:
        from memorize.pack import train_packed
        from memorize.sweep.spec import ScoreConfig

        score = from_dict(ScoreConfig, self.score)
        cells = {Path(root): sorted((from_dict(CellConfig, c) for c in configs), key=lambda c: c.train.steps)
                 for root, configs in self.cells}
        outcome: dict[str, str | None] = {}
        with job_environment(self.threads, f"pack of {len(cells)} cells"), ExitStack() as locks:
            # each cell's lock held from its training to its last evaluation: another launch that finds the
            # cells free finds them done
            mine = {}
            for root, cfgs in cells.items():
                try:
                    locks.enter_context(cell_lock(root))
                    mine[root] = cfgs
                except CellBusy as err:
                    outcome[str(root)] = f"{BUSY}: {err}"
            todo = {root: cfgs for root, cfgs in mine.items()
                    if not all(is_done(root, settings_key(eval_settings(c, score))) for c in cfgs) and
                    not CellPaths(root).checkpoint(cfgs[-1].train.steps).is_file()}  # (trained: evaluated below)
            if todo:
                keep = [tuple(sorted({*checkpoint_grid(score, cfgs[-1].train.steps), *(c.train.steps for c in cfgs)}))
                        for cfgs in todo.values()]
                for root in todo:
                    (root / ERROR).unlink(missing_ok=True)
                try:
                    trained = train_packed([cfgs[-1] for cfgs in todo.values()], list(todo), keep)
                except CheckpointRequested:  # signalled by SLURM: checkpoints written, the job requeues
                    raise
                except Exception:  # the pack as a whole (a cell's own failure is its result): each cell records it
                    for root in todo:
                        write_error(root, traceback.format_exc())
                    raise
                for root, result in zip(todo, trained):
                    if isinstance(result, BaseException):
                        write_error(root, "".join(traceback.format_exception(result)))
                        outcome[str(root)] = f"{type(result).__name__}: {result}"
            sample_together({root: cfgs for root, cfgs in mine.items() if str(root) not in outcome}, score)
            for root, cfgs in mine.items():  # evaluations (training is done: run_cell finds the budgets reached)
                if str(root) in outcome:
                    continue
                try:
                    run_cell(root, cfgs, score)
                    outcome[str(root)] = None
                except Exception as err:
                    write_error(root, traceback.format_exc())
                    outcome[str(root)] = f"{type(err).__name__}: {err}"
        return outcome

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(PackJob(self.cells, self.score, self.threads))


class BatchJob(submitit.helpers.Checkpointable):
    """Submitit callable for several jobs (:class:`CellJob`, :class:`PackJob`) run one after another in one
    process: a local sweep's slot, so that its cells share one Python and one CUDA context instead of each
    starting its own. Returns each job's result, or the error it raised as ``"Type: message"`` (the job
    wrote its cells' ``error.txt``); one failing job does not stop the next."""

    def __init__(self, jobs: list[CellJob | PackJob]):
        self.jobs = jobs

    def __call__(self) -> list[Any]:
        outcomes: list[Any] = []
        for job in self.jobs:
            try:
                outcomes.append(job())
            except Exception as err:
                outcomes.append(f"{type(err).__name__}: {err}")
        return outcomes

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(BatchJob(self.jobs))


def sample_together(cells: dict[Path, list[CellConfig]], score: Any) -> None:
    """Draw the trained samples that the evaluations of a pack's cells will score (each budget of ``cells``,
    and each scored checkpoint with ``score.checkpoints``) with :func:`memorize.pack.sample_packed`: one
    sampling run per sample setting and step for all the cells that need it, each file as the cell's own
    evaluation writes it, which then finds it on disk. Each cell's lock is held meanwhile; cells whose
    evaluation is done or that another process holds are left out; where the run fails, the
    evaluations sample cell by cell (and report any error there)."""
    from memorize.pack import sample_packed

    groups: dict[tuple, list[Path]] = {}  # (sample settings, step, device) -> the cells to sample there
    sample_configs: dict[tuple, CellConfig] = {}
    with ExitStack() as locks:
        for root, cfgs in cells.items():
            try:
                locks.enter_context(cell_lock(root))
            except CellBusy:
                continue
            for cfg in cfgs:
                if is_done(root, settings_key(eval_settings(cfg, score))):
                    continue
                points = [(cfg, cfg.train.steps)]
                if score.checkpoints:
                    points += [(at_checkpoint(cfg, score, s)[0], s) for s in scored_steps(root, cfg.train.steps)]
                for c, step in points:
                    key = (settings_key(sample_settings(c.sample)), step, c.train.device)
                    groups.setdefault(key, []).append(root)
                    sample_configs[key] = c
        for key, roots in groups.items():
            if len(roots) < 2:
                continue
            cfg, step = sample_configs[key], key[1]
            try:
                sample_packed(roots, cfg.sample, step, samples_name(cfg, step), cfg.train.device)
            except Exception as err:  # e.g. out of memory with K batches at once: each cell samples alone
                print(f"memorize: sampling {len(roots)} cells together failed ({type(err).__name__}: {err}); "
                      f"sampling them one by one", file=sys.stderr, flush=True)

"""A sweep's results: the result record of a grid point (its columns, built by :func:`result_record`
for the cell job), the status of every grid point, and collecting the records into ``results.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from memorize.cell import CellPaths
from memorize.config import CellConfig, ModelConfig, from_dict, to_dict
from memorize.io import atomic_write_text, slurm_job
from memorize.models import model_name
from memorize.sweep.layout import (ERROR, cell_dir, checkpoint_records, eval_path, how_gone, is_locked, last_log_line,
                                   progress_line, read_cancelled, read_eval, read_grid, read_jobs, to_remake)
from memorize.sweep.slurm import ACTIVE_SLURM_STATES, TERMINAL_SLURM_STATES, slurm_states
from memorize.sweep.snapshot import code_version


RESULT_COLUMNS = ["dataset", "n_train", "model", "arch", "params", "params_total", "seed", "step", "budget",
                  "stopped_early", "sigma_data", "running_loss", "train_loss", "heldout_loss", "mem_nn",
                  "mem_nn_lo", "mem_nn_hi", "mem_cos", "mem_cos_lo", "mem_cos_hi", "mem_ext", "mem_ext_lo",
                  "mem_ext_hi", "copied_top10_nn", "copied_top10_cos", "copied_top10_ext", "labels", "guidance",
                  "mem_nn_class", "mem_nn_class_lo", "mem_nn_class_hi", "agreement_empirical",
                  "reproducibility_empirical", "mem_nn_empirical", "r2_empirical", "r2_empirical_q1",
                  "r2_empirical_q3", "r2_ls", "r2_ls_q1", "r2_ls_q3", "r2_els", "r2_els_q1", "r2_els_q3", "mem_nn_ls",
                  "mem_nn_els", "n_samples", "sampler", "sample_steps",
                  "embedder", "ratio", "threshold", "threshold_cos", "threshold_ext", "fpr_nn", "fpr_cos",
                  "fpr_ext", "fid", "kid", "precision",
                  "precision_lo", "precision_hi", "recall", "recall_lo", "recall_hi", "features", "consistency",
                  "consistency_lo", "consistency_hi", "twin_cell", "search_backend", "threads", "code", "requeues",
                  "cell", "eval"]
# curves.csv: a result record per scored checkpoint (its own evaluation, ``step_eval``), tagged with the grid
# point it belongs to (cell, eval, budget) and its grid values; the comparisons run at the budget only.
CURVE_COLUMNS = [c for c in RESULT_COLUMNS if c not in (
    "model", "params", "n_train", "seed", "cell", "eval", "budget", "stopped_early", "agreement_empirical", "reproducibility_empirical",
    "mem_nn_empirical", "consistency", "consistency_lo", "consistency_hi", "twin_cell")
    and not c.startswith("r2_") and c not in ("mem_nn_ls", "mem_nn_els")]


def sweep_status(out: str | Path) -> pd.DataFrame:
    """Per grid point: done, running (with its stage and progress), failed (with the log to read), pending
    (with its last checkpoint)."""
    out = Path(out)
    index = read_grid(out)
    jobs = read_jobs(out)
    axes = list(index.columns[2:])
    points = index.to_dict("records")
    found = []  # each point's result (None: none) and the files of it to make again, read once
    for row in points:
        root = cell_dir(out, row["cell"])
        record = read_eval(root, row["eval"])
        found.append((record, [] if record is None else to_remake(root, row["eval"], record)))
    unfinished = sorted({row["cell"] for row, (record, remake) in zip(points, found) if record is None or remake})
    states = slurm_states([jobs[cid] for cid in unfinished if cid in jobs])
    cancelled = set(read_cancelled(out))
    rows = []
    for row, (record, remake) in zip(points, found):
        root = cell_dir(out, row["cell"])
        job = jobs.get(row["cell"], "")
        detail = ""
        if remake:
            state = "damaged"
            detail = f"{remake[0]} is {how_gone(remake[0])}; `memorize sweep run` evaluates it again"
        elif record is not None:
            state = "done"
            detail = f"mem_nn={record['mem_nn']:.3f}"
        elif eval_path(root, row["eval"]).is_file() and not is_locked(root):
            state = "damaged"
            detail = f"{eval_path(root, row['eval'])} is damaged; `memorize sweep run` recomputes it"
        elif is_locked(root):
            state = "running"
            detail = progress_line(root)
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
                said = last_log_line(out / "logs" / job / f"{job}_0_log.err")
                detail = (f"job ended ({slurm}) without a result{f': {said}' if said else ''} "
                          f"(log: {out / 'logs' / job})")
            ckpt = CellPaths(root).latest_checkpoint()
            detail = detail or (f"slurm {slurm}" if slurm else "")
            if ckpt is not None:
                detail += f" checkpoint {ckpt.stem}"
        rows.append({"cell": row["cell"], "eval": row["eval"], "state": state, "job": job,
                     **{k: row[k] for k in axes}, "detail": detail.strip()})
    return pd.DataFrame(rows)


def check_finished(results: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """``results`` (:func:`collect` of the sweep in ``out``), refused where no grid point is finished: a figure or
    table of none would say nothing."""
    if results.empty:
        raise FileNotFoundError(f"{out} has no finished cells yet: `memorize sweep status {out}` shows progress")
    return results


def collect(out: str | Path) -> pd.DataFrame:
    """``DIR/results.csv``: one row per grid point of the current spec that is finished under its current
    sampling and scoring settings, grid values as extra columns (named by their dotted field). Points not
    finished under them are left out and counted in ``table.attrs["pending"]``; they are never filled from
    results of other settings. Curves over training steps, where scored, go to ``DIR/curves.csv``."""
    out = Path(out)
    index = read_grid(out)
    axes = list(index.columns[2:])
    rows, curves, pending = [], [], 0
    for row in index.to_dict("records"):
        summary = read_eval(cell_dir(out, row["cell"]), row["eval"])
        if summary is None:
            pending += 1
            continue
        record = {k: summary.get(k) for k in RESULT_COLUMNS}
        # the label is derived from the config, so that every table names its models the current way
        record["model"] = model_name(from_dict(ModelConfig, summary["config"]["model"]), summary["params"])
        record["budget"] = summary.get("budget", summary["step"])  # results from before train.stop_when
        record["stopped_early"] = bool(summary.get("stopped_early", False))
        record["labels"] = summary.get("labels", summary["config"]["data"]["labels"])  # from before conditioning
        record["guidance"] = summary.get("guidance", 0.0)
        record["compare_dir"] = (summary.get("files") or {}).get("compare")
        for axis in axes:
            record.setdefault(axis, row[axis])
        rows.append(record)
        for at_step in checkpoint_records(cell_dir(out, row["cell"]), summary)[0]:  # a row per scored checkpoint
            curves.append({**{k: record[k] for k in ("model", "params", "n_train", "seed", "cell")},
                           **{axis: row[axis] for axis in axes}, "budget": record["budget"], "eval": record["eval"],
                           **{k: at_step.get(k) for k in CURVE_COLUMNS}, "step_eval": at_step.get("eval")})
    columns = RESULT_COLUMNS + ["compare_dir"] + [c for c in axes if c not in RESULT_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    if curves:
        atomic_write_text(out / "curves.csv", pd.DataFrame(curves).to_csv(index=False))
    else:  # a table of other settings' checkpoints would be drawn as these results' (the cells keep their evals)
        (out / "curves.csv").unlink(missing_ok=True)
    table.attrs["pending"] = pending
    return table


def result_record(root: Path, cfg: CellConfig, score: Any, key: str, step: int, trained: dict, scores: dict,
                  compared: dict, twin: dict, timings: dict, files: dict, over_steps: list, settings: dict) -> dict:
    """The result of one grid point, as ``evals/<key>.json`` keeps it: every column of
    :data:`RESULT_COLUMNS` and what produced them (timings, code version, SLURM job, files, settings,
    config). ``trained``: :func:`memorize.sweep.job.training_at`; ``scores``:
    :func:`memorize.score.score_cell`'s summary; ``compared``: :func:`memorize.compare.compare_cell`'s
    (empty where not compared); ``twin``: the disjoint-subset consistency (empty without a twin)."""
    code = code_version()
    nn, cos, quality = scores["nn"], scores["cos"], scores["quality"]
    nan = float("nan")
    return {
        "cell": root.name, "eval": key, "dataset": cfg.data.name, "n_train": cfg.data.n_train,
        "model": model_name(cfg.model, trained["params"]), "arch": cfg.model.arch, "seed": cfg.seed, "step": step,
        "budget": cfg.train.steps, "stopped_early": step < cfg.train.steps,
        **trained,
        "mem_nn": nn["ratio"], "mem_nn_lo": nn["lo"], "mem_nn_hi": nn["hi"],
        "mem_cos": cos["ratio"], "mem_cos_lo": cos["lo"], "mem_cos_hi": cos["hi"],
        **{f"mem_ext{end}": scores.get("ext", {}).get(k, nan)  # (absent from scores written before it existed)
           for end, k in (("", "ratio"), ("_lo", "lo"), ("_hi", "hi"))},
        **{f"copied_top10_{c}": scores.get("copied", {}).get(c, {}).get("top10_share", nan)
           for c in ("nn", "cos", "ext")},
        "labels": cfg.data.labels, "guidance": cfg.sample.guidance,
        **{f"mem_nn_class{end}": scores.get("nn_class", {}).get(k, nan)
           for end, k in (("", "ratio"), ("_lo", "lo"), ("_hi", "hi"))},
        "n_samples": scores["n_samples"], "sampler": cfg.sample.sampler, "sample_steps": cfg.sample.num_steps,
        "embedder": score.embedder, "ratio": score.ratio, "threshold": score.threshold,
        "threshold_cos": cos["threshold"], "fpr_nn": nn["fpr"]["ratio"], "fpr_cos": cos["fpr"]["ratio"],
        "threshold_ext": scores.get("ext", {}).get("threshold", nan),
        "fpr_ext": scores.get("ext", {}).get("fpr", {}).get("ratio", nan),
        "fid": quality["fid"], "kid": quality["kid"], "precision": quality["precision"], "recall": quality["recall"],
        "features": quality["features"], "precision_lo": quality["precision_lo"],
        "precision_hi": quality["precision_hi"], "recall_lo": quality["recall_lo"], "recall_hi": quality["recall_hi"],
        "consistency": twin.get("score", nan), "consistency_lo": twin.get("lo", nan),
        "consistency_hi": twin.get("hi", nan), "twin_cell": twin.get("cell"),
        "agreement_empirical": compared.get("agreement", nan),
        "reproducibility_empirical": compared.get("reproducibility", {}).get("score", nan),
        "mem_nn_empirical": compared.get("mem_nn_empirical", nan),
        **{f"r2_{name}{end}": compared.get("r2", {}).get(name, {}).get(k, nan)
           for name in ("empirical", "ls", "els") for end, k in (("", "median"), ("_q1", "q1"), ("_q3", "q3"))},
        **{f"mem_nn_{m}": compared.get("local", {}).get(m, {}).get("mem_nn", nan) for m in ("ls", "els")},
        "search_backend": nn["backend"], "seconds": timings, "threads": torch.get_num_threads(),
        "code": code["hash"], "code_version": code, **slurm_job(),
        "files": files, "over_steps": over_steps, "settings": settings, "config": to_dict(cfg),
    }

"""``memorize plot DIR``: regenerate a sweep's figures (PNG and PDF) into ``DIR/figures/``.

Collects ``DIR/results.csv`` afresh (so the figures show every finished cell) and reads the cells' gap curves and
checkpoint scores; writes memorization vs N, the (N, parameters) phase diagram, memorization beside
generalization (recall, twin consistency) per model, the critical
N per model size (and ``critical_n.csv``), denoiser-gap curves, nearest-neighbour grids for
chosen cells, and memorization over training steps where recorded. Where a grid axis splits the table into
experiments, they are also overlaid per model (``memorization_by_experiment``); a scan of the guidance weight is
drawn against it (``memorization_vs_guidance``), and experiments at a single N are left out of the figures against N.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from memorize import analysis, plots, reference_figures
from memorize.io import UNREADABLE_NPZ, atomic_save_figure, atomic_write_text
from memorize.sweep.results import check_finished, collect


# The figures (and their tables) a sweep draws only where its results have what they show: one left from an
# earlier draw of other results (scored checkpoints, then none) is removed, not kept beside the current ones.
SOMETIMES_DRAWN = ("memorization_by_experiment", "memorization_vs_guidance", "memorization_and_generalization",
                   "denoiser_gap", "trajectory_gap", "crossover_n", "r2_crossover", "memorization_over_steps",
                   "timescales")


def _remove_undrawn(out: Path, written: list[Path]) -> None:
    """Remove ``out``'s files of :data:`SOMETIMES_DRAWN` figures that this draw did not write."""
    drawn = {p.stem for p in written}
    for name in set(SOMETIMES_DRAWN) - drawn:
        for ext in ("png", "pdf", "csv"):
            (out / f"{name}.{ext}").unlink(missing_ok=True)


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [atomic_save_figure(out / f"{name}.{ext}", fig, dpi=150, bbox_inches="tight") for ext in ("png", "pdf")]
    plt.close(fig)
    return paths


def _per_cell_tables(sweep: Path, results: pd.DataFrame, axes: list[str], name: str = "gap.csv"
                     ) -> pd.DataFrame | None:
    """The cells' comparison tables ``name`` (the denoiser gaps; the trajectory gaps), each tagged with
    its model, N, seed and experiment. A table that is missing or cannot be read is left out of the figure,
    named on stderr."""
    tables, missing = [], []
    for _, row in results.iterrows():
        if not isinstance(row.get("compare_dir"), str):
            continue
        path = sweep / "cells" / row["cell"] / row["compare_dir"] / name
        if not path.is_file():  # deleted, or written before the comparison made this table
            missing.append(path)
            continue
        try:
            table = pd.read_csv(path)
            if "sigma" not in table:
                raise ValueError("no sigma column")
        except (ValueError, UnicodeDecodeError, OSError) as err:  # pandas' parser errors are ValueErrors
            print(f"memorize: {path} is damaged ({type(err).__name__}: {err}); the figure of those tables leaves "
                  f"it out (to compare that cell again, delete {path.parent / 'compare.json'} and run `memorize "
                  f"sweep run`)", file=sys.stderr)
            continue
        experiment = analysis.experiment_label({a: row[a] for a in axes})
        tables.append(table.assign(model=row["model"], n_train=row["n_train"], seed=row["seed"],
                                   experiment=experiment))
    if missing:
        print(f"memorize: {len(missing)} comparison(s) have no {name} ({missing[0]}"
              f"{' and others' if len(missing) > 1 else ''}); the figure of those tables leaves them out (to "
              f"compare a cell again, delete its comparison's compare.json and run `memorize sweep run`)",
              file=sys.stderr)
    return pd.concat(tables) if tables else None


def default_nn_cells(results: pd.DataFrame) -> list[str]:
    """The largest model's cells at the smallest and the largest N (seed with the lowest number)."""
    biggest = results[results.params == results.params.max()].sort_values(["n_train", "seed"])
    return list(dict.fromkeys([biggest.iloc[0]["cell"], biggest.iloc[-1]["cell"]]))


def results_at_step(results: pd.DataFrame, curves: pd.DataFrame | None, step: int) -> pd.DataFrame:
    """The sweep's table at training step ``step``: the grid points whose budget is ``step`` and, for the
    other cells, their scored checkpoint at ``step`` (``DIR/curves.csv``; each row carries its own sample
    count, so the Wilson intervals stay right)."""
    rows = results[results.step == step]
    if curves is not None:
        at = curves[(curves.step == step) & ~curves.cell.isin(rows.cell)].drop_duplicates(["cell", "step_eval"])
        rows = pd.concat([rows, at.drop(columns=["eval"]).rename(columns={"step_eval": "eval"})], ignore_index=True)
    rows = rows.assign(budget=step, stopped_early=False)  # the table at one step, whatever the runs' budgets
    if rows.empty:
        recorded = sorted(set(results.step) | (set(curves.step) if curves is not None else set()))
        raise ValueError(f"--step {step}: no result or scored checkpoint at that step; recorded steps: "
                         f"{', '.join(f'{s:,}' for s in recorded)}")
    return rows


def label_curves(curves: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """``curves`` (``DIR/curves.csv``) with each row's ``experiment``: its values of the grid axes beyond
    model and N of ``results`` (the training budget left out: the curves' time axis is the step)."""
    axes = analysis.experiment_axes(analysis.multi_n_rows(results))
    time_axes = [a for a in axes if a != "budget" and a in curves]
    return curves.assign(experiment=[analysis.experiment_label({a: r[a] for a in time_axes})
                                     for _, r in curves.iterrows()])


def timescales_with_fits(curves: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The timescales of labelled ``curves`` (:mod:`memorize.timescales`, per cell and grid point's experiment),
    with power-law fits of tau_mem and of tau_gen against N per model and experiment where at least 3 N have
    one (columns ``tau_mem_slope``, ``tau_gen_slope`` and their 95% intervals; the fits by model, experiment
    and name, as :func:`memorize.plots.timescales_figure` takes them)."""
    from memorize.timescales import timescales

    keys = analysis.MODEL_KEYS + ["experiment", "n_train", "seed", "cell"]
    ts = timescales(curves.drop_duplicates(["cell", "step_eval"]), keys)
    fits = {}
    for (model, experiment), g in ts.groupby(["model", "experiment"], sort=False):
        for name, ok in (("tau_mem", g[g.tau_mem_censored == "none"]), ("tau_gen", g.dropna(subset=["tau_gen"]))):
            if ok["n_train"].nunique() >= 3:
                fit = analysis.power_law_fit(ok["n_train"].to_numpy(float), ok[name].to_numpy(float),
                                          ok[f"{name}_lo"].to_numpy(float), ok[f"{name}_hi"].to_numpy(float))
                fits[model, experiment, name] = fit
                ts.loc[g.index, [f"{name}_slope", f"{name}_slope_lo", f"{name}_slope_hi"]] = (
                    fit["slope"], fit["slope_lo"], fit["slope_hi"])
    return ts, fits


def _timescales(curves: pd.DataFrame, out: Path) -> list[Path]:
    """timescales.csv and its figure (:func:`timescales_with_fits`)."""
    ts, fits = timescales_with_fits(curves)
    written = [atomic_write_text(out / "timescales.csv", ts.to_csv(index=False))]
    return written + _save(plots.timescales_figure(ts, fits), out, "timescales")


def guidance_scans(results: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of experiments (model, N and every other axis fixed) sampled at 2 or more guidance weights."""
    if "guidance" not in results or results["guidance"].nunique() < 2:
        return None
    others = [a for a in analysis.experiment_axes(results) if a not in ("sample.guidance", "guidance")]
    keys = analysis.MODEL_KEYS + ["n_train"] + others
    counts = results.groupby(keys, dropna=False)["guidance"].transform("nunique")
    return results[counts >= 2] if (counts >= 2).any() else None


def plot_sweep(sweep: str | Path, cells: list[str] | None = None, step: int | None = None) -> list[Path]:
    """Every figure of the sweep into ``DIR/figures/``; with ``step``, the memorization figures (vs N,
    phase diagram, critical N) at that training step into ``DIR/figures/step-STEP/``."""
    sweep = Path(sweep)
    results = check_finished(collect(sweep), sweep)
    finished = set(results.cell)
    unknown = [cid for cid in cells or [] if cid not in finished]
    if unknown:  # before any figure is drawn
        raise FileNotFoundError(f"--cells {unknown[0]}: no finished grid point of {sweep} has that cell id (see "
                                f"`memorize sweep status`)")
    out = sweep / "figures"
    curves = pd.read_csv(sweep / "curves.csv") if (sweep / "curves.csv").is_file() else None
    if step is not None:
        results = results_at_step(results, curves, step)
        out = out / f"step-{step}"
    scans = guidance_scans(results)
    results = analysis.multi_n_rows(results)  # the figures against N; single-N experiments are drawn on their own axis
    axes = analysis.experiment_axes(results)
    written = _save(plots.memorization_vs_n_figure(results), out, "memorization_vs_n")
    written += _save(plots.phase_diagram_figure(results), out, "phase_diagram")
    crit = analysis.critical_n_by_experiment(results)
    written.append(atomic_write_text(out / "critical_n.csv", crit.to_csv(index=False)))
    written += _save(plots.critical_n_figure(crit, analysis.budget_label(results)), out, "critical_n")
    if axes:
        written += _save(plots.memorization_by_experiment_figure(results), out, "memorization_by_experiment")
    if scans is not None:
        written += _save(plots.memorization_vs_guidance_figure(scans), out, "memorization_vs_guidance")
    if step is not None:
        _remove_undrawn(out, written)
        return written
    if "recall" in results and results["recall"].notna().any():
        written += _save(plots.memorization_and_generalization_figure(results), out, "memorization_and_generalization")
    gaps = _per_cell_tables(sweep, results, axes)
    if gaps is not None:
        written += _save(reference_figures.gap_curves_figure(gaps, analysis.budget_label(results)), out,
                         "denoiser_gap")
    trajectories = _per_cell_tables(sweep, results, axes, "trajectory.csv")
    if trajectories is not None:
        written += _save(reference_figures.trajectory_gap_figure(trajectories, analysis.budget_label(results)), out,
                         "trajectory_gap")
    if "r2_els" in results and results["r2_els"].notna().any():
        crossing = analysis.crossover_n(results, axes).merge(crit, how="left")
        written.append(atomic_write_text(out / "crossover_n.csv", crossing.to_csv(index=False)))
        written += _save(reference_figures.r2_crossover_figure(results, crossing, analysis.budget_label(results)),
                         out, "r2_crossover")
    if curves is not None:
        curves = label_curves(curves, results)
        written += _save(plots.memorization_over_steps_figure(curves), out, "memorization_over_steps")
        written += _timescales(curves, out)
    _remove_undrawn(out, written)
    for cid in cells or default_nn_cells(results):
        written += nn_grid(sweep, cid, out, results)
    _remove_gone_grids(out, finished)
    return written


def _remove_gone_grids(out: Path, finished: set[str]) -> None:
    """Remove the nearest-neighbour grids (``nn_<cell id>``) of cells that have no finished grid point now (a
    cell left out of the spec, or sampled anew and not yet scored): their samples are no result of the table.
    The grids of finished cells stay, whether or not this draw drew them (``--cells``)."""
    for path in out.glob("nn_*"):
        cid = path.stem[len("nn_"):]
        if path.suffix in (".png", ".pdf") and re.fullmatch(r"[0-9a-f]{12}", cid) and cid not in finished:
            path.unlink(missing_ok=True)


def nn_grid(sweep: Path, cid: str, out: Path, results: pd.DataFrame) -> list[Path]:
    """Nearest-neighbour grid of one cell's trained samples (its first grid point in ``results``)."""
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.generate import read_samples
    from memorize.metrics import nn_ratio
    from memorize.sweep.layout import read_eval

    rows = results[results.cell == cid]
    if rows.empty:
        raise FileNotFoundError(f"cell {cid}: no finished grid point of {sweep} (see `memorize sweep status`)")
    row = rows.iloc[0]
    root = sweep / "cells" / cid
    summary = read_eval(root, row["eval"])
    cfg = read_config(root)
    data = load_cell_data(cfg, CellPaths(root))
    if not data.dataset.is_image:
        return []
    path = root / summary["files"]["samples"]
    if not path.is_file():
        print(f"memorize: {path} is missing; the nearest-neighbour grid of cell {cid} is not drawn "
              f"(`memorize sweep run` draws the samples again)", file=sys.stderr)
        return []
    try:
        samples = read_samples(path)["samples"]
    except UNREADABLE_NPZ as err:
        print(f"memorize: {path} is damaged ({type(err).__name__}); the nearest-neighbour grid of cell {cid} is "
              f"not drawn (delete it, and `memorize sweep run` draws the samples again)", file=sys.stderr)
        return []
    scores = nn_ratio(samples, data.train.numpy(), float(row["ratio"]))
    fig = plots.nearest_neighbour_figure(samples, data.train.numpy(), scores.nearest, scores.ratio,
                                         title=f"{row['model']}, N = {row['n_train']:,}, seed {row['seed']}, "
                                               f"step {row['step']:,} (cell {cid})")
    return _save(fig, out, f"nn_{cid}")

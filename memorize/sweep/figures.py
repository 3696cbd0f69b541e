"""``memorize plot DIR``: regenerate a sweep's figures (PNG and PDF) into ``DIR/figures/``.

Collects ``DIR/results.csv`` afresh (so the figures show every finished cell) and reads the cells' gap curves and
checkpoint scores; writes memorization vs N, the (N, parameters) phase diagram, memorization beside
generalization (recall, twin consistency) per model, the critical
N per model size (and ``critical_n.csv``), denoiser-gap curves, nearest-neighbour grids for
chosen cells, and memorization over training steps where recorded.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from memorize import plots
from memorize.io import atomic_save_figure, atomic_write_text
from memorize.sweep.launch import collect


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [atomic_save_figure(out / f"{name}.{ext}", fig, dpi=150, bbox_inches="tight") for ext in ("png", "pdf")]
    plt.close(fig)
    return paths


def _per_cell_tables(sweep: Path, results: pd.DataFrame, axes: list[str]) -> pd.DataFrame | None:
    """The cells' denoiser-gap tables, each tagged with its model, N, seed and experiment."""
    tables = []
    for _, row in results.iterrows():
        if not isinstance(row.get("compare_dir"), str):
            continue
        path = sweep / "cells" / row["cell"] / row["compare_dir"] / "gap.csv"
        if path.is_file():
            experiment = plots.experiment_label({a: row[a] for a in axes})
            tables.append(pd.read_csv(path).assign(model=row["model"], n_train=row["n_train"], seed=row["seed"],
                                                   experiment=experiment))
    return pd.concat(tables) if tables else None


def default_nn_cells(results: pd.DataFrame) -> list[str]:
    """The largest model's cells at the smallest and the largest N (seed with the lowest number)."""
    biggest = results[results.params == results.params.max()].sort_values(["n_train", "seed"])
    return list(dict.fromkeys([biggest.iloc[0]["cell"], biggest.iloc[-1]["cell"]]))


def plot_sweep(sweep: str | Path, cells: list[str] | None = None) -> list[Path]:
    sweep = Path(sweep)
    results = collect(sweep)
    if results.empty:
        raise FileNotFoundError(f"{sweep} has no finished cells yet: `memorize sweep status {sweep}` shows progress")
    out = sweep / "figures"
    axes = plots.experiment_axes(results)
    written = _save(plots.memorization_vs_n_figure(results), out, "memorization_vs_n")
    written += _save(plots.phase_diagram_figure(results), out, "phase_diagram")
    if "recall" in results and results["recall"].notna().any():
        written += _save(plots.memorization_and_generalization_figure(results), out, "memorization_and_generalization")
    crit = plots.critical_n(plots.pooled_ratios(results, "nn", axes), axes=axes)
    written.append(atomic_write_text(out / "critical_n.csv", crit.to_csv(index=False)))
    written += _save(plots.critical_n_figure(crit), out, "critical_n")
    gaps = _per_cell_tables(sweep, results, axes)
    if gaps is not None:
        written += _save(plots.gap_curves_figure(gaps), out, "denoiser_gap")
    if (sweep / "curves.csv").is_file():
        steps = pd.read_csv(sweep / "curves.csv")
        steps["experiment"] = [plots.experiment_label({a: r[a] for a in axes if a in steps}) for _, r in steps.iterrows()]
        written += _save(plots.memorization_over_steps_figure(steps), out, "memorization_over_steps")
    for cid in cells or default_nn_cells(results):
        written += nn_grid(sweep, cid, out, results)
    return written


def nn_grid(sweep: Path, cid: str, out: Path, results: pd.DataFrame) -> list[Path]:
    """Nearest-neighbour grid of one cell's trained samples (its first grid point in ``results``)."""
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.generate import read_samples
    from memorize.metrics import nn_ratio
    from memorize.sweep.cell import read_eval

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
    samples = read_samples(root / summary["files"]["samples"])["samples"]
    scores = nn_ratio(samples, data.train.numpy(), float(row["ratio"]))
    fig = plots.nearest_neighbour_figure(samples, data.train.numpy(), scores.nearest, scores.ratio,
                                         title=f"{row['model']}, N = {row['n_train']:,}, seed {row['seed']}, "
                                               f"step {row['step']:,} (cell {cid})")
    return _save(fig, out, f"nn_{cid}")

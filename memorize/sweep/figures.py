"""``memorize plot DIR``: regenerate a sweep's figures (PNG and PDF) into ``DIR/figures/``.

Collects ``DIR/results.csv`` afresh (so the figures show every finished cell) and reads the cells' gap curves and
checkpoint scores; writes memorization vs N, the (N, parameters) phase diagram, the critical
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


def _per_cell_tables(sweep: Path, results: pd.DataFrame, relative: str) -> pd.DataFrame | None:
    tables = []
    for _, row in results.iterrows():
        path = sweep / "cells" / row["cell"] / relative
        if path.is_file():
            tables.append(pd.read_csv(path).assign(model=row["model"], n_train=row["n_train"], seed=row["seed"]))
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
    written = _save(plots.memorization_vs_n_figure(results), out, "memorization_vs_n")
    written += _save(plots.phase_diagram_figure(results), out, "phase_diagram")
    crit = plots.critical_n(plots.pooled_ratios(results, "nn"))
    written.append(atomic_write_text(out / "critical_n.csv", crit.to_csv(index=False)))
    written += _save(plots.critical_n_figure(crit), out, "critical_n")
    gaps = _per_cell_tables(sweep, results, "compare/gap.csv")
    if gaps is not None:
        written += _save(plots.gap_curves_figure(gaps), out, "denoiser_gap")
    steps = _per_cell_tables(sweep, results, "checkpoint_scores.csv")
    if steps is not None:
        written += _save(plots.memorization_over_steps_figure(steps), out, "memorization_over_steps")
    for cid in cells or default_nn_cells(results):
        written += nn_grid(sweep, cid, out)
    return written


def nn_grid(sweep: Path, cid: str, out: Path) -> list[Path]:
    """Nearest-neighbour grid of one cell's trained samples."""
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.generate import read_samples
    from memorize.metrics import nn_ratio

    root = sweep / "cells" / cid
    if not (root / "samples" / "trained.npz").is_file():
        raise FileNotFoundError(f"cell {cid}: no samples at {root / 'samples' / 'trained.npz'}")
    cfg = read_config(root)
    data = load_cell_data(cfg, CellPaths(root))
    if not data.dataset.is_image:
        return []
    samples = read_samples(root / "samples" / "trained.npz")["samples"]
    scores = nn_ratio(samples, data.train.numpy())
    fig = plots.nearest_neighbour_figure(samples, data.train.numpy(), scores.nearest, scores.ratio,
                                         title=f"cell {cid}: N = {cfg.data.n_train}, {cfg.model.arch} "
                                               f"{cfg.model.channels if cfg.model.arch == 'unet' else cfg.model.width}")
    return _save(fig, out, f"nn_{cid}")

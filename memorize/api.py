"""The notebook API: the few functions a researcher calls from Jupyter.

    import memorize.api as mz

    summary = mz.score_samples(my_samples, "runs/mine", data={"name": "digits", "n_train": 64})
    table = mz.load_results("runs/digits")
    fig = mz.draw(table, "memorization_vs_n")
    point = mz.load_point("runs/digits", table.cell[0], table)  # one grid point's scores, images, samples
    fig = mz.draw(mz.load_curves("runs/digits_time"), "timescales")  # where checkpoints were scored

Each is a thin front to the same code the ``memorize`` command runs (:mod:`memorize.external_cell`,
:mod:`memorize.score`, :mod:`memorize.sweep.results`, :mod:`memorize.plots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from memorize import analysis, plots, reference_figures
from memorize.config import CellConfig, check_root_is_read, from_dict
from memorize.score import QUALITY_K

if TYPE_CHECKING:
    import torch


def score_samples(samples: str | Path | np.ndarray | torch.Tensor, out: str | Path,
                  data: dict[str, Any] | None = None, value_range: str = "auto", name: str = "samples",
                  **options) -> dict:
    """Score samples made anywhere (an array (M, C, H, W), (M, H, W, C) or (M, H, W), numpy or torch, an image
    folder, ``.npz``, ``.npy`` or ``.pt``) against the training set that ``data`` names (the ``data:`` section of a cell
    config, e.g. ``{"name": "cifar10", "root": PATH, "n_train": 50000}``; ``train_indices``: a file of the
    indices a model saw; ``heldout_path``: held-out images of your own), with held-out images from the
    rest of its pool unless given. Writes ``out/scores/NAME.*`` as ``memorize score`` does and returns its summary;
    ``options`` go to :func:`memorize.score.score_cell` (``ratio``, ``threshold``, ``embedder``,
    ``features``, ``target_fpr``, ``device``, ``progress``)."""
    import inspect

    from memorize.external_cell import import_samples
    from memorize.score import check_heldout_planned, score_cell

    known = sorted(set(inspect.signature(score_cell).parameters) - {"root", "samples", "name"})
    unknown = sorted(set(options) - set(known))
    if unknown:  # before anything is written
        raise TypeError(f"score_samples: unknown option {unknown[0]!r}; the options are {', '.join(known)}")
    for field, path in (("samples", samples), ("out", out)):  # Path("") is the current directory
        if isinstance(path, str) and not path:
            raise ValueError(f"score_samples: {field} is an empty string; expected a file or directory")
    config = from_dict(CellConfig, {"data": data or {}})
    check_root_is_read(config.data)
    check_heldout_planned(config.data, options.get("threshold"), options.get("embedder", "pixel"),
                          options.get("target_fpr", 0.01))
    root, _ = import_samples(samples, out, config, name, value_range)
    options.setdefault("progress", False)
    return score_cell(root, name, **options)


def load_results(sweep: str | Path) -> pd.DataFrame:
    """A sweep's results table, collected afresh from its cells (``memorize sweep collect``)."""
    from memorize.sweep import collect

    return collect(Path(sweep))


def load_curves(sweep: str | Path) -> pd.DataFrame:
    """A sweep's memorization over training steps, collected afresh with its results: a row per scored
    checkpoint of each grid point (``step``; the spec's ``score.checkpoints: true``), each labelled with its
    ``experiment`` as ``memorize plot`` labels it, for :func:`draw`'s :data:`CURVE_FIGURES`."""
    from memorize.sweep.figures import label_curves

    results = load_results(sweep)
    path = Path(sweep) / "curves.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{sweep}: no grid point has scored checkpoints (a sweep scores them with "
                                f"score.checkpoints: true)")
    return label_curves(pd.read_csv(path), results)


@dataclass
class ScoredPoint:
    """A finished grid point of a sweep: its row of the results table, its per-sample scores (``nn_index``,
    ``memorized_nn``, ... as ``memorize score`` writes them) and, read when first asked for, its cell's
    training and held-out images and its samples."""

    row: pd.Series
    scores: pd.DataFrame
    root: Path  # the cell's directory
    samples_path: Path

    @cached_property
    def _data(self):
        from memorize.cell import CellPaths, load_cell_data, read_config

        return load_cell_data(read_config(self.root), CellPaths(self.root))

    @property
    def train(self) -> np.ndarray:
        """(N, ...) the training subset, in subset order."""
        return self._data.train.numpy()

    @property
    def heldout(self) -> np.ndarray:
        return self._data.heldout.numpy()

    @property
    def is_image(self) -> bool:
        return self._data.dataset.is_image

    def samples(self) -> np.ndarray:
        """The grid point's samples (read from its file on each call)."""
        from memorize.generate import read_samples

        return read_samples(self.samples_path)["samples"]


def load_point(sweep: str | Path, cell: str, results: pd.DataFrame | None = None,
               eval: str | None = None) -> ScoredPoint:
    """The finished grid point of ``cell`` in ``sweep`` (its row of ``results``, collected afresh when not
    given). A cell that is several grid points (sampled or scored with other settings, such as a guidance
    scan) needs ``eval``, the row's ``eval`` column, to say which. A cell that is not a finished grid point
    of the sweep, one of several without ``eval``, or one whose per-sample scores are gone or unreadable,
    is a ValueError naming it."""
    from memorize.sweep.layout import read_eval

    results = load_results(sweep) if results is None else results
    rows = results[results.cell == cell]
    if rows.empty:
        raise ValueError(f"cell {cell}: not a finished grid point of {sweep}")
    if eval is not None:
        rows = rows[rows["eval"] == eval]
        if rows.empty:
            raise ValueError(f"cell {cell}: no finished grid point of {sweep} has eval {eval!r}")
    elif len(rows) > 1:
        raise ValueError(f"cell {cell}: {len(rows)} finished grid points of {sweep} (evals "
                         f"{', '.join(rows['eval'])}): say which eval, the results table's eval column")
    row = rows.iloc[0]
    root = Path(sweep) / "cells" / cell
    files = read_eval(root, row["eval"])["files"]
    path = root / files["scores"]
    try:
        scores = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, OSError) as err:  # pandas' parser errors are ValueErrors
        raise ValueError(f"cell {cell}: its per-sample scores {path} are missing or unreadable ({type(err).__name__}); "
                         f"delete the file if it is there, and `memorize sweep run` scores the cell again") from None
    return ScoredPoint(row, scores, root, root / files["samples"])


def _critical_n_figure(results: pd.DataFrame):
    return plots.critical_n_figure(analysis.critical_n_by_experiment(results), analysis.budget_label(results))


def _r2_crossover_figure(results: pd.DataFrame):
    crossing = analysis.crossover_n(results, analysis.experiment_axes(results))
    crossing = crossing.merge(analysis.critical_n_by_experiment(results), how="left")
    return reference_figures.r2_crossover_figure(results, crossing, analysis.budget_label(results))


# Each drawn, as `memorize plot` draws it, from the rows of experiments measured at two or more N
# (analysis.multi_n_rows), each experiment (a grid axis beyond model and N) on its own.
FIGURES = {
    "memorization_vs_n": plots.memorization_vs_n_figure,
    "phase_diagram": plots.phase_diagram_figure,
    "memorization_and_generalization": plots.memorization_and_generalization_figure,
    "critical_n": _critical_n_figure,
    "r2_crossover": _r2_crossover_figure,
}


def _timescales_figure(curves: pd.DataFrame):
    from memorize.sweep.figures import timescales_with_fits

    return plots.timescales_figure(*timescales_with_fits(curves))


# Drawn from the table of mz.load_curves (a row per scored checkpoint), as `memorize plot` draws them.
CURVE_FIGURES = {
    "memorization_over_steps": plots.memorization_over_steps_figure,
    "timescales": _timescales_figure,
}


# The figures drawn only from columns some sweeps leave empty (as `memorize plot` draws them only where
# filled): the column and what fills it.
NEEDS = {
    "memorization_and_generalization": ("recall", f"more than {QUALITY_K} samples and held-out images per cell"),
    "r2_crossover": ("r2_els", "the local machines' comparison (score.local: true)"),
}


def draw(results: pd.DataFrame, figure: str):
    """One of a sweep's figures drawn from its results table (:data:`FIGURES`) or, for the training-time
    figures (:data:`CURVE_FIGURES`), from its curves (:func:`load_curves`), as a matplotlib Figure: to
    show in a notebook, restyle, or save. It is drawn as ``memorize plot`` draws it: each experiment (a grid
    axis beyond model and N) apart, and experiments measured at a single N left out. A figure whose columns
    (:data:`NEEDS`) the table leaves empty is a ValueError naming them, and so is a table without a column
    the figure reads (one cut down by hand), or the other kind of table."""
    if figure not in FIGURES and figure not in CURVE_FIGURES:
        raise ValueError(f"figure: expected one of {', '.join([*FIGURES, *CURVE_FIGURES])}, got {figure!r}")
    if not isinstance(results, pd.DataFrame):
        hint = " (pd.concat several sweeps' tables into one)" if isinstance(results, (list, tuple)) else ""
        raise TypeError(f"results: expected the DataFrame of mz.load_results, got {type(results).__name__}{hint}")
    curves = "step_eval" in results  # a row per scored checkpoint: the checkpoints of one cell are not seeds
    if curves != (figure in CURVE_FIGURES):
        wanted, given = ("load_results", "load_curves") if curves else ("load_curves", "load_results")
        raise ValueError(f"figure {figure}: drawn from the table of mz.{wanted}, not of mz.{given}")
    if results.empty:
        raise ValueError(f"figure {figure}: the {'curves' if curves else 'results'} table has no rows (no "
                         f"{'scored checkpoint' if curves else 'finished grid point'})")
    column, setting = NEEDS.get(figure, (None, ""))
    if column is not None and (column not in results or results[column].isna().all()):
        raise ValueError(f"figure {figure}: the results table has no {column} values; a sweep fills them "
                         f"with {setting}")
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        if curves:
            return CURVE_FIGURES[figure](results)
        return FIGURES[figure](analysis.multi_n_rows(results))
    except KeyError as err:
        for number in set(plt.get_fignums()) - before:  # half drawn: a notebook would show it
            plt.close(number)
        missing = err.args[0] if err.args else None
        if not isinstance(missing, str) or missing in results.columns:
            raise
        kind, source = ("curves", "load_curves") if curves else ("results", "load_results")
        raise ValueError(f"figure {figure}: the {kind} table has no column {missing!r}; draw from the table "
                         f"mz.{source} returns, or keep its columns when filtering it") from None

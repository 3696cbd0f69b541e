"""What the recipe scripts in ``analysis/`` share on their command lines: a sweep's results table and one
of its finished points, where bad input (a directory that is not a sweep, a cell id of none of its
points, unreadable scores, a flag cut short) is one line and exit status 2, as for the ``memorize`` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from memorize.api import ScoredPoint, load_point, load_results
from memorize.cli.flags import Parser
from memorize.config import ConfigError
from memorize.sweep.results import check_finished


def recipe_parser(doc: str) -> Parser:
    """A recipe script's parser, ``doc`` (its module docstring) as its help: errors in one line, and flags
    taken only as spelled in full, as by the ``memorize`` command."""
    return Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def sweep_results(parser: argparse.ArgumentParser, sweep: str | Path) -> pd.DataFrame:
    """The results table of the sweep directory ``sweep``, collected afresh (:func:`memorize.api.load_results`);
    a sweep with no finished grid point is refused."""
    try:
        return check_finished(load_results(sweep), sweep)
    except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as err:
        parser.error(str(err))


def cell_point(parser: argparse.ArgumentParser, sweep: str | Path, cell: str, results: pd.DataFrame,
               eval: str | None = None) -> ScoredPoint:
    """The finished point of ``cell`` (:func:`memorize.api.load_point`, its ``--cell``; ``eval``, its ``--eval``,
    where the cell is several points); an id of none of the sweep's finished points, or a point whose scores
    are unreadable, is the parser's one-line error."""
    try:
        return load_point(sweep, cell, results, eval)
    except ValueError as err:
        parser.error(f"--cell: {err}")


def add_point_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--cell`` (the cell whose ``what`` are drawn) and ``--eval`` (which of its grid points, where it is several)."""
    parser.add_argument("--cell", help=f"the cell whose {what} are drawn")
    parser.add_argument("--eval", help="with --cell: which of its grid points, where the cell is several (a scan "
                                       "of guidance weights samples one cell several times): results.csv's eval "
                                       "column")


def chosen_point(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 results: pd.DataFrame) -> ScoredPoint | None:
    """The point ``--cell`` (and ``--eval``) name, read before any table is worked out so that a mistyped id
    is named first; None where ``--cell`` is not given."""
    if args.eval is not None and args.cell is None:
        parser.error("--eval: names a grid point of the cell that --cell gives; give --cell too")
    evals = results.loc[results.cell == args.cell, "eval"].tolist()
    if args.eval is None and len(evals) > 1:
        parser.error(f"--cell: cell {args.cell}: {len(evals)} finished grid points of {args.sweep} (evals "
                     f"{', '.join(evals)}): say which with --eval, the results table's eval column")
    if args.eval is not None and evals and args.eval not in evals:
        parser.error(f"--eval: cell {args.cell} has no finished grid point of eval {args.eval!r} (its evals: "
                     f"{', '.join(evals)})")
    return None if args.cell is None else cell_point(parser, args.sweep, args.cell, results, args.eval)


def point_stem(results: pd.DataFrame, row: pd.Series) -> str:
    """A point's name in figure files: its cell id, and its eval key where its cell is several points."""
    several = (results["cell"] == row["cell"]).sum() > 1
    return f"{row['cell']}_{row['eval']}" if several else str(row["cell"])


def point_title(results: pd.DataFrame, row: pd.Series) -> str:
    """A point in a figure's title: model, N, seed, its experiment (the sweep's axes beyond model and N) and cell."""
    from memorize.analysis import experiment_axes, experiment_label

    experiment = experiment_label({axis: row[axis] for axis in experiment_axes(results)})
    where = f", {experiment}" if experiment else ""
    return f"{row['model']}, N = {row['n_train']:,}, seed {row['seed']}{where} (cell {row['cell']})"


def image_point(point: ScoredPoint) -> ScoredPoint | None:
    """``point`` (:func:`cell_point`), or None, said on stdout, where its data are not images and so there is no
    figure to draw."""
    if not point.is_image:
        print(f"cell {point.row['cell']}: not image data, no figure")
        return None
    return point

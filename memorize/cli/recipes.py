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


def cell_point(parser: argparse.ArgumentParser, sweep: str | Path, cell: str, results: pd.DataFrame) -> ScoredPoint:
    """The finished point of ``cell`` (:func:`memorize.api.load_point`, its ``--cell``); an id of none of the
    sweep's finished points, or a point whose scores are unreadable, is the parser's one-line error."""
    try:
        return load_point(sweep, cell, results)
    except ValueError as err:
        parser.error(f"--cell: {err}")


def image_point(point: ScoredPoint) -> ScoredPoint | None:
    """``point`` (:func:`cell_point`), or None, said on stdout, where its data are not images and so there is no
    figure to draw."""
    if not point.is_image:
        print(f"cell {point.row['cell']}: not image data, no figure")
        return None
    return point

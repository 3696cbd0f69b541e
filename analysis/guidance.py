"""Recipe: does classifier-free guidance raise memorization? A paired test on a sweep's guidance scans.

    .venv/bin/python analysis/guidance.py runs/digits_cond [--criterion nn|cos|ext]

For each guidance scan of the sweep (one cell sampled at several weights w; ``sample.guidance`` as a grid
axis), the samples at every w start from the same noise and request the same classes as those at the
smallest w, so their verdicts pair up sample by sample. Prints, per w, the memorization ratio under
``--criterion`` (the d1/d2 criterion over the whole subset by default, or the copy-detection cosine, or
Carlini et al.'s extraction score) with its Wilson interval, the samples memorized only at w (gained) and
only at the smallest w (lost), and the exact McNemar p-value of that difference
(:func:`memorize.metrics.criteria.paired_change`): more sensitive than comparing two Wilson intervals.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from memorize.cli.flags import path_arg
from memorize.cli.recipes import recipe_parser, sweep_results
from memorize.metrics.criteria import paired_change
from memorize.sweep.layout import read_eval
from memorize.sweep.figures import guidance_scans


CRITERIA = {"nn": "nearest-neighbour d1/d2 < ratio", "cos": "copy-detection cosine > threshold",
            "ext": "extraction (Carlini et al.) score < threshold"}


def verdicts(sweep: Path, row: pd.Series) -> pd.DataFrame:
    """The per-sample score table of one grid point."""
    root = sweep / "cells" / row["cell"]
    return pd.read_csv(root / read_eval(root, row["eval"])["files"]["scores"])


def paired_rows(rows: pd.DataFrame, tables: list[pd.DataFrame], criterion: str) -> list[dict]:
    """One scan's weights (``rows``, sorted by w, with their per-sample tables): per w, the memorization ratio
    under ``criterion`` with its Wilson interval and the samples gained and lost against the first w, with the
    exact McNemar p-value. A table whose samples do not pair with the first one's (other seeds or classes), or
    that was scored without ``criterion``, is a ValueError naming the weight."""
    column = f"memorized_{criterion}"
    first, base = rows.iloc[0], tables[0]
    for w, table in zip(rows["guidance"], tables):
        if column not in table:
            raise ValueError(f"the samples at w = {w:g} were scored without --criterion {criterion} (no "
                             f"{column} column): `memorize sweep run` scores them again")
    out = []
    for (_, row), table in zip(rows.iterrows(), tables):
        if not ((table["seed"].to_numpy() == base["seed"].to_numpy()).all()
                and (table["label"].to_numpy() == base["label"].to_numpy()).all()):
            raise ValueError(f"the samples at w = {row['guidance']:g} do not pair with those at "
                             f"w = {first['guidance']:g} (other seeds or classes)")
        change = paired_change(base[column].to_numpy(bool), table[column].to_numpy(bool))
        out.append({"guidance": row["guidance"], "ratio": row[f"mem_{criterion}"], "lo": row[f"mem_{criterion}_lo"],
                    "hi": row[f"mem_{criterion}_hi"], **change})
    return out


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_arg, help="a sweep directory with a guidance scan")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="nn",
                        help="the criterion whose verdicts are paired (default: nn)")
    args = parser.parse_args()
    scans = guidance_scans(sweep_results(parser, args.sweep))
    if scans is None:
        raise SystemExit(f"{args.sweep}: no cell was sampled at two or more guidance weights")
    print(f"memorized: {CRITERIA[args.criterion]}")
    for cell, rows in scans.groupby("cell", sort=False):
        rows = rows.sort_values("guidance")
        first = rows.iloc[0]
        print(f"{first['model']}, N = {first['n_train']}, cell {cell}: paired against w = {first['guidance']:g}")
        print(f"{'w':>5} {'memorized':>22} {'gained':>7} {'lost':>5} {'McNemar p':>10}")
        try:
            table = paired_rows(rows, [verdicts(args.sweep, row) for _, row in rows.iterrows()], args.criterion)
        except ValueError as err:
            raise SystemExit(f"cell {cell}: {err}") from None
        for r in table:
            print(f"{r['guidance']:>5g} {r['ratio']:>8.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
                  f"{r['gained']:>7d} {r['lost']:>5d} {r['p_value']:>10.2g}")


if __name__ == "__main__":
    main()

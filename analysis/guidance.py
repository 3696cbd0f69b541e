"""Recipe: does classifier-free guidance raise memorization? A paired test on a sweep's guidance scans.

    .venv/bin/python analysis/guidance.py runs/digits_cond

For each guidance scan of the sweep (one cell sampled at several weights w; ``sample.guidance`` as a grid
axis), the samples at every w start from the same noise and request the same classes as those at the
smallest w, so their verdicts pair up sample by sample. Prints, per w, the memorization ratio (d1/d2
criterion over the whole subset) with its Wilson interval, the samples memorized only at w (gained) and
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


def verdicts(sweep: Path, row: pd.Series) -> pd.DataFrame:
    """The per-sample score table of one grid point."""
    root = sweep / "cells" / row["cell"]
    return pd.read_csv(root / read_eval(root, row["eval"])["files"]["scores"])


def main() -> None:
    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_arg, help="a sweep directory with a guidance scan")
    args = parser.parse_args()
    scans = guidance_scans(sweep_results(parser, args.sweep))
    if scans is None:
        raise SystemExit(f"{args.sweep}: no cell was sampled at two or more guidance weights")
    for cell, rows in scans.groupby("cell", sort=False):
        rows = rows.sort_values("guidance")
        first = rows.iloc[0]
        base = verdicts(args.sweep, first)
        print(f"{first['model']}, N = {first['n_train']}, cell {cell}: paired against w = {first['guidance']:g}")
        print(f"{'w':>5} {'memorized':>22} {'gained':>7} {'lost':>5} {'McNemar p':>10}")
        for _, row in rows.iterrows():
            table = verdicts(args.sweep, row)
            if not ((table["seed"].to_numpy() == base["seed"].to_numpy()).all()
                    and (table["label"].to_numpy() == base["label"].to_numpy()).all()):
                raise SystemExit(f"cell {cell}: the samples at w = {row['guidance']:g} do not pair with those at "
                                 f"w = {first['guidance']:g} (other seeds or classes)")
            change = paired_change(base["memorized_nn"], table["memorized_nn"])
            print(f"{row['guidance']:>5g} {row['mem_nn']:>8.3f} [{row['mem_nn_lo']:.3f}, {row['mem_nn_hi']:.3f}] "
                  f"{change['gained']:>7d} {change['lost']:>5d} {change['p_value']:>10.2g}")


if __name__ == "__main__":
    main()

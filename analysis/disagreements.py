"""Recipe: where a sweep's three memorization criteria disagree, and what the disagreeing samples look like.

    .venv/bin/python analysis/disagreements.py runs/digits [--cell ID [--eval KEY]] [--per-group K]

(run it with the Python that has memorize installed). Prints, per grid point (model, N, seed, and its
experiment where the sweep's grid has axes beyond model and N), how many samples each pattern of verdicts
covers: flagged by all three (``nn+cos+ext``), by none, and each mixed pattern (``cos`` alone,
``nn+ext``, ...). Draws, for one grid point (``--cell``, with ``--eval`` where the cell is several points;
by default the one with the most disagreeing samples), up to ``--per-group`` samples of each mixed
pattern above their nearest training images into DIR/figures/disagreements_<cell>.png
(disagreements_<cell>_<eval>.png for one of several).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pandas as pd

NAMES = ("nn", "cos", "ext")
# every pattern of verdicts: all three, each pair, each alone, none
PATTERNS = ["+".join(c) for k in (3, 2, 1) for c in itertools.combinations(NAMES, k)] + ["none"]


def pattern_counts(sweep: str, results: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point scored by all three criteria: its cell and eval, model, N, seed, its experiment
    (the sweep's axes beyond model and N) and the count of each verdict pattern (:data:`PATTERNS`)."""
    from memorize.analysis import experiment_axes
    from memorize.api import load_point
    from memorize.plots import verdict_patterns

    axes = experiment_axes(results)
    rows = []
    for _, row in results[results["mem_ext"].notna()].sort_values(["params", "n_train", "seed"]).iterrows():
        try:
            table = load_point(sweep, row["cell"], results, row["eval"]).scores
        except ValueError as err:  # its scores deleted or damaged: the other cells are counted
            print(f"{err}; left out", file=sys.stderr)
            continue
        patterns = pd.Series(verdict_patterns({n: table[f"memorized_{n}"].to_numpy(bool) for n in NAMES}))
        rows.append({"cell": row["cell"], "eval": row["eval"], "model": row["model"], "N": row["n_train"],
                     "seed": row["seed"], **{axis: row[axis] for axis in axes}, **patterns.value_counts().to_dict()})
    return pd.DataFrame(rows, columns=["cell", "eval", "model", "N", "seed", *axes, *PATTERNS]).fillna(
        {p: 0 for p in PATTERNS}).astype({p: int for p in PATTERNS})


def main() -> None:
    from memorize.cli.flags import path_text, positive_int
    from memorize.cli.recipes import (add_point_flags, cell_point, chosen_point, image_point, point_stem, point_title,
                                      recipe_parser, sweep_results)
    from memorize.io import atomic_save_figure
    from memorize.plots import disagreement_figure

    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    add_point_flags(parser, "disagreeing samples")
    parser.add_argument("--per-group", type=positive_int, default=6, help="samples drawn per pattern (default 6)")
    args = parser.parse_args()
    results = sweep_results(parser, args.sweep)
    if "mem_ext" not in results or results["mem_ext"].isna().all():
        parser.error(f"{args.sweep}: no cell is scored by all three criteria (scored before the extraction "
                     f"criterion existed: score it again)")
    chosen = chosen_point(parser, args, results)
    counts = pattern_counts(args.sweep, results)
    print("samples per pattern of verdicts (which criteria flag them):")
    print(counts.drop(columns=["cell", "eval"]).to_string(index=False))
    if chosen is None:
        mixed = counts[[p for p in PATTERNS if p not in ("+".join(NAMES), "none")]].sum(axis=1)
        picked = counts.loc[mixed.idxmax()]
        chosen = cell_point(parser, args.sweep, picked["cell"], results, picked["eval"])
    point = image_point(chosen)
    if point is None:
        return
    row, table = point.row, point.scores
    fig = disagreement_figure(point.samples(), point.train, table["nn_index"].to_numpy(),
                              {n: table[f"memorized_{n}"].to_numpy(bool) for n in NAMES}, per_group=args.per_group,
                              title=point_title(results, row))
    out = Path(args.sweep) / "figures" / f"disagreements_{point_stem(results, row)}.png"
    atomic_save_figure(out, fig, dpi=150, bbox_inches="tight")  # a title wider than a few columns
    print(f"\nfigure: {out}")


if __name__ == "__main__":
    main()

"""Recipe: where a sweep's three memorization criteria disagree, and what the disagreeing samples look like.

    .venv/bin/python analysis/disagreements.py runs/digits [--cell ID] [--per-group K]

(run it with the Python that has memorize installed). Prints, per cell (model, N, seed), how many samples
each pattern of verdicts covers: flagged by all three (``nn+cos+ext``), by none, and each mixed pattern
(``cos`` alone, ``nn+ext``, ...). Draws, for one cell (``--cell``; by default the one with the most
disagreeing samples), up to ``--per-group`` samples of each mixed pattern above their nearest training
images into DIR/figures/disagreements_<cell>.png.
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
    """One row per cell scored by all three criteria: model, N, seed and the count of each verdict pattern
    (:data:`PATTERNS`)."""
    from memorize.api import load_point
    from memorize.plots import verdict_patterns

    rows = []
    for _, row in results[results["mem_ext"].notna()].sort_values(["params", "n_train", "seed"]).iterrows():
        try:
            table = load_point(sweep, row["cell"], results).scores
        except ValueError as err:  # its scores deleted or damaged: the other cells are counted
            print(f"{err}; left out", file=sys.stderr)
            continue
        patterns = pd.Series(verdict_patterns({n: table[f"memorized_{n}"].to_numpy(bool) for n in NAMES}))
        rows.append({"cell": row["cell"], "model": row["model"], "N": row["n_train"], "seed": row["seed"],
                     **patterns.value_counts().to_dict()})
    return pd.DataFrame(rows, columns=["cell", "model", "N", "seed", *PATTERNS]).fillna(0).astype(
        {p: int for p in PATTERNS})


def main() -> None:
    from memorize.cli.flags import path_text, positive_int
    from memorize.cli.recipes import cell_point, image_point, recipe_parser, sweep_results
    from memorize.io import atomic_save_figure
    from memorize.plots import disagreement_figure

    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--cell", help="the cell whose disagreeing samples are drawn")
    parser.add_argument("--per-group", type=positive_int, default=6, help="samples drawn per pattern (default 6)")
    args = parser.parse_args()
    results = sweep_results(parser, args.sweep)
    if "mem_ext" not in results or results["mem_ext"].isna().all():
        parser.error(f"{args.sweep}: no cell is scored by all three criteria (scored before the extraction "
                     f"criterion existed: score it again)")
    # a mistyped --cell is named before the tables are worked out
    chosen = cell_point(parser, args.sweep, args.cell, results) if args.cell is not None else None
    counts = pattern_counts(args.sweep, results)
    print("samples per pattern of verdicts (which criteria flag them):")
    print(counts.drop(columns="cell").to_string(index=False))
    mixed = counts.drop(columns=["cell", "model", "N", "seed", "+".join(NAMES), "none"]).sum(axis=1)
    cid = args.cell or str(counts.loc[mixed.idxmax(), "cell"])
    point = image_point(chosen if chosen is not None else cell_point(parser, args.sweep, cid, results))
    if point is None:
        return
    row, table = point.row, point.scores
    fig = disagreement_figure(point.samples(), point.train, table["nn_index"].to_numpy(),
                              {n: table[f"memorized_{n}"].to_numpy(bool) for n in NAMES}, per_group=args.per_group,
                              title=f"{row['model']}, N = {row['n_train']:,}, seed {row['seed']} (cell {cid})")
    out = Path(args.sweep) / "figures" / f"disagreements_{cid}.png"
    atomic_save_figure(out, fig, dpi=150, bbox_inches="tight")  # a title wider than a few columns
    print(f"\nfigure: {out}")


if __name__ == "__main__":
    main()

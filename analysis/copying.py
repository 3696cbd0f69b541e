"""Recipe: which training images a sweep's memorized samples copy, and how concentrated that is.

    .venv/bin/python analysis/copying.py runs/digits [--criterion nn|cos|ext] [--cell ID] [--near-threshold T]

(run it with the Python that has memorize installed). Prints, per model and N (seeds averaged), the
memorization ratio and the share of memorized samples that copy the most-copied 10% of the training
images (``copied_top10_<criterion>`` in results.csv: 1 where every copy goes to a few images, about 0.1
where copies spread evenly; empty where no sample is memorized); then, per cell with memorized samples,
whether the copied training images are the near-duplicated or the outlying ones: how many of its training
images have a near-copy in the same subset (the rule of ``data.dedup: near`` at ``--near-threshold``,
default 0.98) and which share of those and of the others is copied, and the median distance from a
copied and from an uncopied training image to its nearest other training image (pixel L2). Last, it
draws, for one cell (``--cell``; by default the cell with the largest N among those with at least 8
memorized samples), its most-copied training images with their copies into
DIR/figures/most_copied_<cell>.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

CRITERIA = {"nn": ("memorized_nn", "nn_index"), "cos": ("memorized_cos", "cos_index"),
            "ext": ("memorized_ext", "ext_index")}


def concentration_table(results: pd.DataFrame, criterion: str) -> pd.DataFrame:
    """Models (by size) x N: ``ratio / top-10% share``, seeds averaged."""
    column = f"copied_top10_{criterion}"
    judged = results[results[f"mem_{criterion}"].notna()]
    means = judged.groupby(["params", "model", "n_train"], sort=True)[[f"mem_{criterion}", column]].mean()
    text = [f"{r:.2f} / " + ("-" if c != c else f"{c:.2f}") for r, c in means.to_numpy()]
    table = means.assign(cell=text).reset_index()
    order = list(dict.fromkeys(table.sort_values("params")["model"]))
    return table.pivot(index="model", columns="n_train", values="cell").loc[order]


def duplicated_and_outlying(train: np.ndarray, copies: np.ndarray, threshold: float) -> dict:
    """For one cell's training images (N, ...) and how often each is copied: the number with a near-copy among
    the others (:mod:`memorize.data.near_duplicates` at ``threshold``), the share copied at least once among
    those and among the rest (NaN for an empty group), and the median L2 distance to the nearest other
    distinct training image (exact search) of the copied and of the uncopied ones."""
    from memorize.data.near_duplicates import near_descriptors, near_duplicate_pairs
    from memorize.metrics.criteria import nearest_distinct

    near = np.zeros(len(train), dtype=bool)
    near[near_duplicate_pairs(near_descriptors(torch.from_numpy(train)), threshold).ravel()] = True
    isolation = nearest_distinct(train, train, keep=2, candidates=4).distances[:, 1]
    copied = copies > 0

    def share(group: np.ndarray) -> float:
        return float(copied[group].mean()) if group.any() else float("nan")

    def median(group: np.ndarray) -> float:
        return float(np.median(isolation[group])) if group.any() else float("nan")

    return {"n_near": int(near.sum()), "copied_near": share(near), "copied_other": share(~near),
            "isolation_copied": median(copied), "isolation_uncopied": median(~copied)}


def pick_cell(results: pd.DataFrame, criterion: str, least: int = 8) -> str:
    """The cell with the largest N among those with at least ``least`` memorized samples (the most memorized
    one where none has that many)."""
    hits = (results[f"mem_{criterion}"] * results["n_samples"]).round()
    many = results[hits >= least]
    chosen = many.sort_values(["n_train", "params"]).iloc[-1] if len(many) else results.loc[hits.idxmax()]
    return str(chosen["cell"])


def copied_images_table(sweep: str, results: pd.DataFrame, criterion: str, threshold: float) -> pd.DataFrame:
    """One row per finished cell with memorized samples under ``criterion``: model, N, seed, memorized
    samples, training images copied, and :func:`duplicated_and_outlying`."""
    from memorize.api import load_point

    flag, index = CRITERIA[criterion]
    rows = []
    for _, row in results[results[f"mem_{criterion}"] > 0].sort_values(["params", "n_train", "seed"]).iterrows():
        point = load_point(sweep, row["cell"], results)
        table = point.scores
        copies = np.bincount(table[index][table[flag]], minlength=len(point.train))
        rows.append({"model": row["model"], "N": row["n_train"], "seed": row["seed"],
                     "memorized": int(table[flag].sum()), "copied": int((copies > 0).sum()),
                     **duplicated_and_outlying(point.train, copies, threshold)})
    columns = ["model", "N", "seed", "memorized", "copied", "n_near", "copied_near", "copied_other",
               "isolation_copied", "isolation_uncopied"]
    return pd.DataFrame(rows, columns=columns).round(3)


def main() -> None:
    from memorize.cli.flags import cosine, path_text
    from memorize.cli.recipes import cell_point, image_point, recipe_parser, sweep_results
    from memorize.io import atomic_save_figure
    from memorize.plots import most_copied_figure

    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="nn",
                        help="the criterion whose flagged samples count as copies (default: nn)")
    parser.add_argument("--cell", help="the cell whose most-copied training images are drawn")
    parser.add_argument("--near-threshold", type=cosine, default=0.98,
                        help="the near-copy cosine (pixel correlation) of data.dedup: near (default 0.98)")
    args = parser.parse_args()
    results = sweep_results(parser, args.sweep)
    column = f"copied_top10_{args.criterion}"
    if column not in results or results[f"mem_{args.criterion}"].isna().all():
        parser.error(f"--criterion {args.criterion}: no cell of {args.sweep} records which images it copies "
                     f"(scored before this existed: score it again)")
    # a mistyped --cell is named before the tables are worked out
    chosen = cell_point(parser, args.sweep, args.cell, results) if args.cell is not None else None
    print(f"memorization ratio / share of memorized samples copying the top 10% of training images "
          f"({args.criterion}; seeds averaged):")
    print(concentration_table(results, args.criterion).to_string())
    print(f"\nwhich training images are copied ({args.criterion}; near-copies in the subset at cosine >= "
          f"{args.near_threshold}; isolation: median L2 distance to the nearest other training image):")
    print(copied_images_table(args.sweep, results, args.criterion, args.near_threshold).to_string(index=False))
    cid = args.cell or pick_cell(results[results[f"mem_{args.criterion}"].notna()], args.criterion)
    point = image_point(chosen if chosen is not None else cell_point(parser, args.sweep, cid, results))
    if point is None:
        return
    row, table = point.row, point.scores
    flag, index = CRITERIA[args.criterion]
    fig = most_copied_figure(point.samples(), point.train, table[index].to_numpy(), table[flag].to_numpy(bool),
                             title=f"{row['model']}, N = {row['n_train']:,}, seed {row['seed']} (cell {cid}), "
                                   f"criterion {args.criterion}")
    out = Path(args.sweep) / "figures" / f"most_copied_{cid}.png"
    atomic_save_figure(out, fig, dpi=150, bbox_inches="tight")  # a title wider than a few columns
    copied = np.bincount(table[index][table[flag]], minlength=len(point.train))
    print(f"\ncell {cid} (N = {row['n_train']:,}): {int(table[flag].sum())} memorized samples copy "
          f"{int((copied > 0).sum())} training images, the most-copied {int(copied.max())} times; figure {out}")


if __name__ == "__main__":
    main()

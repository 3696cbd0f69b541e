"""Recipe: which training images a sweep's memorized samples copy, and how concentrated that is.

    .venv/bin/python analysis/copying.py runs/digits [--criterion nn|cos|ext] [--cell ID [--eval KEY]]
        [--near-threshold T]

(run it with the Python that has memorize installed). Prints, per model and N (seeds averaged), the
memorization ratio and the share of memorized samples that copy the most-copied 10% of the training
images (``copied_top10_<criterion>`` in results.csv: 1 where every copy goes to a few images, about 0.1
where copies spread evenly; empty where no sample is memorized); then, per cell with memorized samples,
whether the copied training images are the near-duplicated or the outlying ones: how many of its training
images have a near-copy in the same subset (the rule of ``data.dedup: near`` at ``--near-threshold``,
default 0.98) and which share of those and of the others is copied, and the median distance from a
copied and from an uncopied training image to its nearest other training image (pixel L2). In a sweep
with experiments (grid axes beyond model and N) each is a row of its own. Last, it draws, for one grid
point (``--cell``, with ``--eval`` where the cell is several points; by default the point with the
largest N among those with at least 8 memorized samples), its most-copied training images with their
copies into DIR/figures/most_copied_<cell>.png (most_copied_<cell>_<eval>.png for one of several).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

CRITERIA = {"nn": ("memorized_nn", "nn_index"), "cos": ("memorized_cos", "cos_index"),
            "ext": ("memorized_ext", "ext_index")}


def concentration_table(results: pd.DataFrame, criterion: str) -> pd.DataFrame:
    """Models (by size; by experiment, the sweep's axes beyond model and N, where there are several) x N:
    ``ratio / top-10% share``, seeds averaged."""
    from memorize.analysis import experiment_axes

    column = f"copied_top10_{criterion}"
    axes = experiment_axes(results)
    judged = results[results[f"mem_{criterion}"].notna()]
    means = judged.groupby(["params", "model", *axes, "n_train"], sort=True, dropna=False)[
        [f"mem_{criterion}", column]].mean()
    text = [f"{r:.2f} / " + ("-" if c != c else f"{c:.2f}") for r, c in means.to_numpy()]
    table = means.assign(cell=text).reset_index()
    index = ["model", *axes]
    order = list(dict.fromkeys(map(tuple, table.sort_values("params", kind="stable")[index].to_numpy())))
    pivot = table.pivot(index=index, columns="n_train", values="cell")
    return pivot.loc[order if axes else [key[0] for key in order]]


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


def pick_point(results: pd.DataFrame, criterion: str, least: int = 8) -> pd.Series:
    """The row of the grid point with the largest N among those with at least ``least`` memorized samples
    (the most memorized one where none has that many)."""
    hits = (results[f"mem_{criterion}"] * results["n_samples"]).round()
    many = results[hits >= least]
    return many.sort_values(["n_train", "params"]).iloc[-1] if len(many) else results.loc[hits.idxmax()]


def copied_images_table(sweep: str, results: pd.DataFrame, criterion: str, threshold: float) -> pd.DataFrame:
    """One row per finished grid point with memorized samples under ``criterion``: model, N, seed, its
    experiment (the sweep's axes beyond model and N), memorized samples, training images copied, and
    :func:`duplicated_and_outlying`."""
    from memorize.analysis import experiment_axes
    from memorize.api import load_point

    flag, index = CRITERIA[criterion]
    axes = experiment_axes(results)
    rows = []
    for _, row in results[results[f"mem_{criterion}"] > 0].sort_values(["params", "n_train", "seed"]).iterrows():
        point = load_point(sweep, row["cell"], results, row["eval"])
        table = point.scores
        copies = np.bincount(table[index][table[flag]], minlength=len(point.train))
        rows.append({"model": row["model"], "N": row["n_train"], "seed": row["seed"],
                     **{axis: row[axis] for axis in axes},
                     "memorized": int(table[flag].sum()), "copied": int((copies > 0).sum()),
                     **duplicated_and_outlying(point.train, copies, threshold)})
    columns = ["model", "N", "seed", *axes, "memorized", "copied", "n_near", "copied_near", "copied_other",
               "isolation_copied", "isolation_uncopied"]
    return pd.DataFrame(rows, columns=columns).round(3)


def main() -> None:
    from memorize.cli.flags import cosine, path_text
    from memorize.cli.recipes import (add_point_flags, cell_point, chosen_point, image_point, point_stem, point_title,
                                      recipe_parser, sweep_results)
    from memorize.io import atomic_save_figure
    from memorize.plots import most_copied_figure

    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="nn",
                        help="the criterion whose flagged samples count as copies (default: nn)")
    add_point_flags(parser, "most-copied training images")
    parser.add_argument("--near-threshold", type=cosine, default=0.98,
                        help="the near-copy cosine (pixel correlation) of data.dedup: near (default 0.98)")
    args = parser.parse_args()
    results = sweep_results(parser, args.sweep)
    column = f"copied_top10_{args.criterion}"
    if column not in results or results[f"mem_{args.criterion}"].isna().all():
        parser.error(f"--criterion {args.criterion}: no cell of {args.sweep} records which images it copies "
                     f"(scored before this existed: score it again)")
    chosen = chosen_point(parser, args, results)
    print(f"memorization ratio / share of memorized samples copying the top 10% of training images "
          f"({args.criterion}; seeds averaged):")
    print(concentration_table(results, args.criterion).to_string())
    print(f"\nwhich training images are copied ({args.criterion}; near-copies in the subset at cosine >= "
          f"{args.near_threshold}; isolation: median L2 distance to the nearest other training image):")
    print(copied_images_table(args.sweep, results, args.criterion, args.near_threshold).to_string(index=False))
    if chosen is None:
        picked = pick_point(results[results[f"mem_{args.criterion}"].notna()], args.criterion)
        chosen = cell_point(parser, args.sweep, picked["cell"], results, picked["eval"])
    point = image_point(chosen)
    if point is None:
        return
    row, table = point.row, point.scores
    flag, index = CRITERIA[args.criterion]
    fig = most_copied_figure(point.samples(), point.train, table[index].to_numpy(), table[flag].to_numpy(bool),
                             title=f"{point_title(results, row)}, criterion {args.criterion}")
    out = Path(args.sweep) / "figures" / f"most_copied_{point_stem(results, row)}.png"
    atomic_save_figure(out, fig, dpi=150, bbox_inches="tight")  # a title wider than a few columns
    copied = np.bincount(table[index][table[flag]], minlength=len(point.train))
    print(f"\ncell {row['cell']} (N = {row['n_train']:,}): {int(table[flag].sum())} memorized samples copy "
          f"{int((copied > 0).sum())} training images, the most-copied {int(copied.max())} times; figure {out}")


if __name__ == "__main__":
    main()

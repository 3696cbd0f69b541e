"""Recipe: which training images a sweep's memorized samples copy, and how concentrated that is.

    .venv/bin/python analysis/copying.py runs/digits [--criterion nn|cos|ext] [--cell ID]

(run it with the Python that has memorize installed). Prints, per model and N (seeds averaged), the
memorization ratio and the share of memorized samples that copy the most-copied 10% of the training
images (``copied_top10_<criterion>`` in results.csv: 1 where every copy goes to a few images, about 0.1
where copies spread evenly; empty where no sample is memorized), and draws, for one cell (``--cell``;
by default the cell with the largest N among those with at least 8 memorized samples), its most-copied
training images with their copies into DIR/figures/most_copied_<cell>.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

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


def pick_cell(results: pd.DataFrame, criterion: str, least: int = 8) -> str:
    """The cell with the largest N among those with at least ``least`` memorized samples (the most memorized
    one where none has that many)."""
    hits = (results[f"mem_{criterion}"] * results["n_samples"]).round()
    many = results[hits >= least]
    chosen = many.sort_values(["n_train", "params"]).iloc[-1] if len(many) else results.loc[hits.idxmax()]
    return str(chosen["cell"])


def main() -> None:
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.generate import read_samples
    from memorize.io import atomic_save_figure
    from memorize.plots import most_copied_figure
    from memorize.sweep import collect
    from memorize.sweep.layout import read_eval

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--criterion", choices=list(CRITERIA), default="nn",
                        help="the criterion whose flagged samples count as copies (default: nn)")
    parser.add_argument("--cell", help="the cell whose most-copied training images are drawn")
    args = parser.parse_args()
    results = collect(args.sweep)
    column = f"copied_top10_{args.criterion}"
    if column not in results or results[f"mem_{args.criterion}"].isna().all():
        parser.error(f"--criterion {args.criterion}: no cell of {args.sweep} records which images it copies "
                     f"(scored before this existed: score it again)")
    print(f"memorization ratio / share of memorized samples copying the top 10% of training images "
          f"({args.criterion}; seeds averaged):")
    print(concentration_table(results, args.criterion).to_string())
    cid = args.cell or pick_cell(results[results[f"mem_{args.criterion}"].notna()], args.criterion)
    rows = results[results.cell == cid]
    if rows.empty:
        parser.error(f"--cell {cid}: not a finished cell of {args.sweep}")
    row = rows.iloc[0]
    root = Path(args.sweep) / "cells" / cid
    files = read_eval(root, row["eval"])["files"]
    table = pd.read_csv(root / files["scores"])
    data = load_cell_data(read_config(root), CellPaths(root))
    if not data.dataset.is_image:
        print(f"cell {cid}: not image data, no figure")
        return
    samples = read_samples(root / files["samples"])["samples"]
    flag, index = CRITERIA[args.criterion]
    fig = most_copied_figure(samples, data.train.numpy(), table[index].to_numpy(), table[flag].to_numpy(bool),
                             title=f"{row['model']}, N = {row['n_train']:,}, seed {row['seed']} (cell {cid}), "
                                   f"criterion {args.criterion}")
    out = Path(args.sweep) / "figures" / f"most_copied_{cid}.png"
    atomic_save_figure(out, fig, dpi=150)
    copied = np.bincount(table[index][table[flag]], minlength=len(data.train))
    print(f"\ncell {cid} (N = {row['n_train']:,}): {int(table[flag].sum())} memorized samples copy "
          f"{int((copied > 0).sum())} training images, the most-copied {int(copied.max())} times; figure {out}")


if __name__ == "__main__":
    main()

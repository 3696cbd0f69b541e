"""Recipe: hold every extraction score of a sweep against a brute-force float64 evaluation of the formula.

    .venv/bin/python analysis/check_extraction.py runs/digits

(run it with the Python that has memorize installed). For each finished cell, every sample's distance to
every training image of its subset from explicit float64 differences, the n = 50 nearest (all, where the
subset is smaller) by a stable sort, ``l = d1 / (0.5 * their mean)``: compared with the cell's per-sample
table (``ext_score``, ``ext_index``, ``memorized_ext`` at the cell's calibrated threshold). Prints the number
of samples checked, the largest relative difference and the verdicts and indices that differ; exits 1 if any does.
It also times the criterion's share of scoring: per cell, the extraction scores of the samples and held-out images
(as ``memorize score`` computes them, best of three) against the cell's recorded scoring time. Last, per N, the
share of the held-out images that a fixed cut-off would flag (``--fixed-threshold``, default 1: ``d1 <= 0.5 x``
the mean distance, the default of one public implementation) beside the calibrated threshold and its rate.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def brute_force(samples: np.ndarray, train: np.ndarray, n: int = 50, alpha: float = 0.5):
    """(nearest index, score) of each sample: the paper's formula over all pairwise float64 distances."""
    s, t = samples.reshape(len(samples), -1).astype(np.float64), train.reshape(len(train), -1).astype(np.float64)
    d = np.sqrt(((s[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :n]
    near = np.take_along_axis(d, order, 1)
    return order[:, 0], near[:, 0] / (alpha * near.mean(1))


def main() -> None:
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.cli.flags import path_text, positive_number
    from memorize.cli.recipes import recipe_parser, sweep_results
    from memorize.generate import read_samples
    from memorize.score import extraction_scores
    from memorize.sweep.layout import read_eval

    parser = recipe_parser(__doc__)
    parser.add_argument("sweep", type=path_text, help="a sweep directory (memorize sweep run ... --out DIR)")
    parser.add_argument("--fixed-threshold", type=positive_number, default=1.0,
                        help="a fixed cut-off on the score whose held-out false-positive rate is shown (default 1)")
    args = parser.parse_args()
    results = sweep_results(parser, args.sweep)
    results = results[results["mem_ext"].notna()]
    if results.empty:
        parser.error(f"{args.sweep}: no cell scored with the extraction criterion")
    checked = index_differs = verdict_differs = 0
    worst = 0.0
    shares, fixed = [], {}
    for row in results.itertuples():
        root = Path(args.sweep) / "cells" / row.cell
        record = read_eval(root, row.eval)
        table = pd.read_csv(root / record["files"]["scores"])
        summary = json.loads((root / record["files"]["scores"]).with_suffix(".json").read_text())
        target_fpr = summary["ext"]["target_fpr"]
        data = load_cell_data(read_config(root), CellPaths(root))
        samples = read_samples(root / record["files"]["samples"])["samples"]
        nearest, score = brute_force(np.asarray(samples), data.train.numpy())
        worst = max(worst, float(np.max(np.abs(table["ext_score"] - score) / np.maximum(score, 1e-300))))
        index_differs += int((table["ext_index"].to_numpy() != nearest).sum())
        verdict_differs += int((table["memorized_ext"].to_numpy(bool) != (score < row.threshold_ext)).sum())
        checked += len(table)
        if row.n_train not in fixed:  # the held-out images and the subset are the same for every model at one N
            _, heldout_score = brute_force(data.heldout.numpy(), data.train.numpy())
            fixed[row.n_train] = (row.threshold_ext, row.fpr_ext, float(np.mean(heldout_score <= args.fixed_threshold)),
                                  len(heldout_score))
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            extraction_scores(np.asarray(samples), data.heldout.numpy(), data.train.numpy(), target_fpr)
            seconds.append(time.perf_counter() - start)
        shares.append((min(seconds), float(record["seconds"]["score"])))
    print(f"{checked} samples of {len(results)} cells: largest relative difference of the score {worst:.2e}; "
          f"nearest training image differs for {index_differs}, the verdict for {verdict_differs}")
    ext = np.array([e for e, _ in shares])
    total = np.array([t for _, t in shares])
    print(f"the extraction criterion took {ext.min():.3f}-{ext.max():.3f} s per cell (median {np.median(ext):.3f} s) "
          f"of {np.median(total):.2f} s median scoring: {100 * np.median(ext / (total - ext)):.1f}% more than the rest "
          f"of scoring (largest {100 * np.max(ext / (total - ext)):.1f}%)")
    print(f"held-out images flagged: N, calibrated threshold and its rate, the rate at score <= {args.fixed_threshold}")
    for n_train, (threshold, fpr, at_fixed, count) in sorted(fixed.items()):
        print(f"  N = {n_train:,}: {threshold:.3f} flags {fpr:.3f}; {args.fixed_threshold} flags {at_fixed:.3f} "
              f"(of {count})")
    sys.exit(1 if index_differs or verdict_differs or worst > 1e-9 else 0)


if __name__ == "__main__":
    main()

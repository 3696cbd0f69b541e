"""Scoring a cell's samples against its own training subset with both criteria.

Writes ``DIR/scores/NAME.csv`` (one row per sample), ``NAME.json`` (the memorization ratios
with Wilson intervals and every setting used) and ``NAME_nn.png`` (nearest-neighbour figure,
image data only), for the sample set ``DIR/samples/NAME.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from memorize.cell import CellPaths, load_cell_data, read_config, resolve_device
from memorize.generate import read_samples
from memorize.io import atomic_save_figure, atomic_write_json, atomic_write_text
from memorize.metrics.calibration import calibrated_threshold, min_heldout
from memorize.metrics.criteria import copy_similarity, memorization_ratio, nn_ratio
from memorize.metrics.embedders import load_embedder
from memorize.plots import nearest_neighbour_figure


def per_sample_table(seeds: np.ndarray, train_index: np.ndarray, nn, cos) -> pd.DataFrame:
    """One row per sample; ``*_index`` columns index the training subset, ``*_dataset_index`` the dataset."""
    def dataset_index(i: np.ndarray) -> np.ndarray:
        return np.where(i >= 0, train_index[np.maximum(i, 0)], -1)

    return pd.DataFrame({
        "sample": np.arange(len(seeds)), "seed": seeds, "finite": nn.finite,
        "nn_index": nn.nearest, "nn_dataset_index": dataset_index(nn.nearest), "second_index": nn.second,
        "d1": nn.d1, "d2": nn.d2, "ratio": nn.ratio, "memorized_nn": nn.memorized,
        "cos_index": cos.nearest, "cos_dataset_index": dataset_index(cos.nearest),
        "similarity": cos.similarity, "memorized_cos": cos.memorized,
    })


def score_cell(root: str | Path, samples: str = "trained", embedder: str = "pixel", ratio: float = 1 / 3,
               threshold: float | str = 0.6, device: str = "auto", progress: bool = True, name: str | None = None,
               target_fpr: float = 0.01) -> dict:
    """Score ``DIR/samples/<samples>.npz`` with both criteria; returns the summary written to JSON.

    The cell's held-out images are scored the same way against the training subset: the share each
    criterion flags among them is its false-positive rate (``fpr`` in each criterion's summary).
    ``threshold="auto"`` sets the cosine threshold from them for ``target_fpr``
    (:func:`memorize.metrics.calibration.calibrated_threshold`). Outputs are named ``name``
    (default: ``samples``) under ``DIR/scores/``."""
    paths = CellPaths(Path(root))
    sample_file = paths.samples / f"{samples}.npz"
    if not sample_file.is_file():
        raise FileNotFoundError(f"{sample_file} not found: run `memorize sample {root}` first "
                                f"(or name an existing set with --samples)")
    drawn = read_samples(sample_file)
    data = load_cell_data(read_config(paths.root), paths)
    train = data.train.numpy()
    if threshold == "auto" and len(data.heldout) < min_heldout(target_fpr):  # before any work
        calibrated_threshold(np.zeros(len(data.heldout)), target_fpr)
    nn = nn_ratio(drawn["samples"], train, ratio)
    embed = load_embedder(embedder, str(resolve_device(device)))
    train_features = embed(train, progress)
    heldout_nn = nn_ratio(data.heldout.numpy(), train, ratio) if len(data.heldout) else None
    heldout_cos = copy_similarity(embed(data.heldout.numpy(), progress), train_features, 1.0) \
        if len(data.heldout) else None
    used = calibrated_threshold(heldout_cos.similarity, target_fpr) if threshold == "auto" else float(threshold)
    cos = copy_similarity(embed(drawn["samples"], progress), train_features, used)

    def fpr(flagged: np.ndarray | None) -> dict:
        return memorization_ratio(flagged) if flagged is not None else {"ratio": float("nan")}

    out = paths.root / "scores"
    name = name or samples
    table = per_sample_table(drawn["seeds"], data.split.train, nn, cos)
    atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    summary = {
        "samples": samples, "n_samples": len(table), "n_train": len(train),
        "sample_settings": drawn["settings"],
        "nn": {"criterion": "d1 / d2 < ratio", "ratio_threshold": ratio, **memorization_ratio(nn.memorized),
               "n_nonfinite": int((~nn.finite).sum()), "n_train_duplicates": nn.n_train_duplicates,
               "backend": nn.backend, "fpr": fpr(heldout_nn.memorized if heldout_nn else None)},
        "cos": {"criterion": "max cosine > threshold", "threshold": used, "threshold_setting": threshold,
                "target_fpr": target_fpr if threshold == "auto" else None, "embedder": embedder,
                **memorization_ratio(cos.memorized), "n_unusable": int((~cos.finite).sum()),
                "backend": cos.backend,
                "fpr": fpr(heldout_cos.similarity > used if heldout_cos else None)},
        "n_heldout": len(data.heldout),
    }
    if data.dataset.is_image:
        fig = nearest_neighbour_figure(drawn["samples"], train, nn.nearest, nn.ratio,
                                       title=f"{paths.root.name}: {samples} samples, nearest training images")
        atomic_save_figure(out / f"{name}_nn.png", fig, dpi=150, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
    atomic_write_json(out / f"{name}.json", summary)
    return summary

import json

import numpy as np
import pandas as pd
import pytest

from memorize.cell import CellPaths, load_cell_data, read_config
from memorize.cli import main
from memorize.compare import disjoint_consistency
from memorize.generate import read_samples
from memorize.metrics import nn_ratio


def _train(cell, *settings):
    args = ["train", "--out", str(cell), "--quiet", "--set", "train.steps=20", "--set", "model.channels=8",
            "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"]
    for s in settings:
        args += ["--set", s]
    assert main(args) == 0


def test_empirical_samples_memorize_and_gaussian_samples_do_not(tmp_path):
    cell = tmp_path / "cell"
    _train(cell, "data.n_train=100", "train.steps=1")
    train = load_cell_data(read_config(cell), CellPaths(cell)).train.numpy()
    ratios = {}
    for name in ("empirical", "gaussian"):
        assert main(["sample", str(cell), "--denoiser", name, "--num", "256", "--quiet"]) == 0
        ratios[name] = nn_ratio(read_samples(cell / "samples" / f"{name}.npz")["samples"], train).memorized.mean()
    assert ratios["empirical"] >= 0.95 and ratios["gaussian"] <= 0.05, ratios


def test_compare_writes_gap_curves_agreement_and_figure(tmp_path, capsys):
    cell = tmp_path / "cell"
    _train(cell, "data.n_train=16", "sample.num=12")
    assert main(["compare", str(cell), "--n-eval", "32", "--quiet"]) == 0
    assert "same-noise agreement with the empirical denoiser" in capsys.readouterr().out
    gap = pd.read_csv(cell / "compare" / "gap.csv")
    assert set(gap.split) == {"train", "heldout"} and len(gap) == 24
    small = gap[gap.sigma == gap.sigma.min()].set_index("split")
    assert small.loc["train", "mse_empirical"] < 1e-6  # the empirical denoiser returns its own training image
    assert small.loc["heldout", "mse_empirical"] > 0.05  # ... and a wrong one for a held-out image
    large = gap[gap.sigma == gap.sigma.max()].set_index("split")
    assert large.loc["train", "gap_empirical"] == pytest.approx(large.loc["train", "gap_gaussian"], rel=0.05)
    summary = json.loads((cell / "compare" / "compare.json").read_text())
    assert 0 <= summary["agreement"] <= 1 and summary["reproducibility"]["n"] == 12
    assert summary["threshold_setting"] is None and 0.9 < summary["threshold"] < 1  # auto for pixels
    assert set(summary["loss_gap"]) == {f"{s:.4g}" for s in gap.sigma.unique()}
    assert (cell / "compare" / "gap.png").stat().st_size > 1000
    a, b = (read_samples(cell / "samples" / f"{n}.npz") for n in ("trained", "trained_empirical"))
    assert np.array_equal(a["seeds"], b["seeds"]) and b["settings"]["denoiser"] == "empirical"


def test_disjoint_subsets_memorizing_disagree_generalizing_agree(tmp_path):
    cells = [tmp_path / "a", tmp_path / "b"]
    for cell, offset in zip(cells, (0, 100)):
        _train(cell, "data.n_train=100", f"data.subset_offset={offset}", "train.steps=1")
        for name in ("empirical", "gaussian"):
            assert main(["sample", str(cell), "--denoiser", name, "--num", "64", "--quiet"]) == 0
    memorizing = disjoint_consistency(*cells, samples="empirical", threshold=0.9)
    generalizing = disjoint_consistency(*cells, samples="gaussian", threshold=0.9)
    assert memorizing["score"] < 0.2 < 0.8 < generalizing["score"], (memorizing, generalizing)
    # by default (pixels) the threshold is calibrated on cell a's held-out digits: far above the papers' 0.6
    calibrated = disjoint_consistency(*cells, samples="empirical")
    assert calibrated["threshold_setting"] is None and 0.9 < calibrated["threshold"] < 1
    assert calibrated["score"] < 0.2
    with pytest.raises(ValueError, match="share 100 images"):
        disjoint_consistency(cells[0], cells[0], samples="empirical")

"""Criteria calibrated on held-out real images: false-positive rates, and the automatic cosine threshold."""

import json

import numpy as np
import pytest

from memorize.metrics import calibrated_threshold
from memorize.score import score_cell
from tests.conftest import trained_tiny_cell


def test_calibrated_threshold_flags_at_most_the_target_share():
    sims = np.arange(100) / 100.0  # 0.00 ... 0.99
    assert calibrated_threshold(sims, 0.01) == pytest.approx(0.98)  # only 0.99 lies above
    t = calibrated_threshold(np.random.default_rng(0).permutation(sims), 0.05)
    assert t == pytest.approx(0.94) and (sims > t).sum() == 5
    with_nan = np.append(sims, np.nan)
    assert calibrated_threshold(with_nan, 0.01) == pytest.approx(0.98)
    with pytest.raises(ValueError, match=r"needs at least 100 held-out images; this cell has 50"):
        calibrated_threshold(sims[:50], 0.01)


@pytest.fixture(scope="module")
def heldout_cell(tmp_path_factory):
    return trained_tiny_cell(tmp_path_factory.mktemp("calibration") / "cell", n_heldout=200)


def test_a_fixed_pixel_threshold_flags_real_images_and_auto_does_not(heldout_cell):
    fixed = score_cell(heldout_cell, threshold=0.6, progress=False, name="fixed")
    # raw-pixel cosines of digits are high for any pair: most real held-out digits pass 0.6
    assert fixed["n_heldout"] == 200 and fixed["cos"]["fpr"]["ratio"] > 0.5
    auto = score_cell(heldout_cell, threshold="auto", target_fpr=0.01, progress=False, name="auto")
    assert auto["cos"]["fpr"]["ratio"] <= 0.01 and auto["cos"]["threshold"] > 0.6
    assert auto["cos"]["threshold_setting"] == "auto" and auto["cos"]["target_fpr"] == 0.01
    # the nearest-neighbour criterion barely flags real images against an N = 32 subset
    assert auto["nn"]["fpr"]["ratio"] < 0.05
    saved = json.loads((heldout_cell / "scores" / "auto.json").read_text())
    assert saved["cos"]["threshold"] == auto["cos"]["threshold"]


def test_auto_with_too_few_heldout_images_is_an_error_before_any_output(heldout_cell):
    with pytest.raises(ValueError, match=r"needs at least 1000 held-out images; this cell has 200"):
        score_cell(heldout_cell, threshold="auto", target_fpr=0.001, progress=False, name="rare")
    assert not list((heldout_cell / "scores").glob("rare*"))


def test_the_extraction_threshold_is_calibrated_on_the_held_out_images(heldout_cell):
    """Carlini et al.'s score of every held-out image (brute force, float64), the threshold their 1% quantile
    from below: the summary's threshold and false-positive rate are those, the per-sample flags follow it."""
    import pandas as pd

    from memorize.cell import CellPaths, load_cell_data, read_config
    from tests.test_extraction import brute_extraction

    summary = score_cell(heldout_cell, threshold=0.6, target_fpr=0.01, progress=False, name="ext")
    data = load_cell_data(read_config(heldout_cell), CellPaths(heldout_cell))
    _, held, _ = brute_extraction(data.heldout.numpy(), data.train.numpy())
    expected = np.sort(held)[2]  # k = floor(0.01 * 200) = 2: the third smallest
    ext = summary["ext"]
    assert ext["threshold"] == pytest.approx(expected, rel=1e-12) and ext["neighbours"] == 32  # all of N = 32
    assert ext["fpr"]["ratio"] == pytest.approx((held < ext["threshold"]).mean()) and ext["fpr"]["ratio"] <= 0.01
    table = pd.read_csv(heldout_cell / "scores" / "ext.csv")
    assert (table["memorized_ext"] == (table["ext_score"] < ext["threshold"])).all()
    assert ext["ratio"] == pytest.approx(table["memorized_ext"].mean())
    pair = summary["agreement"]["nn_ext"]
    assert pair["both"] == int((table["memorized_nn"] & table["memorized_ext"]).sum())
    assert sum(pair[k] for k in ("both", "only_first", "only_second", "neither")) == len(table)
    assert set(summary["agreement"]) == {"nn_cos", "nn_ext", "cos_ext"}
    copied = pd.read_csv(heldout_cell / "scores" / "ext_copied.csv")  # a row per training image
    assert len(copied) == 32 and sorted(copied["index"]) == list(range(32))
    for c in ("nn", "cos", "ext"):
        assert copied[f"copies_{c}"].sum() == table[f"memorized_{c}"].sum()
        flagged = table[table[f"memorized_{c}"]]
        by_image = flagged[f"{'nn' if c == 'nn' else c}_index"].value_counts()
        assert all(copied.set_index("index").loc[i, f"copies_{c}"] == n for i, n in by_image.items())
        assert summary["copied"][c]["images_copied"] == len(by_image)
    rare = score_cell(heldout_cell, threshold=0.6, target_fpr=0.001, progress=False, name="ext_rare")["ext"]
    assert np.isnan(rare["ratio"]) and "at least 1000 held-out images; this cell has 200" in rare["note"]
    assert set(json.loads((heldout_cell / "scores" / "ext_rare.json").read_text())["agreement"]) == {"nn_cos"}

"""The criterion test bench: cases with known ground truth, our criteria tested the way a researcher tests
theirs (the ``memorization_cases`` fixture of the memorize pytest plugin), and bad criteria reported."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memorize.criteria_bench import (CriterionError, as_output, build_cases, cosine_criterion, evaluate_criterion,
                              nn_criterion)
from memorize.criteria_bench.cases import add_noise_at_psnr, crop_resize, shift


def row(table, kind, strength=None):
    rows = table[(table.kind == kind) & (table.strength.isna() if strength is None else table.strength == strength)]
    assert len(rows) == 1, (kind, strength)
    return rows.iloc[0]


def test_cases_carry_their_ground_truth():
    train = torch.rand(20, 1, 8, 8) * 2 - 1
    heldout = torch.rand(10, 1, 8, 8) * 2 - 1
    cases = build_cases(train, heldout, per_kind=5, seed=3, strengths={"exact": [None], "flip": [None],
                        "mixture": [0.7], "heldout": [None]})
    assert len(cases) == 5 + 5 + 5 + 10
    exact = cases.kind == "exact"
    np.testing.assert_array_equal(cases.images[exact], train.numpy()[cases.source[exact]])
    flips = cases.kind == "flip"
    np.testing.assert_array_equal(cases.images[flips], train.numpy()[cases.source[flips]][..., ::-1])
    mix = cases.kind == "mixture"
    assert (cases.strength[mix] == 0.7).all() and set(cases.truth[mix]) == {"partial"}
    assert (cases.source[cases.kind == "heldout"] == -1).all() and set(cases.truth[cases.kind == "heldout"]) == {"novel"}
    again = build_cases(train, heldout, per_kind=5, seed=3, strengths={"exact": [None], "flip": [None],
                        "mixture": [0.7], "heldout": [None]})
    np.testing.assert_array_equal(cases.images, again.images)  # deterministic from the seed


def test_a_training_set_of_one_image_is_refused_before_any_case_is_built(tmp_path, capsys):
    """A mixture blends two training images (and the nearest-neighbour ratio needs a second): N = 1 was
    numpy's "high <= 0" from the mixture's draw; one line, in the library and on the command line."""
    from memorize.cli import main

    with pytest.raises(ValueError, match="^the cases need at least 2 training images .*, got 1$"):
        build_cases(torch.zeros(1, 1, 8, 8), torch.zeros(5, 1, 8, 8))
    with pytest.raises(SystemExit) as stop:
        main(["criteria", "--out", str(tmp_path / "bench"), "--n-train", "1", "--quiet"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "memorize criteria: error: argument --n-train: expected an integer >= 2, got 1 (see `memorize criteria "
        "--help`)"]
    assert not (tmp_path / "bench").exists()


def test_the_benchs_dataset_flags_are_refused_where_they_would_be_ignored(tmp_path, capsys):
    """--root beside digits (which read no files), a dataset flag beside --cell (whose subset replaces them), a
    negative --seed and an unknown --dataset: one line each naming the flag, before any case is built; not a
    bench on other data than named, or numpy's "expected non-negative integer"."""
    from memorize.cli import main

    out = tmp_path / "bench"
    for args, said in (
            (["--root", "my.npz"], "memorize criteria: error: --root: dataset 'digits' reads no files (it ships with "
                                   "scikit-learn), so 'my.npz' would be ignored: drop --root, or set --dataset to the "
                                   "files' reader (mnist, cifar10, folder, npz)"),
            (["--cell", str(tmp_path), "--n-train", "8", "--dataset", "gmm"],
             "memorize criteria: error: --dataset: --cell takes the training subset and held-out images of its cell; "
             "leave --dataset and --n-train out, or --cell"),
            (["--seed", "-1"], "memorize criteria: error: argument --seed: expected an integer in [0, 2^63), got -1 "
                               "(see `memorize criteria --help`)"),
            (["--dataset", "foo"], "memorize criteria: error: argument --dataset: invalid choice: 'foo' (choose from "
                                   "'digits', 'gmm', 'mnist', 'cifar10', 'folder', 'npz') (see `memorize criteria "
                                   "--help`)")):
        try:
            code = main(["criteria", "--out", str(out), *args, "--quiet"])
        except SystemExit as stop:
            code = stop.code
        assert code == 2 and capsys.readouterr().err.strip().splitlines() == [said]
    assert not out.exists()


def test_a_flag_without_a_value_shows_no_default_of_its_destination(capsys):
    """``--no-extraction`` stores False into ``extraction``: its help said "(default: True)"."""
    from memorize.cli import main

    with pytest.raises(SystemExit):
        main(["criteria", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "leave out Carlini et al.'s extraction criterion (tested by default) --criterion" in help_text


def test_transformations_are_what_they_say():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2000, 1, 8, 8)
    noisy = add_noise_at_psnr(x, 20.0, gen)
    psnr = 10 * np.log10(4 / noisy.square().mean().item())  # peak-to-peak 2 for data in [-1, 1]
    assert psnr == pytest.approx(20.0, abs=0.05)
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    moved = shift(img, 1)
    assert torch.equal(moved[0, 0, 1:, 1:], img[0, 0, :3, :3]) and torch.equal(moved[0, 0, 0, 1:], img[0, 0, 0, :3])
    assert crop_resize(img, 1.0).allclose(img)


def test_our_criteria_on_the_bench(memorization_cases):
    """Written as a researcher would test a criterion of their own, with the plugin's fixture."""
    nn = memorization_cases.evaluate(nn_criterion(1 / 3))
    for kind in ("exact", "empirical"):
        assert row(nn, kind).detection == 1.0 and row(nn, kind).right_index == 1.0 and row(nn, kind).auc == 1.0
    assert row(nn, "noise", 40.0).detection == 1.0 and row(nn, "noise", 15.0).detection == 0.0
    assert row(nn, "flip").detection == 0.0 and row(nn, "shift", 2.0).detection == 0.0  # what d1/d2 misses
    assert row(nn, "heldout").detection == 0.0 and row(nn, "gaussian").detection == 0.0  # no false positives
    assert (nn.error == "").all()
    cos = memorization_cases.evaluate(cosine_criterion("pixel"))
    assert row(cos, "exact").tpr_at_fpr == 1.0 and row(cos, "heldout").tpr_at_fpr <= 0.01
    # without a decision of its own, a score is read at the threshold flagging 1% of held-out images
    assert row(cos, "exact").detection == row(cos, "exact").tpr_at_fpr
    assert row(cos, "flip").auc < 0.5  # raw-pixel cosine ranks flipped copies below novel digits


def test_the_three_reference_criteria_side_by_side(memorization_cases, reference_criteria):
    """The plugin offers the field's three criteria; each reports its true-positive rate at 1% false positives
    on held-out digits. Carlini et al.'s score finds exact copies and empirical-denoiser samples at that rate,
    names their training image, and flags at most 1% of held-out digits."""
    assert list(reference_criteria) == ["nn d1/d2 < 1/3", "pixel cosine", "extraction (Carlini et al.)"]
    ext = memorization_cases.evaluate(reference_criteria["extraction (Carlini et al.)"])
    for kind in ("exact", "empirical"):
        assert row(ext, kind).tpr_at_fpr == 1.0 and row(ext, kind).right_index == 1.0 and row(ext, kind).auc == 1.0
    assert row(ext, "heldout").tpr_at_fpr <= 0.01 and (ext.error == "").all()
    assert row(ext, "noise", 40.0).tpr_at_fpr == 1.0


def test_outputs_are_read_in_every_documented_form():
    assert as_output(np.array([0.2, 0.9]), 2).decision is None
    decided = as_output(np.array([True, False]), 2)
    assert decided.decision.tolist() == [True, False] and decided.score.tolist() == [1.0, 0.0]
    named = as_output((np.array([0.1, 0.2]), np.array([3, 4])), 2)
    assert named.index.tolist() == [3, 4]
    full = as_output({"score": torch.tensor([0.5, 0.25]), "decision": [True, False], "index": [1, 2]}, 2)
    assert full.score.tolist() == [0.5, 0.25] and full.decision.tolist() == [True, False]
    for bad, message in ((np.zeros(3), r"expected shape \(2,\)"), (np.array([np.nan, 1.0]), "NaN"),
                         ({"index": [1, 2]}, "without 'score' or 'decision'")):
        with pytest.raises(CriterionError, match=message):
            as_output(bad, 2)


def test_a_failing_criterion_is_reported_per_case_group_not_a_crash(memorization_cases):
    def fails_on_large_batches(samples, train):  # the held-out group is the only one above 100 cases
        if len(samples) > 100:
            raise RuntimeError("too many samples")
        return nn_criterion(1 / 3)(samples, train)

    table = memorization_cases.evaluate(fails_on_large_batches)
    heldout = row(table, "heldout")
    assert heldout.error == "RuntimeError: too many samples" and np.isnan(heldout.detection)
    exact = row(table, "exact")
    assert exact.error == "" and exact.detection == 1.0 and np.isnan(exact.tpr_at_fpr)  # no held-out scores

    def wrong_shape(samples, train):
        return np.zeros(len(samples) + 1)

    table = evaluate_criterion(wrong_shape, memorization_cases.cases, memorization_cases.train)
    assert table.error.str.contains("expected shape").all() and table.detection.isna().all()


def test_the_fixtures_reach_a_checkout_that_is_not_installed():
    """Without the package's entry point (no plugin autoloads, as in a checkout on PYTHONPATH: the GPU
    machines'), tests/conftest.py registers the plugin, so these tests find their fixtures."""
    root = Path(__file__).resolve().parents[1]
    paths = [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": os.pathsep.join(paths)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--setup-plan",
                          "-k", "on_the_bench or side_by_side", __file__], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "SETUP    S memorization_cases" in run.stdout and "SETUP    S reference_criteria" in run.stdout


def test_the_criteria_command_runs_user_criteria_and_refuses_bad_specs(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from memorize.cli import main

    (tmp_path / "my_criteria.py").write_text(
        "import numpy as np\n"
        "def mean_gap(samples, train):\n"
        "    return -np.abs(samples.mean(axis=(1, 2, 3)))\n"
        "def broken(samples, train):\n"
        "    raise ValueError('nope')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "bench"
    assert main(["criteria", "--out", str(out), "--per-kind", "8", "--ratios", "1/3", "--embedders",
                 "--criterion", "my_criteria:mean_gap", "my_criteria:broken", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "my_criteria:broken failed on every case group (first: exact: ValueError: nope)" in text
    table = pd.read_csv(out / "criteria.csv")
    assert set(table.criterion) == {"nn d1/d2 < 0.333", "extraction (Carlini et al.)", "my_criteria:mean_gap",
                                    "my_criteria:broken"}  # the extraction criterion by default
    extraction = table[table.criterion == "extraction (Carlini et al.)"].set_index("kind")
    assert extraction.loc["exact", "tpr_at_fpr"] == 1.0
    assert (out / "roc.png").stat().st_size > 1000
    assert main(["criteria", "--out", str(tmp_path / "without"), "--per-kind", "2", "--ratios", "1/3",
                 "--embedders", "--no-extraction", "--quiet"]) == 0
    assert set(pd.read_csv(tmp_path / "without" / "criteria.csv").criterion) == {"nn d1/d2 < 0.333"}
    assert main(["criteria", "--out", str(tmp_path / "x"), "--criterion", "no_such_module:f"]) == 2
    assert "criterion 'no_such_module:f': cannot import" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_bench_runs_on_a_cells_own_subset(tmp_path, capsys):
    import pandas as pd

    from memorize.cli import main
    from tests.conftest import trained_tiny_cell

    cell = trained_tiny_cell(tmp_path / "cell", steps=1)
    assert main(["criteria", "--out", str(tmp_path / "bench"), "--cell", str(cell), "--per-kind", "8",
                 "--embedders", "--quiet"]) == 0
    assert f"(cell {cell}, 100 held-out)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "bench" / "criteria.csv")
    exact = table[(table.kind == "exact") & (table.criterion == "nn d1/d2 < 0.333")].iloc[0]
    assert exact.detection == 1.0 and exact.right_index == 1.0

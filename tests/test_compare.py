import json

import numpy as np
import pandas as pd
import pytest
import torch

from memorize.cell import CellPaths, checkpoint_at, load_cell_data, load_trained_denoiser, read_config
from memorize.cli import main
from memorize.compare import GAP_SEED, denoiser_gap, disjoint_consistency, trajectory_gap
from memorize.config import SampleConfig
from memorize.generate import read_samples
from memorize.metrics import nn_ratio
from memorize.sampling import generate, sampling_sigmas
from tests.conftest import CountReads


def _train(cell, *settings):
    args = ["train", "--out", str(cell), "--quiet", "--set", "train.steps=20", "--set", "model.channels=8",
            "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"]
    for s in settings:
        args += ["--set", s]
    assert main(args) == 0


def _shrink(x, sigma, *extra):
    return x / (1 + torch.as_tensor(sigma) ** 2)


def test_gap_curves_match_their_sums_by_hand_and_read_nothing_per_batch():
    train, heldout = torch.randn(23, 1, 4, 4), torch.randn(10, 1, 4, 4)
    references = {"zero": lambda x, sigma: torch.zeros_like(x), "same": _shrink}
    sigmas = (0.5, 3.0)
    with CountReads() as counter:
        table = denoiser_gap(_shrink, references, {"train": train, "heldout": heldout}, sigmas, batch_size=4)
    assert counter.reads == 0  # 9 batches per curve: the sums stay on the device until the end
    for split, x0 in (("train", train), ("heldout", heldout)):
        for sigma in sigmas:
            gen = torch.Generator().manual_seed(GAP_SEED)
            x = torch.cat([chunk + sigma * torch.randn(chunk.shape, generator=gen) for chunk in x0.split(4)])
            out = _shrink(x, torch.tensor(sigma)).double()
            row = table[(table.split == split) & (table.sigma == sigma)].iloc[0]
            assert row.mse_trained == pytest.approx(float((out - x0).square().mean()), rel=1e-12)
            assert row.mse_zero == pytest.approx(float(x0.double().square().mean()), rel=1e-12)
            assert row.gap_zero == pytest.approx(float(out.square().mean()), rel=1e-12)
            assert row.gap_same == 0


@pytest.mark.parametrize("sampler", ["heun", "dpm_solver_2m"])
def test_trajectory_gaps_are_exact_on_the_sampler_grid_and_read_nothing_beyond_the_sampler(sampler):
    cfg = SampleConfig(sampler=sampler, steps=6, num=5, batch_size=2)
    references = {"same": _shrink, "shifted": lambda x, sigma: _shrink(x, sigma) + 0.5}
    with CountReads() as bare:
        generate(_shrink, (1, 4, 4), np.arange(5), cfg, progress=False)
    with CountReads() as counter:
        table = trajectory_gap(_shrink, references, (1, 4, 4), np.arange(5), cfg)
    assert counter.reads == bare.reads  # the sampler's own reads of its host grid; none per denoiser call
    grid = sampling_sigmas(cfg.schedule, cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    assert table.sigma.tolist() == pytest.approx(sorted(grid[grid > 0].tolist(), reverse=True))
    assert (table.gap_same == 0).all() and table.gap_shifted.tolist() == pytest.approx([0.25] * len(table), rel=1e-6)


def test_empirical_samples_memorize_and_gaussian_samples_do_not(tmp_path):
    cell = tmp_path / "cell"
    _train(cell, "data.n_train=100", "train.steps=1")
    train = load_cell_data(read_config(cell), CellPaths(cell)).train.numpy()
    ratios = {}
    for name in ("empirical", "gaussian"):
        assert main(["sample", str(cell), "--denoiser", name, "--num", "256", "--quiet"]) == 0
        ratios[name] = nn_ratio(read_samples(cell / "samples" / f"{name}.npz")["samples"], train).memorized.mean()
    assert ratios["empirical"] >= 0.95 and ratios["gaussian"] <= 0.05, ratios


def test_compare_writes_gap_curves_agreement_and_figure(tmp_path, capsys, monkeypatch):
    import time

    import memorize.compare

    cell = tmp_path / "cell"
    _train(cell, "data.n_train=16", "sample.num=12")
    unhurried = memorize.compare.denoiser_gap

    def slow_gap(*args, **kwargs):  # 0.5 s more in the gap curves: compare.json's seconds must put it there
        time.sleep(0.5)
        return unhurried(*args, **kwargs)

    monkeypatch.setattr(memorize.compare, "denoiser_gap", slow_gap)
    start = time.perf_counter()
    assert main(["compare", str(cell), "--n-eval", "32", "--quiet"]) == 0
    wall = time.perf_counter() - start
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
    seconds = summary["seconds"]
    assert set(seconds) == set(memorize.compare.PARTS) - {"local"}  # no --local: no local part
    assert min(seconds.values()) >= 0 and sum(seconds.values()) <= wall
    assert seconds["gap"] >= 0.5  # the sleep is counted where it happened, not before or after it
    assert (cell / "compare" / "gap.png").stat().st_size > 1000
    a, b = (read_samples(cell / "samples" / f"{n}.npz") for n in ("trained", "trained_empirical"))
    assert np.array_equal(a["seeds"], b["seeds"]) and b["settings"]["denoiser"] == "empirical"


def test_samples_of_an_earlier_checkpoint_are_named_not_mixed_with_a_later_network(tmp_path, capsys):
    """Trained on after its samples were drawn, a cell's comparison would hold the new network's gaps beside the old
    samples' agreement: compare refuses before any work, saying how to draw them again (as it refuses samples of
    another denoiser or of the raw weights); score scores them (they are samples) and says whose they are."""
    cell = tmp_path / "cell"
    _train(cell, "data.n_train=16", "sample.num=12", "sample.steps=4")
    assert main(["sample", str(cell), "--quiet"]) == 0
    _train(cell, "data.n_train=16", "sample.num=12", "sample.steps=4", "train.steps=40")
    capsys.readouterr()
    assert main(["compare", str(cell), "--n-eval", "8", "--threshold", "0.9", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"memorize compare: error: {cell / 'samples' / 'trained.npz'}: drawn by the checkpoint at step 20, but the "
        f"trained denoiser compared is step 40's: `memorize sample {cell} --force` draws them again from it"]
    assert not (cell / "compare").exists()
    # so are another denoiser's samples (the empirical set's agreement with itself) and the raw weights'
    assert main(["sample", str(cell), "--denoiser", "empirical", "--quiet"]) == 0
    assert main(["sample", str(cell), "--weights", "raw", "--name", "raw", "--quiet"]) == 0
    capsys.readouterr()
    for name, said in (("empirical", "samples of the empirical denoiser; compare holds the trained denoiser's samples"),
                       ("raw", "drawn with the raw weights, but the trained denoiser compared is the EMA weights'")):
        assert main(["compare", str(cell), "--samples", name, "--n-eval", "8", "--threshold", "0.9", "--quiet"]) == 2
        assert f"{cell / 'samples' / name}.npz: {said}" in capsys.readouterr().err
    assert not (cell / "compare").exists()
    assert main(["score", str(cell), "--threshold", "0.9", "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("12 samples of the checkpoint at step 20 (the cell's latest is step 40's) vs 16 training")
    assert main(["sample", str(cell), "--force", "--quiet"]) == 0
    assert main(["score", str(cell), "--threshold", "0.9", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("12 samples vs 16 training images")
    assert main(["compare", str(cell), "--n-eval", "8", "--threshold", "0.9", "--local", "--n-calibrate", "2",
                 "--quiet"]) == 0


def test_compare_holds_an_earlier_checkpoint_in_a_folder_of_its_own(tmp_path, capsys):
    cell = tmp_path / "cell"
    _train(cell, "data.n_train=16", "sample.num=8", "train.steps=40", "train.keep_all_checkpoints=true")
    assert main(["sample", str(cell), "--quiet"]) == 0  # the latest checkpoint's samples (step 40)
    assert main(["compare", str(cell), "--checkpoint", "30", "--quiet"]) == 2
    assert "no checkpoint at step 30 (kept: 20, 40)" in capsys.readouterr().err
    assert main(["compare", str(cell), "--checkpoint", "20", "--samples", "trained", "--quiet"]) == 2
    err = capsys.readouterr().err  # the hint draws them from the checkpoint asked for
    assert "drawn by the checkpoint at step 40" in err and f"`memorize sample {cell} --checkpoint 20 --force`" in err
    assert main(["compare", str(cell), "--checkpoint", "20", "--n-eval", "16", "--quiet"]) == 0
    out = cell / "compare" / "step-20"
    printed = capsys.readouterr().out
    assert printed.startswith("checkpoint at step 20: same-noise agreement") and f"figure in {out}\n" in printed
    summary = json.loads((out / "compare.json").read_text())
    assert summary["checkpoint_step"] == 20 and summary["samples"] == "trained-step-20"
    assert read_samples(cell / "samples" / "trained-step-20.npz")["settings"]["checkpoint_step"] == 20
    assert not (cell / "compare" / "compare.json").exists()  # the latest checkpoint's folder untouched
    # the gap curves are step 20's network's: its error on the training images, recomputed here
    data = load_cell_data(read_config(cell), CellPaths(cell))
    table = pd.read_csv(out / "gap.csv")
    for step in (20, 40):
        net, _ = load_trained_denoiser(cell, checkpoint=checkpoint_at(cell, step))
        mine = denoiser_gap(net, {}, {"train": data.train[:16]}, sigmas=sorted(table.sigma.unique()))
        matches = np.allclose(mine.mse_trained, table[table.split == "train"].sort_values("sigma").mse_trained,
                              rtol=1e-6)
        assert matches == (step == 20), step


def test_compare_draws_its_own_sets_again_after_the_trained_set_or_the_calibration_changed(tmp_path, capsys):
    """NAME_empirical and the machines' NAME_ls, NAME_els_aligned follow the trained set: after `sample --force` with
    other settings, or training on (a new calibration), compare drew them with other settings and stopped, telling
    the researcher to pass --name or --force, flags compare does not have."""
    cell = tmp_path / "cell"
    _train(cell, "data.n_train=16", "sample.num=12", "sample.steps=4")
    compare = ["compare", str(cell), "--n-eval", "8", "--threshold", "0.9", "--local", "--n-calibrate", "2", "--quiet"]
    assert main(compare) == 0
    assert main(["sample", str(cell), "--num", "6", "--force", "--quiet"]) == 0
    assert main(compare) == 0, capsys.readouterr().err
    for name in ("trained_empirical", "trained_ls", "trained_els_aligned"):
        drawn = read_samples(cell / "samples" / f"{name}.npz")
        assert drawn["settings"]["num"] == 6 and len(drawn["samples"]) == 6
    _train(cell, "data.n_train=16", "sample.num=12", "sample.steps=4", "train.steps=60")  # calibrated anew below
    assert main(["sample", str(cell), "--num", "6", "--force", "--quiet"]) == 0
    assert main(compare) == 0, capsys.readouterr().err
    schedules = json.loads((cell / "compare" / "patch_schedule.json").read_text())
    for machine, name in (("ls", "trained_ls"), ("els", "trained_els_aligned")):
        assert read_samples(cell / "samples" / f"{name}.npz")["settings"]["patch_schedule"] == schedules[machine]


def test_the_gap_figure_marks_errors_a_log_axis_cannot_show_on_a_floor_under_the_lowest_point():
    """The empirical denoiser's error on its own training images is exactly 0 at small sigma (and 1e-35 just
    above): drawn as is, a log axis drops the zeros silently and stretches to 1e-36 for the rest. They go on
    a floor a decade under the lowest point kept (1e-4 here: 1e-5), as triangles, and the label says so."""
    import matplotlib.pyplot as plt

    from memorize.compare import gap_figure

    sigma = [0.01, 0.1, 1.0, 10.0]
    table = pd.DataFrame({"split": "train", "sigma": sigma, "mse_trained": [1e-4, 1e-3, 1e-2, 0.2],
                          "mse_empirical": [0.0, 1e-35, 1e-3, 0.1], "gap_empirical": [1e-4, 1e-3, 1e-2, 0.1]})
    fig = gap_figure(table)
    gap, mse = fig.axes
    assert gap.get_xlabel() == "sigma"  # nothing under the gap panel's floor: drawn as before
    assert mse.get_xlabel() == "sigma        (\u25bc: under 1e-05, exact zeros among them)"
    assert mse.get_ylim()[0] == pytest.approx(5e-6)
    empirical = next(line for line in mse.get_lines() if line.get_label() == "empirical, train")
    drawn = empirical.get_ydata()
    assert np.isnan(drawn[0]) and drawn[1:].tolist() == [1e-5, 1e-3, 0.1]  # down to the floor, never along it
    (triangles,) = [line for line in mse.get_lines() if line.get_marker() == "v"]
    assert triangles.get_xdata().tolist() == [0.01, 0.1] and triangles.get_ydata().tolist() == [1e-5, 1e-5]
    assert triangles.get_color() == empirical.get_color()
    trained = next(line for line in mse.get_lines() if line.get_label() == "trained, train")
    assert trained.get_ydata().tolist() == [1e-4, 1e-3, 1e-2, 0.2]
    plt.close(fig)


def test_disjoint_subsets_memorizing_disagree_generalizing_agree(tmp_path, capsys):
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
    with pytest.raises(FileNotFoundError, match=r"samples/ls\.npz not found: run `memorize sample .*` first"):
        disjoint_consistency(*cells, samples="ls")  # the raw errno line named neither the cell nor what to do
    # the command: the calibrated score, on the device and threads asked for
    capsys.readouterr()
    assert main(["consistency", *map(str, cells), "--samples", "empirical", "--device", "cpu", "--threads", "1",
                 "--quiet"]) == 0
    assert (f"N = 100: reproducibility of same-noise samples {calibrated['score']:.3f} "
            f"[{calibrated['lo']:.3f}, {calibrated['hi']:.3f}] (cosine > {calibrated['threshold']:.4g})"
            in capsys.readouterr().out)


def test_consistency_refuses_samples_that_do_not_share_their_noise_path(tmp_path, capsys):
    """Same-noise samples of two samplers (or of cells whose seeds give other noise) were scored as if the training
    sets alone differed; now the differing settings, or the two cell seeds, are named. Samples of two training
    times are compared, with the two steps said."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _train(a, "data.n_train=16")
    _train(b, "data.n_train=16", "data.subset_offset=16")
    _train(c, "data.n_train=16", "data.subset_offset=16", "seed=5")
    assert main(["sample", str(a), "--num", "8", "--steps", "4", "--quiet"]) == 0
    assert main(["sample", str(b), "--num", "8", "--steps", "6", "--sampler", "ddim", "--quiet"]) == 0
    assert main(["sample", str(c), "--num", "8", "--steps", "4", "--quiet"]) == 0
    with pytest.raises(ValueError, match=r"^the two sample sets were drawn with other settings \(sampler, steps\): "
                                         r"same-noise samples need one sampler"):
        disjoint_consistency(a, b, threshold=0.9)
    with pytest.raises(ValueError, match=r"^the cells were trained with seeds 0 and 5, and a sample's noise follows "
                                         r"its cell's seed"):
        disjoint_consistency(a, c, threshold=0.9)
    assert main(["sample", str(b), "--num", "8", "--steps", "4", "--force", "--quiet"]) == 0
    assert disjoint_consistency(a, b, threshold=0.9)["checkpoint_steps"] == [20, 20]
    _train(b, "data.n_train=16", "data.subset_offset=16", "train.steps=40")  # trained on: its samples drawn again
    assert main(["sample", str(b), "--num", "8", "--steps", "4", "--force", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["consistency", str(a), str(b), "--threshold", "0.9", "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("(samples of the checkpoints at steps 20 and 40)")


def test_consistency_refuses_cells_of_two_datasets_whose_indices_say_nothing_about_overlap(tmp_path):
    """The subsets' disjointness is checked on dataset indices, which name other images in another dataset:
    two cells of two .npz files passed as disjoint whatever their images, and were refused as sharing images
    where their offsets were equal."""
    rng = np.random.default_rng(0)
    files = [tmp_path / "one.npz", tmp_path / "two.npz"]
    for f in files:
        np.savez(f, images=rng.uniform(-1, 1, (60, 1, 8, 8)).astype(np.float32))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _train(a, "data.name=npz", f"data.root={files[0]}", "data.n_train=16", "data.n_heldout=20", "train.steps=1")
    _train(b, "data.name=npz", f"data.root={files[1]}", "data.n_train=16", "data.n_heldout=20",
           "data.subset_offset=16", "train.steps=1")
    _train(c, "data.n_train=16", "data.subset_offset=16", "train.steps=1")  # digits
    for cell in (a, b, c):
        assert main(["sample", str(cell), "--num", "4", "--steps", "2", "--quiet"]) == 0
    with pytest.raises(ValueError, match=rf"^the cells train on two datasets \(data.root: {files[0]} and "
                                         rf"{files[1]}\): disjoint subsets are of one dataset"):
        disjoint_consistency(a, b, threshold=0.9)
    with pytest.raises(ValueError, match=r"^the cells train on two datasets \(data.name: npz and digits\)"):
        disjoint_consistency(a, c, threshold=0.9)


def test_compare_local_calibrates_draws_scores_and_reuses_the_machines(tmp_path, capsys):
    from memorize.local_score import read_patch_schedules

    cell = tmp_path / "cell"
    _train(cell, "data.n_train=16", "sample.num=6", "sample.steps=4")
    assert main(["sample", str(cell), "--denoiser", "els", "--quiet"]) == 2  # no calibration yet: refused
    assert "run `memorize compare" in capsys.readouterr().err
    assert main(["compare", str(cell), "--n-eval", "8", "--local", "--n-calibrate", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "els machine samples: memorized" in out and "per-sample r^2" in out
    schedules = read_patch_schedules(cell / "compare" / "patch_schedule.json")
    assert set(schedules) == {"ls", "els"} and len(schedules["els"].sizes) == 12
    calibration = pd.read_csv(cell / "compare" / "calibration.csv")
    assert len(calibration) == 2 * 12 * 5 and set(calibration.patch_size) == {1, 3, 5, 7, 9}
    chosen = calibration.loc[calibration.groupby(["machine", "sigma"]).r2.idxmax()]
    assert chosen[chosen.machine == "els"].patch_size.tolist() == list(schedules["els"].sizes)
    r2 = pd.read_csv(cell / "compare" / "r2.csv")
    assert list(r2.columns) == ["seed", "empirical", "ls", "els"] and len(r2) == 6 and (r2[["ls", "els"]] <= 1).all().all()
    summary = json.loads((cell / "compare" / "compare.json").read_text())
    assert summary["r2"]["els"]["median"] == pytest.approx(r2.els.median())
    assert "local" in summary["seconds"]  # calibrating, sampling and scoring the machines: a part of its own
    trajectory = pd.read_csv(cell / "compare" / "trajectory.csv")
    assert {"gap_empirical", "gap_gaussian", "gap_ls", "gap_els"} <= set(trajectory.columns)
    assert len(trajectory) == 4  # Heun at 4 levels visits each level of the grid (the last with sigma > 0)
    els = read_samples(cell / "samples" / "trained_els_aligned.npz")  # the ELS machine under Kamb & Ganguli's rule
    assert els["settings"]["patch_schedule"] == schedules["els"].to_dict() and els["settings"]["boundary"] == "aligned"
    assert json.loads((cell / "compare" / "patch_schedule.json").read_text())["els_boundary"] == "aligned"
    assert summary["local"]["els"]["boundary"] == "aligned"
    assert (cell / "scores" / "trained_els_aligned.json").is_file() and (cell / "compare" / "local_samples.png").is_file()
    # sampling the machine by hand takes the cell's calibration, or a size given
    assert main(["sample", str(cell), "--denoiser", "els", "--name", "again", "--quiet"]) == 0
    assert np.array_equal(read_samples(cell / "samples" / "again.npz")["samples"], els["samples"])
    assert main(["sample", str(cell), "--denoiser", "ls", "--patch-schedule", "3", "--name", "ls3", "--quiet"]) == 0
    assert read_samples(cell / "samples" / "ls3.npz")["settings"]["patch_schedule"] == {"sigmas": [1.0], "sizes": [3]}
    assert main(["sample", str(cell), "--denoiser", "ls", "--patch-schedule", "4", "--name", "bad", "--quiet"]) == 2
    assert "patch sizes must be odd" in capsys.readouterr().err
    # the other rule at the border (the rules differ from s = 3 on): a set that records no rule, other samples
    for rule in ("aligned", "anywhere"):
        assert main(["sample", str(cell), "--denoiser", "els", "--patch-schedule", "3", "--els-boundary", rule,
                     "--name", rule, "--quiet"]) == 0
    aligned, anywhere = (read_samples(cell / "samples" / f"{rule}.npz") for rule in ("aligned", "anywhere"))
    assert "boundary" not in anywhere["settings"] and aligned["settings"]["boundary"] == "aligned"
    assert np.abs(anywhere["samples"] - aligned["samples"]).max() > 0.1


def test_a_flag_the_chosen_denoiser_or_comparison_would_ignore_is_named(tmp_path, capsys):
    """``memorize sample --denoiser empirical --weights raw`` drew the empirical denoiser's samples and
    ``memorize compare --patch-schedule 3`` (no --local) compared without the machines, each ignoring the
    flag without a word; one line each now, before anything is drawn or written."""
    from tests.conftest import trained_tiny_cell

    cell = trained_tiny_cell(tmp_path / "cell", steps=1)
    before = sorted(p.relative_to(cell) for p in cell.rglob("*"))
    for command, said in (
            (["sample", "--denoiser", "empirical", "--weights", "raw"],
             "--weights raw: only for the trained denoiser, not --denoiser empirical"),
            (["sample", "--denoiser", "ls", "--patch-schedule", "3", "--els-boundary", "anywhere"],
             "--els-boundary anywhere: only for --denoiser els, not ls"),
            (["compare", "--patch-schedule", "3"], "--patch-schedule: only with --local (the local score machines, "
                                                    "calibrated and sampled)"),
            (["compare", "--els-boundary", "anywhere", "--n-calibrate", "4"],
             "--els-boundary: only with --local (the local score machines, calibrated and sampled)"),
            (["compare", "--n-calibrate", "4"],
             "--n-calibrate: only with --local (the local score machines, calibrated and sampled)")):
        assert main([command[0], str(cell), *command[1:], "--quiet"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"memorize {command[0]}: error: {said}"]
    assert sorted(p.relative_to(cell) for p in cell.rglob("*")) == before

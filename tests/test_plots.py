"""Pooling and phase-transition figures: only seeds are pooled, every other axis is an experiment."""

import numpy as np
import pandas as pd
import pytest

from memorize import analysis, plots, reference_figures
from memorize.metrics import wilson_interval


def _results(rows):
    base = {"dataset": "digits", "model": "U-Net, 8 ch, 39k", "params": 39_473, "seed": 0, "step": 800,
            "n_samples": 100, "mem_cos": 0.0, "sampler": "heun", "sample_steps": 18, "embedder": "pixel",
            "ratio": 1 / 3, "threshold": 0.95}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_a_sampler_axis_gives_two_curves_not_one_pooled_point():
    results = _results([{"n_train": n, "sample.sampler": s, "sampler": s, "mem_nn": r}
                        for n in (8, 64) for s, r in (("heun", 1.0), ("euler_maruyama", 0.0))])
    assert analysis.experiment_axes(results) == ["sample.sampler"]  # "sampler" follows from the axis: not twice
    pooled = analysis.pooled_ratios(results, "nn")
    assert len(pooled) == 4 and (pooled.seeds == 1).all()
    heun = pooled[pooled["sample.sampler"] == "heun"]
    assert heun.ratio.tolist() == [1.0, 1.0]
    assert pooled[pooled["sample.sampler"] == "euler_maruyama"].ratio.tolist() == [0.0, 0.0]
    crit = analysis.critical_n(pooled)
    assert len(crit) == 2 and crit["sample.sampler"].tolist() == ["euler_maruyama", "heun"]
    fig = plots.memorization_vs_n_figure(results)
    assert len(fig.axes) == 4  # a row per sampler, a column per criterion
    assert "sample.sampler=euler_maruyama" in fig.axes[0].get_title()


def test_a_setting_that_differs_without_a_grid_axis_is_not_pooled_either():
    results = _results([{"n_train": 8, "seed": s, "mem_nn": r, "step": step}
                        for s, r, step in ((0, 1.0, 800), (1, 0.0, 2000))])
    assert analysis.experiment_axes(results) == ["step"]
    assert len(analysis.pooled_ratios(results, "nn")) == 2
    # under train.stop_when the seeds stop at different steps of one budget: one experiment, pooled
    stopped = results.assign(budget=4000, stopped_early=True)
    assert analysis.experiment_axes(stopped) == [] and len(analysis.pooled_ratios(stopped, "nn")) == 1
    assert analysis.budget_label(stopped) == "trained until memorization converged (steps 800-2,000 of a budget of 4,000)"
    assert analysis.budget_label(results.iloc[:1]) == "after 800 training steps"


def test_two_sweeps_drawn_together_say_their_budgets_and_seeds_differ():
    """Two sweeps' tables concatenated (a model trained 120 steps with 3 seeds, another 800 steps with one):
    the budget follows from the model, so it is no experiment axis, and the figures said no budget at all and
    "3 seeds pooled" for every point; they now give the range of each."""
    rows = ([{"model": "DiT", "params": 28_420, "n_train": n, "seed": s, "step": 120, "mem_nn": 0.0}
             for n in (8, 32) for s in (0, 1, 2)] +
            [{"model": "U-Net, 8 ch, 39k", "params": 39_473, "n_train": n, "step": 800, "mem_nn": r}
             for n, r in ((8, 0.9), (32, 0.1))])
    results = _results(rows)
    assert analysis.experiment_axes(results) == []
    assert analysis.budget_label(results) == "after 120 to 800 training steps"
    fig = plots.memorization_vs_n_figure(results)
    assert fig.axes[0].get_title().splitlines()[-1].endswith("after 120 to 800 training steps")
    assert fig.axes[0].get_ylabel() == "memorization ratio\n(1 to 3 seeds pooled, Wilson 95%)"
    assert "after 120 to 800 training steps" in plots.phase_diagram_figure(results).axes[0].get_title()
    same = plots.memorization_vs_n_figure(results[results.model == "DiT"])
    assert same.axes[0].get_ylabel() == "memorization ratio\n(3 seeds pooled, Wilson 95%)"
    assert same.axes[0].get_title().splitlines()[-1].endswith("after 120 training steps")


def test_two_datasets_or_two_criteria_are_never_one_panel():
    """Two sweeps' tables drawn together, each model on its own dataset (or scored at its own d1/d2 ratio):
    the dataset followed from the model, so both shared one panel under the first row's title; they are now
    experiments of their own, a row of panels each."""
    rows = ([{"model": "U-Net, 8 ch, 39k", "params": 39_473, "n_train": n, "mem_nn": r}
             for n, r in ((8, 0.9), (32, 0.1))] +
            [{"model": "U-Net, 32 ch, 2.2M", "params": 2_200_000, "n_train": n, "mem_nn": r, "dataset": "mnist"}
             for n, r in ((100, 0.9), (1000, 0.1))])
    results = _results(rows)
    assert analysis.experiment_axes(results) == ["dataset"]
    fig = plots.memorization_vs_n_figure(results)
    assert [ax.get_title().splitlines()[-1] for ax in fig.axes[::2]] == ["dataset=digits", "dataset=mnist"]
    assert len(analysis.critical_n_by_experiment(results)) == 2
    ratios = _results([{**r, "dataset": "digits", "ratio": 0.5 if r["params"] > 1e6 else 1 / 3} for r in rows])
    assert analysis.experiment_axes(ratios) == ["ratio"]
    # a setting that the model determines and a title does not state (the sampler) still shares a panel
    samplers = _results([{**r, "dataset": "digits", "sampler": "ddim" if r["params"] > 1e6 else "heun"}
                         for r in rows])
    assert analysis.experiment_axes(samplers) == []


def test_seeds_are_pooled_with_their_spread_beside_the_wilson_interval():
    results = _results([{"n_train": 8, "seed": s, "mem_nn": r} for s, r in ((0, 0.9), (1, 0.7), (2, 0.8))])
    (row,) = analysis.pooled_ratios(results, "nn").to_dict("records")
    lo, hi = wilson_interval(240, 300)
    assert row["seeds"] == 3 and row["ratio"] == pytest.approx(0.8) and row["n_samples"] == 300
    assert (row["lo"], row["hi"]) == pytest.approx((lo, hi))
    assert row["seed_sd"] == pytest.approx(0.1) and (row["seed_min"], row["seed_max"]) == (0.7, 0.9)
    fig = plots.memorization_vs_n_figure(results)
    assert len(fig.axes[0].lines) >= 2  # the pooled curve and the single seeds' dots


def test_unique_labels_give_one_model_and_a_finite_critical_n():
    """params (architecture) is constant although the label embedding (params_total) grows with N."""
    rows = [{"n_train": n, "params_total": 39_473 + 32 * n, "mem_nn": r}
            for n, r in ((8, 0.9), (64, 0.6), (512, 0.1))]
    pooled = analysis.pooled_ratios(_results(rows), "nn")
    crit = analysis.critical_n(pooled)
    assert len(crit) == 1
    expected = np.exp(np.log(64) + (0.6 - 0.5) / (0.6 - 0.1) * (np.log(512) - np.log(64)))
    assert crit.critical_n.iloc[0] == pytest.approx(expected)
    assert crit.critical_n_lo.iloc[0] <= expected <= crit.critical_n_hi.iloc[0]


def test_the_critical_n_figure_says_which_way_each_model_misses_one_half():
    """Three models without a crossing, each missing it another way (all below 0.5: a short training; all
    at or above it: too few N; rising through it), and one that falls through it: the table's ``missed``
    and the figure's title say which, where both used to name only the models."""
    curves = {("A", 1_000): (0.31, 0.0, 0.0), ("B", 2_000): (1.0, 0.9, 0.75), ("C", 3_000): (0.2, 0.6, 0.9),
              ("D", 4_000): (0.9, 0.4, 0.1)}
    rows = [{"model": m, "params": p, "n_train": n, "mem_nn": r}
            for (m, p), ratios in curves.items() for n, r in zip((8, 32, 128), ratios)]
    crit = analysis.critical_n(analysis.pooled_ratios(_results(rows), "nn"))
    assert crit.set_index("model").missed.to_dict() == {"A": "below", "B": "above", "C": "rises", "D": ""}
    assert crit.set_index("model").critical_n.notna().to_dict() == {"A": False, "B": False, "C": False, "D": True}
    title = plots.critical_n_figure(crit).axes[0].get_title().splitlines()
    assert [line for line in title if line.startswith("(no crossing")] == [
        "(no crossing: every ratio below 0.5: A)", "(no crossing: every ratio at or above 0.5: B)",
        "(no crossing: a ratio rising through 0.5: C)"]
    assert analysis.missed_crossing(np.array([0.5, 0.5])) == "above"  # 0.5 itself is not below it


def test_power_law_fit_recovers_the_exponent_and_brackets_it():
    params = np.array([1e4, 1e5, 1e6, 1e7])
    crit = 3.0 * params ** 0.4
    fit = analysis.power_law_fit(params, crit, crit / 1.2, crit * 1.2)
    assert fit["slope"] == pytest.approx(0.4) and fit["slope_lo"] < 0.4 < fit["slope_hi"]
    assert fit["slope_hi"] - fit["slope_lo"] < 0.2


def test_phase_diagram_marks_cells_whose_interval_contains_one_half():
    rows = [{"n_train": n, "mem_nn": r} for n, r in ((8, 1.0), (24, 0.5), (1700, 0.0))]
    fig = plots.phase_diagram_figure(_results(rows))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["1.00", "0.50*", "0.00"]
    ax = fig.axes[0]
    # a column of equal width per grid N, in order, labelled with N; models named on the y axis
    assert [t.get_position()[0] for t in ax.texts] == [0.5, 1.5, 2.5]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["8", "24", "1,700"]
    assert ax.get_ylabel() == "model (parameters)"


def test_memorization_beside_generalization_per_model():
    rows = []
    for model, params in (("U-Net, 8 ch, 39k", 39_473), ("U-Net, 16 ch, 155k", 155_000)):
        for n, mem, recall in ((8, 0.9, 0.1), (64, 0.0, 0.6)):
            for seed, shift in ((0, 0.0), (1, 0.1)):
                rows.append({"model": model, "params": params, "n_train": n, "seed": seed, "mem_nn": mem,
                             "recall": recall + shift, "recall_lo": recall + shift - 0.05,
                             "recall_hi": recall + shift + 0.05, "consistency": float("nan"),
                             "consistency_lo": float("nan"), "consistency_hi": float("nan")})
    results = _results(rows).assign(features="classifier")
    share = analysis.pooled_share(results, "recall", [])
    first = share[(share.params == 39_473) & (share.n_train == 8)].iloc[0]
    # the mean over seeds, and the widest of their intervals
    assert (first.value, first.lo, first.hi) == pytest.approx((0.15, 0.05, 0.25))
    assert analysis.pooled_share(results, "consistency", []) is None  # no twins trained
    fig = plots.memorization_and_generalization_figure(results)
    assert len(fig.axes) == 2  # a panel per model
    labels = [line.get_label() for line in fig.axes[0].containers]
    assert labels == ["memorization (d1/d2 < 0.333)", "recall vs held-out (classifier features)"]


def test_criterion_titles_carry_the_largest_heldout_false_positive_rate():
    results = _results([{"n_train": n, "mem_nn": 0.5, "fpr_nn": f, "fpr_cos": 2 * f}
                        for n, f in ((8, 0.0), (64, 0.02))])
    fig = plots.memorization_vs_n_figure(results)
    titles = [ax.get_title() for ax in fig.axes[:2]]
    # ... and the training budget
    assert titles[0].endswith("at most 2% of held-out images flagged, after 800 training steps")
    assert titles[1].endswith("at most 4% of held-out images flagged, after 800 training steps")
    none = plots.memorization_vs_n_figure(results.assign(fpr_nn=0.0))
    assert none.axes[0].get_title().endswith("no held-out image flagged, after 800 training steps")
    assert "> 0.95" in titles[1]


def test_image_mosaic_puts_each_image_at_its_row_and_column_with_padding():
    grey = [np.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0)]  # (C, H, W) in [-1, 1]
    mosaic = plots.image_mosaic([grey[:2], grey[2:]], pad=1, background=0.25)
    assert mosaic.shape == (1 + 2 * 3, 1 + 2 * 4)  # two rows of height 2, two columns of width 3, 1-pixel gaps
    assert (mosaic[1:3, 1:4] == 0.0).all() and (mosaic[1:3, 5:8] == 0.5).all() and (mosaic[4:6, 1:4] == 1.0).all()
    assert (mosaic[4:6, 5:8] == 0.25).all()  # a short row leaves background
    assert (mosaic[0] == 0.25).all() and (mosaic[:, 4] == 0.25).all()
    rgb = np.stack([np.full((2, 2), -1.0), np.zeros((2, 2)), np.ones((2, 2))])
    colour = plots.image_mosaic([[rgb]], pad=0)
    assert colour.shape == (2, 2, 3) and colour[0, 0].tolist() == [0.0, 0.5, 1.0]  # channels last


@pytest.mark.parametrize("channels,n_samples", [(1, 1), (3, 7)])
def test_nearest_neighbour_figure_draws_one_image_per_block(channels, n_samples):
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, (n_samples, channels, 4, 4))
    train = rng.uniform(-1, 1, (5, channels, 4, 4))
    ratio = rng.uniform(0, 1, n_samples)
    fig = plots.nearest_neighbour_figure(samples, train, rng.integers(0, 5, n_samples), ratio, n=3)
    blocks = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in fig.axes] == ["most memorized", "least memorized"]
    shown = min(3, max(1, n_samples // 2))
    for ax in blocks:
        (image,) = ax.images
        assert image.get_array().shape[:2] == (1 + 2 * 5, 1 + shown * 5)  # pad = max(1, 4 // 8) = 1
        assert len(ax.texts) == shown
    assert len(blocks) == 2


def test_equal_ratios_of_two_models_stay_visible_and_one_seed_is_not_called_pooled():
    rows = [{"model": m, "params": p, "n_train": n, "mem_nn": 1.0}
            for m, p in (("U-Net, 8 ch, 39k", 39_473), ("U-Net, 16 ch, 155k", 155_000)) for n in (8, 64)]
    fig = plots.memorization_vs_n_figure(_results(rows))
    ax = fig.axes[0]
    xs = [tuple(c.lines[0].get_xdata()) for c in ax.containers]
    assert len(xs) == 2 and xs[0][0] < 8 < xs[1][0]  # side by side around N = 8, not on top of each other
    assert "pooled" not in ax.get_ylabel()
    two_seeds = _results([{**r, "seed": s} for r in rows for s in (0, 1)])
    assert "2 seeds pooled" in plots.memorization_vs_n_figure(two_seeds).axes[0].get_ylabel()


def test_gap_figure_titles_say_the_model_and_budget_and_the_legend_says_n():
    gaps = pd.DataFrame([{"split": "heldout", "sigma": s, "gap_empirical": g * s, "model": m, "n_train": n,
                          "experiment": ""} for m in ("U-Net, 8 ch, 39k", "U-Net, 16 ch, 155k")
                         for n, g in ((8, 1.0), (64, 0.5)) for s in (0.01, 1.0, 10.0)])
    fig = reference_figures.gap_curves_figure(gaps, "after 800 training steps")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["U-Net, 8 ch, 39k\nafter 800 training steps", "U-Net, 16 ch, 155k\nafter 800 training steps"]
    assert fig.legends[0].get_title().get_text() == "N"
    assert fig.axes[0].get_xlabel() == "noise level sigma (log scale)"


def test_crossover_n_interpolates_where_the_els_r2_overtakes_the_empirical_one():
    rows = [{"model": "m", "params": 10, "n_train": n, "r2_empirical": e, "r2_els": l}
            for n, e, l in ((8, 0.9, 0.5), (32, 0.7, 0.6), (128, 0.4, 0.8))]
    rows += [{"model": "never", "params": 20, "n_train": n, "r2_empirical": 0.9, "r2_els": 0.1} for n in (8, 32)]
    crossing = analysis.crossover_n(pd.DataFrame(rows)).set_index("model")["crossover_n_els"]
    # the difference 0.1 at N = 32 and -0.4 at N = 128 reaches 0 a fifth of the way in log N
    assert crossing["m"] == pytest.approx(np.exp(np.log(32) + 0.2 * (np.log(128) - np.log(32))))
    assert np.isnan(crossing["never"])


def test_r2_crossover_figure_draws_both_references_the_crossover_and_the_critical_n():
    rows = [{"model": "m", "params": 10, "n_train": n, "r2_empirical": e, "r2_empirical_q1": e - 0.1,
             "r2_empirical_q3": e + 0.05, "r2_els": l, "r2_els_q1": l - 0.1, "r2_els_q3": l + 0.05,
             "r2_ls": np.nan} for n, e, l in ((8, 0.9, 0.5), (32, 0.7, 0.6), (128, 0.4, 0.8))]
    results = pd.DataFrame(rows)
    crossing = analysis.crossover_n(results).assign(critical_n=30.0)
    ax = reference_figures.r2_crossover_figure(results, crossing, "after 800 training steps").axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["empirical (memorizes)"].get_ydata()) == [0.9, 0.7, 0.4]
    assert list(lines["ELS machine"].get_ydata()) == [0.5, 0.6, 0.8]
    assert "LS machine" not in lines  # not measured: not drawn
    assert lines["critical N (ratio 0.5): 30"].get_xdata()[0] == 30.0
    assert [k for k in lines if "overtakes" in k] == [f"ELS overtakes empirical: {crossing.crossover_n_els[0]:.0f}"]
    assert len(ax.collections) == 2  # the two quartile bands


def test_trajectory_gap_figure_has_a_row_per_reference_and_a_panel_per_model():
    table = pd.DataFrame([{"sigma": s, "gap_empirical": 0.1 * s, "gap_els": 0.2, "model": m, "n_train": n}
                          for m in ("a", "b") for n in (8, 64) for s in (0.01, 1.0, 80.0)])
    fig = reference_figures.trajectory_gap_figure(table)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "", ""]
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["MSE to empirical", "MSE to els"]
    assert all(len(ax.lines) >= 2 for ax in fig.axes)  # a line per N


def test_the_extraction_criterion_is_a_third_column_where_the_results_have_it():
    """Results scored with the extraction criterion draw it beside the other two (its points at the measured
    ratios); a cell where it was not judged (NaN) is left out of that column only; older results keep two."""
    rows = [{"n_train": n, "mem_nn": 0.5, "mem_ext": e, "fpr_ext": 0.01} for n, e in ((8, 0.75), (64, 0.25))]
    rows.append({"n_train": 512, "mem_nn": 0.0, "mem_ext": float("nan"), "fpr_ext": float("nan")})
    fig = plots.memorization_vs_n_figure(_results(rows))
    assert len(fig.axes) == 3 and fig.axes[2].get_title().startswith("extraction (Carlini et al.)")
    assert "at most 1% of held-out images flagged" in fig.axes[2].get_title()
    (bars,) = fig.axes[2].containers
    assert bars.lines[0].get_ydata().tolist() == [0.75, 0.25]  # N = 512, not judged, is not drawn
    assert fig.axes[0].containers[0].lines[0].get_ydata().tolist() == [0.5, 0.5, 0.0]
    assert len(plots.memorization_vs_n_figure(_results(rows).drop(columns=["mem_ext"])).axes) == 2


def test_most_copied_figure_draws_each_copied_image_above_its_copies():
    import matplotlib.pyplot as plt

    train = np.linspace(-1, 1, 5)[:, None, None, None] * np.ones((5, 1, 4, 4))  # image i: constant grey
    nearest = np.array([3, 3, 1, 3, 0, 2])
    memorized = np.array([True, True, True, True, False, False])  # copies: image 3 thrice, image 1 once
    samples = train[nearest] + 0.01
    fig = plots.most_copied_figure(samples, train, nearest, memorized, images=8, copies=2)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["#3: 3", "#1: 1"]  # most-copied first, only copied images
    mosaic = ax.images[0].get_array()
    pad = 1
    cell = lambda r, c: mosaic[pad + r * (4 + pad) + 1, pad + c * (4 + pad) + 1]  # noqa: E731
    assert cell(0, 0) == pytest.approx((train[3, 0, 0, 0] + 1) / 2)  # the training image ...
    assert cell(1, 0) == pytest.approx((samples[0, 0, 0, 0] + 1) / 2)  # ... above its first copies
    assert cell(2, 0) == pytest.approx((samples[1, 0, 0, 0] + 1) / 2)  # (two of its three: copies=2)
    assert cell(1, 1) == pytest.approx((samples[2, 0, 0, 0] + 1) / 2) and np.ma.is_masked(cell(2, 1))  # one copy: blank
    assert "of 4)" in ax.get_title()
    plt.close(fig)
    # nothing memorized: one line saying so under the title, not a tall blank canvas
    fig = plots.most_copied_figure(samples, train, nearest, np.zeros(6, bool), copies=2, title="cell x")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["no training image is copied"] and not ax.images
    assert ax.get_title() == "cell x\nnone of the 6 samples is memorized" and fig.get_size_inches()[1] < 2
    plt.close(fig)


def test_disagreement_figure_groups_the_samples_by_which_criteria_flag_them():
    import matplotlib.pyplot as plt

    train = np.linspace(-1, 1, 4)[:, None, None, None] * np.ones((4, 1, 4, 4))
    nearest = np.array([0, 1, 2, 3, 0, 1, 2])
    samples = train[nearest] + 0.01
    verdicts = {"nn": np.array([1, 1, 0, 0, 1, 0, 1], bool), "cos": np.array([1, 0, 1, 0, 0, 0, 1], bool),
                "ext": np.array([1, 1, 0, 0, 1, 0, 0], bool)}
    assert list(plots.verdict_patterns(verdicts)) == ["nn+cos+ext", "nn+ext", "cos", "none", "nn+ext", "none",
                                                      "nn+cos"]
    fig = plots.disagreement_figure(samples, train, nearest, verdicts, per_group=1)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["only nn+ext flag: 2", "only cos flag: 1", "only nn+cos flag: 1"]  # most frequent first
    mosaic = fig.axes[0].images[0].get_array()  # per_group=1: the first nn+ext sample (1) above training image 1
    assert mosaic.shape == (1 + 2 * 5, 1 + 5)
    assert mosaic[2, 2] == pytest.approx((samples[1, 0, 0, 0] + 1) / 2)
    assert mosaic[7, 2] == pytest.approx((train[1, 0, 0, 0] + 1) / 2)
    plt.close(fig)
    agree = {"nn": np.array([1, 0], bool), "cos": np.array([1, 0], bool)}
    fig = plots.disagreement_figure(samples[:2], train, nearest[:2], agree)
    assert "agree on every sample" in fig.axes[0].texts[0].get_text()
    plt.close(fig)


def _visible_tick_labels(ax, minor: bool = False) -> list[str]:
    lo, hi = ax.get_xlim()
    ticks = ax.xaxis.get_minorticklocs() if minor else ax.get_xticks()
    labels = ax.get_xticklabels(minor=minor)
    return [label.get_text() for t, label in zip(ticks, labels) if lo <= t <= hi and label.get_text()]


def test_the_training_step_axis_is_labelled_plainly_at_one_two_five_whatever_its_span():
    rows = []
    for last, steps in ((300, (20, 43, 93, 200, 300)), (3000, (20, 50, 126, 316, 794, 2000, 3000))):
        for n in (8, 32):
            rows += [{"model": "U-Net, 8 ch, 39.5k", "params": 39_473, "n_train": n, "step": s, "mem_nn": 0.1,
                      "mem_nn_lo": 0.0, "mem_nn_hi": 0.3, "heldout_loss": 1.0, "last": last} for s in steps]
    table = pd.DataFrame(rows)
    expected = {300: ["20", "50", "100", "200"], 3000: ["30", "100", "300", "1,000", "3,000"]}
    for last, labels in expected.items():
        fig = plots.memorization_over_steps_figure(table[table["last"] == last].drop(columns="last"))
        fig.canvas.draw()
        ax = fig.axes[-1]
        # no 2x10^1 3x10^1 ... minor labels running together below a span of one or two decades
        assert _visible_tick_labels(ax) == labels and _visible_tick_labels(ax, minor=True) == []


def test_the_guidance_and_training_time_figures_draw_the_extraction_criterion_too():
    """The third criterion was scored at every guidance weight and checkpoint but drawn in neither figure: each
    now has a panel (a row over steps) for it, with its own ratios, and none where no cell has it."""
    scan = _results([{"n_train": 64, "guidance": w, "mem_nn": 0.5, "mem_nn_class": np.nan, "mem_nn_class_lo": np.nan,
                      "mem_nn_class_hi": np.nan, "mem_ext": e} for w, e in ((0.0, 0.25), (2.0, 0.75))])
    fig = plots.memorization_vs_guidance_figure(scan)
    assert len(fig.axes) == 4 and fig.axes[3].get_title().startswith("extraction (Carlini et al.)")
    (bars,) = fig.axes[3].containers
    assert bars.lines[0].get_ydata().tolist() == [0.25, 0.75]
    assert len(plots.memorization_vs_guidance_figure(scan.assign(mem_ext=np.nan)).axes) == 3
    steps = pd.DataFrame([{"model": "U-Net, 8 ch, 39.5k", "params": 39_473, "n_train": 8, "step": s, "mem_nn": 0.1,
                           "mem_nn_lo": 0.0, "mem_nn_hi": 0.3, "mem_ext": e, "mem_ext_lo": e - 0.1,
                           "mem_ext_hi": e + 0.1, "heldout_loss": 1.0} for s, e in ((20, 0.2), (200, 0.6))])
    fig = plots.memorization_over_steps_figure(steps)
    assert [ax.get_ylabel().splitlines()[-1] for ax in fig.axes] == ["(d1/d2 < ratio)", "(extraction score)",
                                                                      "(fixed noise)"]
    (bars,) = fig.axes[1].containers
    assert bars.lines[0].get_ydata().tolist() == [0.2, 0.6]


def test_the_timescales_legend_hides_no_point():
    rows = [{"model": "U-Net, 8 ch, 39.5k", "params": 39_473, "experiment": "", "n_train": n, "seed": 0,
             "tau_mem": tau, "tau_mem_lo": tau, "tau_mem_hi": tau, "tau_mem_censored": "none" if tau else "right",
             "tau_mem_bound": 300.0, "tau_gen": gen, "tau_gen_lo": gen / 2, "tau_gen_hi": gen, "level": 0.5,
             "gen_measure": "heldout_loss", "gen_tolerance": 0.1}
            for n, tau, gen in ((8, None, 64.0), (16, None, 100.0), (32, None, 188.0))]
    fig = plots.timescales_figure(pd.DataFrame(rows), {})
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    points = [(n, 300.0) for n in (8, 16, 32)] + [(r["n_train"], r["tau_gen"]) for r in rows]
    for x, y in ax.transData.transform(points):  # the censored tau_mem at the top left was under the legend
        assert not legend.contains(x, y), (x, y)
    assert _visible_tick_labels(ax) == ["8", "16", "32"]
    lo, hi = ax.get_ylim()
    assert [label.get_text() for t, label in zip(ax.get_yticks(), ax.get_yticklabels()) if lo <= t <= hi] == \
        ["50", "100", "200"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [  # none for a tau_mem that no cell reached
        "tau_mem censored (not reached by then)", "tau_gen (heldout_loss within 0.1 of its fall to its best)"]

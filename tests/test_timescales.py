"""Timescales of training (memorize.timescales) on hand-built curves with known crossings."""

import math

import numpy as np
import pandas as pd
import pytest

from memorize.analysis import power_law_fit
from memorize.timescales import first_crossing, generalization_time, memorization_time, timescales


def test_first_crossing_interpolates_on_log_steps_and_says_when_it_is_censored():
    steps = np.array([10, 100, 1000])
    # halfway from 0.4 to 0.6 on log step between 100 and 1,000: the geometric mean
    assert first_crossing(steps, np.array([0.0, 0.4, 0.6]), 0.5) == (pytest.approx(math.sqrt(100 * 1000)), "none")
    assert first_crossing(steps, np.array([0.5, 0.9, 1.0]), 0.5) == (10.0, "left")
    tau, censored = first_crossing(steps, np.array([0.0, 0.1, 0.3]), 0.5)
    assert math.isnan(tau) and censored == "right"


def test_memorization_time_brackets_the_crossing_with_the_wilson_bounds():
    steps = np.array([10, 100, 1000, 10000])
    ratio = np.array([0.0, 0.2, 0.8, 1.0])
    hi, lo = np.clip(ratio + 0.3, 0, 1), np.clip(ratio - 0.3, 0, 1)
    t = memorization_time(steps, ratio, lo, hi)
    assert t["tau_mem_censored"] == "none"
    assert t["tau_mem"] == pytest.approx(math.sqrt(100 * 1000))  # 0.5 is halfway from 0.2 to 0.8
    assert t["tau_mem_lo"] == pytest.approx(100.0)  # the upper bound reaches 0.5 at step 100
    assert t["tau_mem_hi"] == pytest.approx(1000.0)  # the lower bound at step 1,000
    never = memorization_time(steps, np.zeros(4), np.zeros(4), np.full(4, 0.1))
    assert never["tau_mem_censored"] == "right" and never["tau_mem_bound"] == 10000 and math.isnan(never["tau_mem"])


def test_generalization_time_is_the_first_step_within_the_tolerance_of_the_best():
    steps = np.array([10, 100, 1000, 10000])
    loss = np.array([2.0, 1.1, 1.0, 1.5])  # falls by 1.0 to its best at 1,000, then overfits
    t = generalization_time(steps, loss, tolerance=0.1)
    assert t["tau_gen"] == pytest.approx(100.0) and t["gen_best_step"] == 1000
    # a tolerance of 0.5 is met halfway (on log step) from 10 (1 of the fall left) to 100 (0.1 left)
    frac = (1 - 0.5) / (1 - 0.1)
    half = generalization_time(steps, loss, tolerance=0.5)
    assert half["tau_gen"] == pytest.approx(10 * 10 ** frac)
    assert (half["tau_gen_lo"], half["tau_gen_hi"]) == (10, 100)  # the checkpoints around the crossing


def test_a_memorization_time_linear_in_n_is_recovered_as_slope_one():
    grid = np.array([round(20 * 10 ** (i / 5)) for i in range(13)])
    rows = []
    for n in (8, 16, 32, 64, 128):
        tau = 5.0 * n  # the ratio is linear in log step around tau, so interpolation is exact there
        for step in grid:
            ratio = float(np.clip(0.5 + 0.5 * np.log(step / tau), 0, 1))
            rows.append({"n_train": n, "step": step, "mem_nn": ratio, "mem_nn_lo": max(ratio - 0.1, 0),
                         "mem_nn_hi": min(ratio + 0.1, 1), "heldout_loss": 1.0 + 1.0 / step})
    ts = timescales(pd.DataFrame(rows), ["n_train"])
    assert (ts.tau_mem_censored == "none").all()
    np.testing.assert_allclose(ts.tau_mem, 5.0 * ts.n_train, rtol=1e-9)
    fit = power_law_fit(ts.n_train.to_numpy(float), ts.tau_mem.to_numpy(float), ts.tau_mem_lo.to_numpy(float),
                        ts.tau_mem_hi.to_numpy(float))
    assert fit["slope"] == pytest.approx(1.0) and fit["slope_lo"] < 1.0 < fit["slope_hi"]
    # the held-out loss 1 + 1/step is within 10% of its fall at the same step for every N: tau_gen is flat
    assert ts.tau_gen.nunique() == 1

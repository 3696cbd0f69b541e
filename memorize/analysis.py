"""Phase-transition analysis of a sweep's results table: pooled ratios, critical N, power laws.

Only seeds are pooled. Every other column that tells experiments apart (each varying grid axis,
named by its dotted field, and the settings in :data:`SETTING_COLUMNS`) splits the table into
*experiments*, drawn as separate facets or series by :mod:`memorize.plots`; nothing else is
averaged. Functions here take and return pandas tables; they draw nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from memorize.metrics import wilson_interval


# Result columns that can differ between experiments of one table besides the grid axes.
SETTING_COLUMNS = ("dataset", "step", "sampler", "sample_steps", "embedder", "ratio", "threshold", "features")

# Of those, the ones a panel's title states once (the dataset, the criterion's constants): rows that differ in
# one are never drawn in one panel, even where the model determines it (two sweeps' tables drawn together).
APART_COLUMNS = ("dataset", "embedder", "ratio", "threshold")


MODEL_KEYS = ["model", "params"]


CRITERIA = {"nn": "nearest-neighbour d1/d2", "cos": "copy-detection cosine"}


def experiment_axes(results) -> list[str]:
    """Columns that split ``results`` into experiments beyond model and N: each grid axis (a dotted column)
    and each setting column, except ``seed``, that varies between rows of one (model, N) once the axes
    before it are fixed. Axes that a model or N determine (``model.channels``, ``data.n_train``) drop out,
    except the settings of :data:`APART_COLUMNS`, which split the table wherever they vary."""
    keys = MODEL_KEYS + ["n_train"]
    # cells that train.stop_when ended early differ in step, not in experiment: their budget is the setting
    settings = [("budget" if c == "step" and "budget" in results.columns else c) for c in SETTING_COLUMNS]
    candidates = [c for c in results.columns if "." in c] + [c for c in settings if c in results.columns]
    axes: list[str] = []
    for column in candidates:
        within = axes if column in APART_COLUMNS else keys + axes
        varies = (results.groupby(within, dropna=False)[column].nunique(dropna=False).gt(1).any() if within
                  else results[column].nunique(dropna=False) > 1)
        if varies:
            axes.append(column)
    return axes


def experiment_label(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def pooled_ratios(results, criterion: str = "nn", axes: list[str] | None = None):
    """Memorization ratio per (model, N, experiment axes), pooling seeds only: memorized counts are summed
    and the Wilson interval is taken on the pooled count; ``seed_sd``, ``seed_min`` and ``seed_max`` give
    the spread of the per-seed ratios beside it (NaN sd for one seed)."""
    axes = experiment_axes(results) if axes is None else axes
    df = results.assign(hits=(results[f"mem_{criterion}"] * results["n_samples"]).round().astype(int))
    rows = []
    for key, g in df.groupby(MODEL_KEYS + ["n_train"] + axes, dropna=False, sort=False):
        hits, total = int(g["hits"].sum()), int(g["n_samples"].sum())
        lo, hi = wilson_interval(hits, total)
        per_seed = g[f"mem_{criterion}"].astype(float)
        rows.append({**dict(zip(MODEL_KEYS + ["n_train"] + axes, key)), "ratio": hits / total, "lo": lo, "hi": hi,
                     "seeds": len(g), "seed_sd": per_seed.std(ddof=1) if len(g) > 1 else float("nan"),
                     "seed_min": per_seed.min(), "seed_max": per_seed.max(), "n_samples": total})
    return pd.DataFrame(rows).sort_values(axes + ["params", "n_train"]).reset_index(drop=True)


def _crossing(n: np.ndarray, r: np.ndarray, level: float) -> float:
    """First N where ``r`` falls through ``level``, by linear interpolation of ``r`` on log N."""
    for i in range(len(r) - 1):
        if r[i] >= level > r[i + 1]:
            return float(np.exp(n[i] + (r[i] - level) / (r[i] - r[i + 1]) * (n[i + 1] - n[i])))
    return float("nan")


def missed_crossing(ratio: np.ndarray, level: float = 0.5) -> str:
    """Which way a memorization ratio over a grid of N (in order of N) misses falling through ``level``:
    ``below`` (every ratio below it: smaller N, or longer training, would memorize), ``above`` (every ratio
    at or above it: larger N would generalize), ``rises`` (it crosses only upward), or ``""`` where it falls
    through (:func:`_crossing` finds where)."""
    ratio = np.asarray(ratio, float)
    if ((ratio[:-1] >= level) & (ratio[1:] < level)).any():  # a fall through the level: _crossing's condition
        return ""
    if (ratio < level).all():
        return "below"
    return "above" if (ratio >= level).all() else "rises"


MISSED = {"below": "every ratio below 0.5", "above": "every ratio at or above 0.5",
          "rises": "a ratio rising through 0.5"}


def critical_n(pooled, level: float = 0.5, axes: list[str] | None = None):
    """Per model and experiment, the N where the memorization ratio first falls through ``level``: linear
    interpolation of the ratio on log N between the two grid points around the crossing (NaN if it never
    crosses; ``missed`` then says which way, :func:`missed_crossing`). ``critical_n_lo`` / ``critical_n_hi``:
    the same crossing of the lower / upper Wilson bound, the range of N where the ratio's 95% interval
    contains ``level`` (NaN where a bound does not cross)."""
    axes = [c for c in pooled.columns if c not in MODEL_KEYS + ["n_train", "ratio", "lo", "hi", "seeds", "seed_sd",
                                                                 "seed_min", "seed_max", "n_samples"]] \
        if axes is None else axes
    rows = []
    for key, g in pooled.groupby(MODEL_KEYS + axes, dropna=False, sort=False):
        g = g.sort_values("n_train")
        n = np.log(g["n_train"].to_numpy(float))
        rows.append({**dict(zip(MODEL_KEYS + axes, key)),
                     "critical_n": _crossing(n, g["ratio"].to_numpy(float), level),
                     "critical_n_lo": _crossing(n, g["lo"].to_numpy(float), level),
                     "critical_n_hi": _crossing(n, g["hi"].to_numpy(float), level),
                     "missed": missed_crossing(g["ratio"].to_numpy(float), level)})
    return pd.DataFrame(rows).sort_values(axes + ["params"]).reset_index(drop=True)


def critical_n_by_experiment(results, criterion: str = "nn", level: float = 0.5):
    """:func:`critical_n` per model and experiment: seeds pooled (:func:`pooled_ratios`), the experiments
    (:func:`experiment_axes`) kept apart, as the sweep's ``critical_n`` figure and table give it."""
    axes = experiment_axes(results)
    return critical_n(pooled_ratios(results, criterion, axes), level, axes=axes)


def crossover_n(results, axes: list[str] | None = None, machines: tuple[str, ...] = ("els", "ls")):
    """Per model and experiment, for each local machine m, the N where the trained network's samples stop
    resembling the empirical denoiser's more than m's: the first fall of ``r2_empirical - r2_m`` (medians
    over the samples, seeds averaged) through 0, interpolated linearly on log N (``crossover_n_m``; NaN
    where it does not cross in the grid)."""
    axes = [] if axes is None else axes
    present = [m for m in machines if f"r2_{m}" in results and results[f"r2_{m}"].notna().any()]
    table = results.dropna(subset=["r2_empirical"])
    rows = []
    for key, g in table.groupby(MODEL_KEYS + axes, dropna=False, sort=False):
        g = g.groupby("n_train", as_index=False)[["r2_empirical"] + [f"r2_{m}" for m in present]].mean()
        g = g.sort_values("n_train")
        log_n = np.log(g["n_train"].to_numpy(float))
        rows.append({**dict(zip(MODEL_KEYS + axes, key)),
                     **{f"crossover_n_{m}": _crossing(log_n, (g["r2_empirical"] - g[f"r2_{m}"]).to_numpy(float), 0.0)
                        for m in present}})
    return pd.DataFrame(rows, columns=MODEL_KEYS + axes + [f"crossover_n_{m}" for m in present])


def power_law_fit(params: np.ndarray, crit: np.ndarray, lo: np.ndarray, hi: np.ndarray, draws: int = 2000,
                  seed: int = 0) -> dict:
    """Least-squares slope of log critical N on log parameters, with a 95% interval from a parametric
    bootstrap: each log critical N is redrawn from a normal whose 95% range is its [lo, hi] interval (a
    missing bound is mirrored from the other), and the slope refitted."""
    x, y = np.log(params), np.log(crit)
    slope, intercept = np.polyfit(x, y, 1)
    lo_gap = np.where(np.isfinite(lo), y - np.log(np.where(np.isfinite(lo), lo, 1.0)), np.nan)
    hi_gap = np.where(np.isfinite(hi), np.log(np.where(np.isfinite(hi), hi, 1.0)) - y, np.nan)
    half = np.nanmean(np.stack([lo_gap, hi_gap]), axis=0)
    half = np.where(np.isfinite(half), half, np.nanmax(half) if np.isfinite(half).any() else 0.0)
    rng = np.random.default_rng(seed)
    slopes = [np.polyfit(x, y + rng.normal(0.0, half / 1.96), 1)[0] for _ in range(draws)]
    return {"slope": float(slope), "intercept": float(intercept), "slope_lo": float(np.percentile(slopes, 2.5)),
            "slope_hi": float(np.percentile(slopes, 97.5)), "points": len(x)}


def pooled_share(results, column: str, axes: list[str]):
    """A share measured on a fixed reference set (recall on the held-out images, consistency with the
    twin) per (model, N, axes): the mean over seeds, and the widest of their Wilson intervals (seeds are
    not independent draws of one count here, so counts are not summed)."""
    keys = MODEL_KEYS + ["n_train"] + axes
    present = results[results[column].notna()] if column in results else results.iloc[:0]
    if present.empty:
        return None
    return (present.groupby(keys, dropna=False, sort=False)
            .agg(value=(column, "mean"), lo=(f"{column}_lo", "min"), hi=(f"{column}_hi", "max"))
            .reset_index().sort_values(["params", "n_train"]))


def multi_n_rows(results):
    """The rows of experiments (model and experiment axes) measured at 2 or more N: what the figures against N
    draw. Experiments at a single N (a guidance scan at one N) are drawn against their own axis instead; where
    no experiment has 2 N, every row."""
    axes = experiment_axes(results)
    keys = MODEL_KEYS + axes
    counts = results.groupby(keys, dropna=False)["n_train"].transform("nunique")
    return results[counts >= 2] if (counts >= 2).any() else results


def budget_label(results) -> str:
    """The training budget of a table's rows ("after 800 training steps", or the steps cells stopped at under
    ``train.stop_when``); where the rows were trained for different numbers of steps, their range ("after 120
    to 800 training steps"): an experiment axis then tells them apart where it can, and where the budget
    follows from the model or N (two sweeps' tables drawn together, a grid that ties the steps to the model)
    the range is what says that they differ."""
    if "step" not in results:
        return ""
    steps = results["step"].dropna().unique()
    budgets = results["budget"].dropna().unique() if "budget" in results else steps
    if len(steps) == 0:
        return ""
    if len(steps) == 1:
        return f"after {int(steps[0]):,} training steps"
    if len(budgets) == 1 and "stopped_early" in results and results["stopped_early"].astype(bool).any():
        return (f"trained until memorization converged (steps {int(steps.min()):,}-{int(steps.max()):,} "
                f"of a budget of {int(budgets[0]):,})")
    return f"after {int(steps.min()):,} to {int(steps.max()):,} training steps"

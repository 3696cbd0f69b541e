"""When memorization and generalization arrive over training (Bonnaire et al. 2025, "Why diffusion models
don't memorize": generalization at a time independent of N, memorization at a time growing with N).

Both timescales are read off a cell's scored checkpoints (``DIR/curves.csv``, written where a sweep sets
``score.checkpoints``):

* ``tau_mem``: the first step at which the memorization ratio reaches ``level`` (0.5), by linear
  interpolation of the ratio on log step between the checkpoints around the crossing. Censored where the
  curve does not cross: ``right`` (never reaches the level: tau_mem > the last step) or ``left`` (already at
  the first checkpoint: tau_mem <= the first step). ``tau_mem_lo`` / ``tau_mem_hi`` are the same crossing of
  the upper / lower Wilson bound, so the steps where the ratio's 95% interval contains the level.
* ``tau_gen``: the first step at which a lower-is-better generalization measure ``L`` (the held-out loss on
  fixed noise by default; FID also works) has come within ``tolerance`` of its best, relative to how far it
  fell: ``L(t) - L_min <= tolerance * (L(t_first) - L_min)``, interpolated on log step the same way.
  ``gen_best_step`` says where the best was; at the last checkpoint the measure was still improving.
  ``tau_gen_lo`` / ``tau_gen_hi`` are the checkpoints around the crossing (where it could lie).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LEVEL = 0.5
GEN_TOLERANCE = 0.1


def first_crossing(steps: np.ndarray, values: np.ndarray, level: float) -> tuple[float, str]:
    """The first step where ``values`` reaches ``level`` from below, by linear interpolation of the values on
    log step; returns (step, censoring): ``("none")`` for a crossing between two checkpoints, ``("left")`` with
    the first step when the first value is already at the level, ``("right")`` with NaN when none is."""
    if len(values) == 0:
        return float("nan"), "right"
    if values[0] >= level:
        return float(steps[0]), "left"
    log_t = np.log(steps.astype(float))
    for i in range(1, len(values)):
        if values[i] >= level:
            frac = (level - values[i - 1]) / (values[i] - values[i - 1])
            return float(np.exp(log_t[i - 1] + frac * (log_t[i] - log_t[i - 1]))), "none"
    return float("nan"), "right"


def memorization_time(steps: np.ndarray, ratio: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      level: float = LEVEL) -> dict:
    """``tau_mem`` of one cell (module docstring), with the crossings of the Wilson bounds and the
    censoring; ``tau_mem_bound`` is the step a censored time lies beyond (right) or at most at (left)."""
    tau, censored = first_crossing(steps, ratio, level)
    early, _ = first_crossing(steps, hi, level)
    late, _ = first_crossing(steps, lo, level)
    bound = {"none": float("nan"), "left": float(steps[0]), "right": float(steps[-1])}[censored]
    return {"tau_mem": tau if censored == "none" else float("nan"), "tau_mem_lo": early, "tau_mem_hi": late,
            "tau_mem_censored": censored, "tau_mem_bound": bound}


def generalization_time(steps: np.ndarray, measure: np.ndarray, tolerance: float = GEN_TOLERANCE) -> dict:
    """``tau_gen`` of one cell (module docstring): the first step with ``L(t) - L_min <= tolerance *
    (L(t_first) - L_min)``, and the step of the best value."""
    ok = np.isfinite(measure)
    steps, measure = steps[ok], measure[ok]
    if len(measure) < 2:
        return {"tau_gen": float("nan"), "tau_gen_lo": float("nan"), "tau_gen_hi": float("nan"),
                "gen_best_step": float("nan")}
    best = float(measure.min())
    remaining = (measure - best) / max(float(measure[0]) - best, 1e-12)  # 1 at the first checkpoint, 0 at the best
    tau, _ = first_crossing(steps, -remaining, -tolerance)
    return {"tau_gen": tau, "tau_gen_lo": float(steps[steps <= tau].max()), "tau_gen_hi": float(steps[steps >= tau].min()),
            "gen_best_step": float(steps[int(np.argmin(measure))])}


def timescales(curves: pd.DataFrame, keys: list[str], level: float = LEVEL, gen_measure: str = "heldout_loss",
               tolerance: float = GEN_TOLERANCE) -> pd.DataFrame:
    """Both timescales per curve: a curve is one group of ``keys`` (e.g. model, params, n_train, seed and
    the experiment axes), its rows the scored checkpoints (columns ``step``, ``mem_nn``, ``mem_nn_lo``,
    ``mem_nn_hi`` and ``gen_measure``)."""
    rows = []
    for key, g in curves.groupby(keys, dropna=False, sort=True):
        g = g.drop_duplicates("step").sort_values("step")
        steps = g["step"].to_numpy(int)
        mem = memorization_time(steps, g["mem_nn"].to_numpy(float), g["mem_nn_lo"].to_numpy(float),
                                g["mem_nn_hi"].to_numpy(float), level)
        gen = generalization_time(steps, g[gen_measure].to_numpy(float), tolerance)
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), **mem, **gen,
                     "first_step": int(steps[0]), "last_step": int(steps[-1]), "checkpoints": len(steps),
                     "level": level, "gen_measure": gen_measure,
                     "gen_tolerance": tolerance})
    return pd.DataFrame(rows)


def memorization_converged(ratios: list[float], window: int, tolerance: float, level: float = LEVEL) -> bool:
    """Whether a cell's memorization ratios at its scored checkpoints so far (oldest first) have converged:
    the last ``window`` of them all at least ``level`` and within ``tolerance`` of each other. A ratio that
    has not reached the level is still waiting (in Bonnaire et al.'s picture memorization arrives late), so a
    cell that never memorizes trains to its budget."""
    last = ratios[-window:]
    return len(last) == window and min(last) >= level and max(last) - min(last) <= tolerance

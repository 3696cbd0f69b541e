"""Evaluating a memorization criterion on cases with ground truth (:mod:`memorize.criteria_bench.cases`).

A *criterion* is any callable ``criterion(samples, train)`` over arrays ``(K, ...)`` and ``(N, ...)``
that returns, per sample, one of:

- a float array ``(K,)``: a score, higher = more memorized;
- a bool array ``(K,)``: a decision (memorized or not);
- a dict with ``score`` and optionally ``decision`` and ``index`` (the training image it names), or a
  tuple ``(score, index)``.

:func:`evaluate_criterion` calls it once per (kind, strength) of the cases, so one that raises,
returns the wrong shape or NaN is reported on that group (``error``) and the rest still runs. Per
group it reports the detection rate (the criterion's own decision, else its score above the
threshold that flags ``target_fpr`` of the held-out images), the ROC AUC of that group against all
novel cases (scores), the true-positive rate at ``target_fpr`` false positives on held-out images,
and the share of cases where the named training image is the true source.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memorize.criteria_bench.cases import COPY, KIND_CLASS, NOVEL, CaseSet
from memorize.metrics.criteria import wilson_interval

Criterion = Callable[[np.ndarray, np.ndarray], object]


class CriterionError(ValueError):
    """A criterion's output is unusable (wrong type or shape, NaN)."""


@dataclass
class CriterionOutput:
    score: np.ndarray  # (K,) float, higher = more memorized
    decision: np.ndarray | None  # (K,) bool, the criterion's own call
    index: np.ndarray | None  # (K,) int, the training image it names


def as_output(result: object, k: int) -> CriterionOutput:
    """Read a criterion's return value (module docstring) for ``k`` samples; unusable output raises
    :class:`CriterionError` saying what was wrong."""
    score = decision = index = None
    if isinstance(result, dict):
        score, decision, index = result.get("score"), result.get("decision"), result.get("index")
        if score is None and decision is None:
            raise CriterionError(f"returned a dict without 'score' or 'decision' (keys: {sorted(result)})")
    elif isinstance(result, tuple) and len(result) == 2:
        score, index = result
    else:
        score = result
    arrays = {}
    for name, value in (("score", score), ("decision", decision), ("index", index)):
        if value is None:
            continue
        try:
            value = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        except Exception as err:  # noqa: BLE001 - any unconvertible object
            raise CriterionError(f"{name}: not an array ({type(value).__name__}: {err})") from None
        if value.shape != (k,):
            raise CriterionError(f"{name}: expected shape ({k},), one value per sample, got {value.shape}")
        arrays[name] = value
    if "score" in arrays and arrays["score"].dtype == bool:
        arrays.setdefault("decision", arrays["score"])
    if "score" not in arrays:
        arrays["score"] = arrays["decision"]
    score = arrays["score"].astype(np.float64)
    if not np.isfinite(score).all():
        raise CriterionError(f"score: {int((~np.isfinite(score)).sum())} of {k} values are NaN or infinite")
    decision = arrays.get("decision")
    return CriterionOutput(score, None if decision is None else decision.astype(bool),
                           None if "index" not in arrays else arrays["index"].astype(np.int64))


def _groups(cases: CaseSet) -> list[tuple[str, float | None, np.ndarray]]:
    """(kind, strength or None, case indices) of each group, in order of appearance."""
    keys = pd.DataFrame({"kind": cases.kind, "strength": cases.strength})
    return [(kind, None if pd.isna(strength) else float(strength), g.index.to_numpy())
            for (kind, strength), g in keys.groupby(["kind", "strength"], dropna=False, sort=False)]


def run_criterion(criterion: Criterion, cases: CaseSet, train: np.ndarray) -> tuple[dict, dict]:
    """The criterion's output per (kind, strength) group, and the error message of each group that failed."""
    outputs, errors = {}, {}
    for kind, strength, idx in _groups(cases):
        try:
            outputs[kind, strength] = as_output(criterion(cases.images[idx], train), len(idx))
        except Exception as err:  # noqa: BLE001 - a user criterion may fail in any way; report, go on
            errors[kind, strength] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return outputs, errors


def evaluate_criterion(criterion: Criterion, cases: CaseSet, train: np.ndarray, target_fpr: float = 0.01,
                       name: str | None = None) -> pd.DataFrame:
    """One row per (kind, strength): ``truth`` (copy/partial/novel), ``n``, ``detection``, ``auc``,
    ``tpr_at_fpr`` (with its Wilson interval ``tpr_lo``, ``tpr_hi``), ``right_index``, ``threshold`` (score
    threshold at ``target_fpr`` on held-out images) and ``error`` (module docstring). ``detection`` of a novel
    kind is its false-positive rate."""
    outputs, errors = run_criterion(criterion, cases, train)
    name = name or getattr(criterion, "__name__", repr(criterion))
    return outcome_table(outputs, errors, cases, target_fpr, name)


def outcome_table(outputs: dict, errors: dict, cases: CaseSet, target_fpr: float, name: str) -> pd.DataFrame:
    """:func:`evaluate_criterion`'s table from the outputs and errors of :func:`run_criterion`."""
    from sklearn.metrics import roc_auc_score

    from memorize.metrics.calibration import calibrated_threshold

    novel = [o.score for (kind, _), o in outputs.items() if KIND_CLASS[kind] == NOVEL]
    novel_scores = np.concatenate(novel) if novel else np.zeros(0)
    heldout = [o.score for (kind, _), o in outputs.items() if kind == "heldout"]
    threshold = float("nan")
    if heldout:
        try:
            threshold = calibrated_threshold(np.concatenate(heldout), target_fpr)
        except ValueError as err:
            errors.setdefault(("heldout", None), str(err))
    rows = []
    for kind, strength, idx in _groups(cases):
        row = {"criterion": name, "kind": kind,
               "strength": float("nan") if strength is None else strength, "truth": KIND_CLASS[kind], "n": len(idx), "detection": float("nan"),
               "auc": float("nan"), "tpr_at_fpr": float("nan"), "tpr_lo": float("nan"), "tpr_hi": float("nan"),
               "right_index": float("nan"), "threshold": threshold,
               "error": errors.get((kind, strength), "")}
        out = outputs.get((kind, strength))
        if out is not None:
            above = out.score > threshold if np.isfinite(threshold) else np.full(len(idx), np.nan)
            row["detection"] = float(out.decision.mean()) if out.decision is not None else float(np.mean(above))
            row["tpr_at_fpr"] = float(np.mean(above))
            if np.isfinite(threshold):  # its Wilson 95% interval over the group's cases
                row["tpr_lo"], row["tpr_hi"] = wilson_interval(int(np.sum(above)), len(idx))
            if KIND_CLASS[kind] != NOVEL and len(novel_scores):
                labels = np.r_[np.ones(len(idx)), np.zeros(len(novel_scores))]
                row["auc"] = float(roc_auc_score(labels, np.r_[out.score, novel_scores]))
            if out.index is not None and KIND_CLASS[kind] != NOVEL:
                row["right_index"] = float(np.mean(out.index == cases.source[idx]))
        rows.append(row)
    return pd.DataFrame(rows)


def nn_criterion(ratio: float = 1 / 3) -> Criterion:
    """The nearest-neighbour ratio criterion (:func:`memorize.metrics.nn_ratio`) as a bench criterion:
    score ``1 - d1/d2``, decision ``d1/d2 < ratio``, index the nearest training image."""
    from memorize.metrics import nn_ratio

    def criterion(samples: np.ndarray, train: np.ndarray) -> dict:
        s = nn_ratio(samples, train, ratio)
        return {"score": 1 - s.ratio, "decision": s.memorized, "index": s.nearest}

    criterion.__name__ = f"nn d1/d2 < {ratio:.3g}"
    return criterion


def cosine_criterion(embedder: str = "pixel", device: str = "cpu") -> Criterion:
    """The copy-detection criterion (:func:`memorize.metrics.copy_similarity`) as a bench criterion:
    score the maximal cosine similarity, index its training image; its decision is the threshold at the
    bench's target false-positive rate on held-out images (``tpr_at_fpr``)."""
    from memorize.metrics import copy_similarity, load_embedder

    embed = load_embedder(embedder, device)

    def criterion(samples: np.ndarray, train: np.ndarray) -> dict:
        s = copy_similarity(embed(samples), embed(train), 1.0)
        return {"score": s.similarity, "index": s.nearest}

    criterion.__name__ = f"{embedder} cosine"
    return criterion


def extraction_criterion(tiles: int = 1) -> Criterion:
    """Carlini et al.'s extraction criterion (:func:`memorize.metrics.extraction_score`, n = 50, alpha = 0.5;
    ``tiles`` per side for the tiled distance) as a bench criterion: score ``-l`` (higher = more like a copy),
    index the nearest training image; its decision is the threshold at the bench's target false-positive
    rate on held-out images (``tpr_at_fpr``), as the sweeps calibrate it."""
    from memorize.metrics import extraction_score

    def criterion(samples: np.ndarray, train: np.ndarray) -> dict:
        s = extraction_score(samples, train, np.inf, tiles=tiles)
        return {"score": -s.score, "index": s.nearest}

    criterion.__name__ = "extraction (Carlini et al.)" + (f", {tiles}x{tiles} tiles" if tiles > 1 else "")
    return criterion


def load_criterion(spec: str) -> Criterion:
    """``module:function`` -> the function (the module must be importable: installed, or on PYTHONPATH)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"criterion {spec!r}: expected module:function")
    try:
        found = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ValueError(f"criterion {spec!r}: cannot import {module!r} ({err})") from None
    except AttributeError:
        raise ValueError(f"criterion {spec!r}: module {module!r} has no {attr!r}") from None
    if not callable(found):
        raise ValueError(f"criterion {spec!r}: {attr!r} is not callable")
    return found


def roc_figure(results: dict[str, dict]):
    """ROC curves of each criterion (name -> its :func:`run_criterion` outputs): one curve per copy or
    partial kind (strengths pooled; partial dashed) against all novel cases."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.8), squeeze=False, sharey=True)
    for ax, (name, outputs) in zip(axes[0], results.items()):
        novel = [o.score for (k, _), o in outputs.items() if KIND_CLASS[k] == NOVEL]
        if not novel:
            continue
        novel = np.concatenate(novel)
        for kind in dict.fromkeys(k for k, _ in outputs):
            if KIND_CLASS[kind] == NOVEL:
                continue
            scores = np.concatenate([o.score for (k, _), o in outputs.items() if k == kind])
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(scores)), np.zeros(len(novel))], np.r_[scores, novel])
            ax.plot(fpr, tpr, lw=1.2, ls="-" if KIND_CLASS[kind] == COPY else "--", label=kind)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false-positive rate (novel cases)")
    axes[0, 0].set_ylabel("true-positive rate")
    drawn = [ax for ax in axes[0] if ax.get_legend_handles_labels()[1]]
    if drawn:
        drawn[0].legend(fontsize=7, loc="lower right")
    for ax, (name, outputs) in zip(axes[0], results.items()):
        if not outputs:
            ax.text(0.5, 0.5, "failed on every case", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def run_bench(criteria: dict[str, Criterion], cases: CaseSet, train: np.ndarray, out, target_fpr: float = 0.01,
              progress: bool = True) -> pd.DataFrame:
    """Evaluate each criterion (name -> callable) on ``cases``; write ``OUT/criteria.csv`` (every
    :func:`evaluate_criterion` row) and ``OUT/roc.png`` (:func:`roc_figure`); returns the table."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from memorize.io import atomic_save_figure, atomic_write_text
    from memorize.progress import progress_bar

    out = Path(out)
    tables, outputs = [], {}
    for name, criterion in progress_bar(criteria.items(), disable=not progress, desc="criteria", leave=False):
        outputs[name], errors = run_criterion(criterion, cases, train)  # once: for the table and the figure
        tables.append(outcome_table(outputs[name], errors, cases, target_fpr, name))
    table = pd.concat(tables, ignore_index=True)
    atomic_write_text(out / "criteria.csv", table.to_csv(index=False))
    fig = roc_figure(outputs)
    atomic_save_figure(out / "roc.png", fig, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return table

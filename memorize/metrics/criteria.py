"""Memorization criteria for generated samples against a training set (see DESIGN.md).

- :func:`nn_ratio`: nearest-neighbour ratio (Yoon et al. 2023; Gu et al. 2023): memorized iff
  ``||x - x_(1)|| < ratio * ||x - x_(2)||`` in L2 on the data tensor.
- :func:`copy_similarity`: max cosine similarity of descriptors (Pizzi et al. 2022 SSCD; threshold
  0.5 in Somepalli et al. 2023, 0.6 in Zhang et al. 2024): memorized iff ``s > threshold``.
- :func:`memorization_ratio`: the memorized fraction with a Wilson 95% interval.
- :func:`reproducibility_score`: fraction of same-noise sample pairs whose descriptors' cosine
  exceeds the threshold (Zhang et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memorize.data.subsets import unique_indices
from memorize.metrics.search import as_float32_rows, as_rows, exact_cosine, exact_l2, knn

# FAISS candidates re-ranked exactly in float64 (DESIGN.md: k >= 4).
CANDIDATES = 4


@dataclass
class NNRatioScores:
    """Per-sample results of :func:`nn_ratio`. Indices point into the training set as given
    (the first occurrence among exact duplicates); -1 and NaN for non-finite samples."""

    nearest: np.ndarray  # (K,) int64
    second: np.ndarray  # (K,) int64
    d1: np.ndarray  # (K,) float64, ||x - x_(1)||
    d2: np.ndarray  # (K,) float64, ||x - x_(2)||
    ratio: np.ndarray  # (K,) float64, d1 / d2
    memorized: np.ndarray  # (K,) bool
    finite: np.ndarray  # (K,) bool
    threshold: float
    n_train_duplicates: int  # exact duplicates in the training set, collapsed before the search
    backend: str


def nn_ratio(samples: np.ndarray | torch.Tensor, train: np.ndarray | torch.Tensor, ratio: float = 1 / 3,
             candidates: int = CANDIDATES, batch_size: int = 8192, backend: str | None = None) -> NNRatioScores:
    """Nearest-neighbour ratio criterion: ``memorized = d1 / d2 < ratio`` (strict).

    ``samples`` (K, ...) and ``train`` (N, ...) are compared as flattened vectors. FAISS
    finds ``candidates`` neighbours per sample; their distances are recomputed exactly
    (float64, explicit differences) and re-sorted before d1 and d2 are taken. ``backend``
    picks the search (``search.BACKENDS``; default: the fastest available).

    Ties and duplicates: exact duplicates in ``train`` are collapsed to their first
    occurrence before searching (their count is reported), so an exact copy of a
    duplicated image has ``d2 > 0`` and counts as memorized; a sample equidistant from
    two distinct training items has ``d1 = d2`` and is not memorized. Candidates at equal
    distance are ordered by training index. Non-finite samples are not searched: they get
    NaN distances, index -1 and ``memorized = False``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio}")
    queries, base = as_rows(samples), as_rows(train)  # own precision, for exact distances
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"samples have {queries.shape[1]} values each but training items have {base.shape[1]}")
    keep = unique_indices(torch.from_numpy(np.ascontiguousarray(base)))
    if len(keep) < 2:
        raise ValueError(f"nn_ratio needs at least 2 distinct training items, got {len(keep)} (of N = {len(base)})")
    distinct = base if len(keep) == len(base) else base[keep]
    distinct32 = as_float32_rows(distinct)  # what FAISS searches (no copy for float32 input)

    k = len(queries)
    finite = np.isfinite(queries).all(1)
    out = {name: np.full(k, np.nan) for name in ("d1", "d2", "ratio")}
    nearest, second = np.full(k, -1, dtype=np.int64), np.full(k, -1, dtype=np.int64)
    used = "none"  # the backend that searched, if any sample was searched
    rows = np.flatnonzero(finite)
    if len(rows):
        found = knn(as_float32_rows(queries if len(rows) == k else queries[rows]), distinct32, max(candidates, 2),
                    "l2", batch_size, backend)
        used = found.backend
        exact = exact_l2(queries if len(rows) == k else queries[rows], distinct, found.indices)
        order = np.lexsort((found.indices, exact), axis=1)[:, :2]  # by exact distance, then index
        top = np.take_along_axis(found.indices, order, 1)
        dist = np.take_along_axis(exact, order, 1)
        nearest[rows], second[rows] = keep[top[:, 0]], keep[top[:, 1]]
        out["d1"][rows], out["d2"][rows] = dist[:, 0], dist[:, 1]
        out["ratio"][rows] = dist[:, 0] / dist[:, 1]
    memorized = np.zeros(k, dtype=bool)
    memorized[rows] = out["ratio"][rows] < ratio
    return NNRatioScores(nearest, second, out["d1"], out["d2"], out["ratio"], memorized, finite, ratio,
                         len(base) - len(keep), used)


def nn_ratio_within_class(samples: np.ndarray | torch.Tensor, labels: np.ndarray, train: np.ndarray | torch.Tensor,
                          train_labels: np.ndarray, ratio: float = 1 / 3, backend: str | None = None) -> NNRatioScores:
    """:func:`nn_ratio` of each sample against the training items of its own (requested) class only:
    ``d1`` and ``d2`` are the distances to the nearest and second-nearest item with ``train_labels == labels[k]``
    (indices into the whole training set). Undefined, so NaN and never memorized (``finite`` False), for a
    sample whose class has fewer than 2 distinct training items (always, with one class per image)."""
    samples, train = as_rows(samples), as_rows(train)
    labels, train_labels = np.asarray(labels), np.asarray(train_labels)
    if len(labels) != len(samples) or len(train_labels) != len(train):
        raise ValueError(f"nn_ratio_within_class: {len(labels)} labels for {len(samples)} samples, "
                         f"{len(train_labels)} for {len(train)} training items")
    k = len(samples)
    out = NNRatioScores(np.full(k, -1, dtype=np.int64), np.full(k, -1, dtype=np.int64), np.full(k, np.nan),
                        np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=bool), np.zeros(k, dtype=bool),
                        ratio, 0, "none")
    for c in np.unique(labels):
        rows, members = np.flatnonzero(labels == c), np.flatnonzero(train_labels == c)
        if len(members) < 2 or len(unique_indices(torch.from_numpy(np.ascontiguousarray(train[members])))) < 2:
            continue
        part = nn_ratio(samples[rows], train[members], ratio, backend=backend)
        out.nearest[rows], out.second[rows] = members[part.nearest.clip(0)], members[part.second.clip(0)]
        out.nearest[rows[~part.finite]] = out.second[rows[~part.finite]] = -1
        out.d1[rows], out.d2[rows], out.ratio[rows] = part.d1, part.d2, part.ratio
        out.memorized[rows], out.finite[rows] = part.memorized, part.finite
        out.n_train_duplicates += part.n_train_duplicates
        out.backend = part.backend
    return out


@dataclass
class CopyScores:
    """Per-sample results of :func:`copy_similarity` (index -1 / NaN for unusable samples)."""

    nearest: np.ndarray  # (K,) int64, training item of maximal cosine similarity
    similarity: np.ndarray  # (K,) float64
    memorized: np.ndarray  # (K,) bool
    finite: np.ndarray  # (K,) bool: finite, non-zero descriptor
    threshold: float
    backend: str


def _normalize(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalized float64 rows and a mask of rows that could be normalized (finite, non-zero)."""
    features = features.astype(np.float64)
    norms = np.linalg.norm(features, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    normed = np.zeros_like(features)
    normed[ok] = features[ok] / norms[ok, None]
    return normed, ok


def _row_norms(x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Float64 L2 norms of the rows of ``x``, chunk by chunk (no full float64 copy)."""
    return np.concatenate([np.linalg.norm(x[s:s + chunk].astype(np.float64), axis=1)
                           for s in range(0, len(x), chunk)]) if len(x) else np.zeros(0)


def _unit_float32(x: np.ndarray, norms: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Rows of ``x`` divided by ``norms`` (zero rows where a norm is unusable), as float32 for FAISS."""
    out = np.zeros(x.shape, dtype=np.float32)
    for s in range(0, len(x), chunk):
        n = norms[s:s + chunk]
        ok = np.isfinite(n) & (n > 0)
        out[s:s + chunk][ok] = x[s:s + chunk][ok] / n[ok, None]
    return out


def copy_similarity(sample_features: np.ndarray | torch.Tensor, train_features: np.ndarray | torch.Tensor,
                    threshold: float = 0.6, candidates: int = CANDIDATES, batch_size: int = 8192,
                    backend: str | None = None) -> CopyScores:
    """Copy-detection criterion: ``s = max_i cos(f(x), f(x_i))``, ``memorized = s > threshold``.

    Descriptors are L2-normalized here (one float32 copy of the training descriptors, for
    FAISS inner-product search); the candidates' cosines are recomputed in float64 from the
    descriptors as given. Samples whose descriptor is non-finite or zero get NaN, index -1 and
    ``memorized = False``; such training descriptors are an error.
    """
    queries, base = as_rows(sample_features), as_rows(train_features)
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"sample descriptors have dimension {queries.shape[1]}, training ones {base.shape[1]}")
    base_norms = _row_norms(base)
    base_ok = np.isfinite(base_norms) & (base_norms > 0)
    if not base_ok.all():
        raise ValueError(f"{int((~base_ok).sum())} training descriptors are zero or non-finite "
                         f"(first: item {int(np.flatnonzero(~base_ok)[0])})")
    query_norms = _row_norms(queries)
    ok = np.isfinite(query_norms) & (query_norms > 0)
    nearest = np.full(len(queries), -1, dtype=np.int64)
    similarity = np.full(len(queries), np.nan)
    used = "none"
    rows = np.flatnonzero(ok)
    if len(rows):
        usable = queries if len(rows) == len(queries) else queries[rows]
        found = knn(_unit_float32(usable, query_norms[rows]), _unit_float32(base, base_norms), candidates,
                    "ip", batch_size, backend)
        used = found.backend
        exact = exact_cosine(usable, base, found.indices, query_norms[rows], base_norms)
        order = np.lexsort((found.indices, -exact), axis=1)[:, 0]
        nearest[rows] = found.indices[np.arange(len(rows)), order]
        similarity[rows] = exact[np.arange(len(rows)), order]
    memorized = np.zeros(len(queries), dtype=bool)
    memorized[rows] = similarity[rows] > threshold
    return CopyScores(nearest, similarity, memorized, ok, threshold, used)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), via SciPy."""
    if trials == 0:
        return (float("nan"), float("nan"))
    from scipy.stats import binomtest  # imported here: scipy.stats takes most of a second to import

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def memorization_ratio(memorized: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Fraction of samples memorized, with its Wilson interval: ``{ratio, lo, hi, memorized, n}``."""
    memorized = np.asarray(memorized, dtype=bool)
    hits, n = int(memorized.sum()), len(memorized)
    lo, hi = wilson_interval(hits, n, confidence)
    return {"ratio": hits / n if n else float("nan"), "lo": lo, "hi": hi, "memorized": hits, "n": n}


def paired_change(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Paired comparison of two memorization verdicts on the same samples (same seeds, same classes: e.g. one
    model sampled at two guidance weights): ``gained`` samples memorized only after, ``lost`` only before, and
    the two-sided exact McNemar p-value, a binomial test of ``gained`` out of ``gained + lost`` at 1/2
    (McNemar 1947); 1.0 where no sample changes."""
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if before.shape != after.shape:
        raise ValueError(f"paired_change: {before.shape} and {after.shape} verdicts; pairs need equal lengths")
    gained, lost = int((after & ~before).sum()), int((before & ~after).sum())
    from scipy.stats import binomtest

    p = binomtest(gained, gained + lost).pvalue if gained + lost else 1.0
    return {"gained": gained, "lost": lost, "p_value": float(p)}


def reproducibility_score(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor,
                          threshold: float = 0.6) -> dict[str, float]:
    """Share of pairs (sample i of set a, sample i of set b, drawn from the same noise) whose
    descriptors' cosine similarity exceeds ``threshold`` (Zhang et al. 2024), with a Wilson interval.
    Pairs with an unusable (zero or non-finite) descriptor count as not reproduced."""
    a, ok_a = _normalize(as_rows(features_a))
    b, ok_b = _normalize(as_rows(features_b))
    if a.shape != b.shape:
        raise ValueError(f"paired sample sets must have the same shape, got {a.shape} and {b.shape}")
    cosine = np.einsum("kd,kd->k", a, b)
    usable = ok_a & ok_b
    share = memorization_ratio(usable & (cosine > threshold))
    return {"score": share["ratio"], "lo": share["lo"], "hi": share["hi"], "reproduced": share["memorized"],
            "n": share["n"], "threshold": threshold,
            "mean_cosine": float(cosine[usable].mean()) if usable.any() else float("nan")}

"""Memorization criteria for generated samples against a training set (see DESIGN.md).

- :func:`nn_ratio`: nearest-neighbour ratio (Yoon et al. 2023; Gu et al. 2023): memorized iff
  ``||x - x_(1)|| < ratio * ||x - x_(2)||`` in L2 on the data tensor.
- :func:`copy_similarity`: max cosine similarity of descriptors (Pizzi et al. 2022 SSCD; threshold
  0.5 in Somepalli et al. 2023, 0.6 in Zhang et al. 2024): memorized iff ``s > threshold``.
- :func:`memorization_ratio`: the memorized fraction with a Wilson 95% interval.
- :func:`copies_per_image`, :func:`copy_concentration`: which training images the memorized samples copy, and
  how concentrated that is.
- :func:`agreement`: how two criteria's verdicts on the same samples agree (counts and Cohen's kappa).
- :func:`reproducibility_score`: fraction of same-noise sample pairs whose descriptors' cosine
  exceeds the threshold (Zhang et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memorize.data.subsets import unique_indices
from memorize.metrics import device_search
from memorize.metrics.search import as_float32_rows, as_rows, exact_cosine, exact_l2, knn, search_backend

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


@dataclass
class Nearest:
    """What either search path of :func:`nearest_distinct` returns: per sample, the indices (into the training
    set as given; the first occurrence among exact duplicates) and exact float64 L2 distances of its ``keep``
    nearest distinct training items, nearest first (-1 and NaN for non-finite samples)."""

    indices: np.ndarray  # (K, keep) int64
    distances: np.ndarray  # (K, keep) float64
    finite: np.ndarray  # (K,) bool
    n_train_duplicates: int
    backend: str


def nn_ratio(samples: np.ndarray | torch.Tensor, train: np.ndarray | torch.Tensor, ratio: float = 1 / 3,
             candidates: int = CANDIDATES, batch_size: int = 8192, backend: str | None = None) -> NNRatioScores:
    """Nearest-neighbour ratio criterion: ``memorized = d1 / d2 < ratio`` (strict).

    ``samples`` (K, ...) and ``train`` (N, ...) are compared as flattened vectors. The search
    finds ``candidates`` neighbours per sample; their distances are recomputed exactly
    (float64, explicit differences) and re-sorted before d1 and d2 are taken. ``backend``
    picks the search (``search.BACKENDS``; default: the fastest available); with ``torch-cuda``
    (``torch-cpu``) the duplicate check, search and re-ranking all run on that device
    (:mod:`memorize.metrics.device_search`), with FAISS on the host.

    Ties and duplicates: exact duplicates in ``train`` are collapsed to their first
    occurrence before searching (their count is reported), so an exact copy of a
    duplicated image has ``d2 > 0`` and counts as memorized; a sample equidistant from
    two distinct training items has ``d1 = d2`` and is not memorized. Candidates at equal
    distance are ordered by training index. Non-finite samples are not searched: they get
    NaN distances, index -1 and ``memorized = False``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio}")
    found = nearest_distinct(samples, train, 2, max(candidates, 2), batch_size, backend)
    d1, d2 = found.distances[:, 0].copy(), found.distances[:, 1].copy()
    ratios = d1 / d2  # NaN where not searched
    memorized = np.zeros(len(ratios), dtype=bool)
    memorized[found.finite] = ratios[found.finite] < ratio
    return NNRatioScores(found.indices[:, 0].copy(), found.indices[:, 1].copy(), d1, d2, ratios, memorized,
                         found.finite, ratio, found.n_train_duplicates, found.backend)


def nearest_distinct(samples: np.ndarray | torch.Tensor, train: np.ndarray | torch.Tensor, keep: int,
                     candidates: int, batch_size: int = 8192, backend: str | None = None) -> Nearest:
    """The ``min(keep, distinct)`` nearest distinct training items of every sample, by exact float64 L2 distance
    (explicit differences), ties ordered by training index: a search for ``max(candidates, keep)`` neighbours
    (``backend``, see :func:`nn_ratio`) re-ranked exactly. Exact duplicates in ``train`` are collapsed to their
    first occurrence; fewer than 2 distinct items is an error."""
    backend = backend or search_backend()
    search = _nearest_on_device if backend.startswith("torch-") else _nearest_on_host
    return search(samples, train, max(candidates, keep), batch_size, backend, keep)


def _check_dims(samples_dim: int, train_dim: int) -> None:
    if samples_dim != train_dim:
        raise ValueError(f"samples have {samples_dim} values each but training items have {train_dim}")


def _check_distinct(distinct: int, n: int) -> None:
    if distinct < 2:
        raise ValueError(f"the nearest-neighbour criteria need at least 2 distinct training items, got {distinct} "
                         f"(of N = {n})")


def _nearest_on_host(samples, train, candidates: int, batch_size: int, backend: str, keep: int) -> Nearest:
    """Duplicate check (hashing) and float64 re-ranking on the CPU around a FAISS search, ``batch_size``
    samples at a time (the samples may be a memory-mapped file: only a batch is ever copied)."""
    queries, base = as_rows(samples), as_rows(train)  # own precision, for exact distances
    _check_dims(queries.shape[1], base.shape[1])
    first = unique_indices(torch.from_numpy(np.ascontiguousarray(base)))
    _check_distinct(len(first), len(base))
    distinct = base if len(first) == len(base) else base[first]
    distinct32 = as_float32_rows(distinct)
    k, keep = len(queries), min(keep, len(first))
    finite = np.zeros(k, dtype=bool)
    dist = np.full((k, keep), np.nan)
    nearest = np.full((k, keep), -1, dtype=np.int64)
    used = "none"  # the backend that searched, if any sample was searched
    for start in range(0, k, batch_size):
        block = queries[start:start + batch_size]
        finite[start:start + len(block)] = ok = np.isfinite(block).all(1)
        rows = np.flatnonzero(ok)
        if not len(rows):
            continue
        usable = block if len(rows) == len(block) else block[rows]
        found = knn(as_float32_rows(usable), distinct32, candidates, "l2", batch_size, backend)
        used = found.backend
        exact = exact_l2(usable, distinct, found.indices)
        order = np.lexsort((found.indices, exact), axis=1)[:, :keep]  # by exact distance, then index
        rows = rows + start
        nearest[rows] = first[np.take_along_axis(found.indices, order, 1)]
        dist[rows] = np.take_along_axis(exact, order, 1)
    return Nearest(nearest, dist, finite, len(base) - len(first), used)


def _nearest_on_device(samples, train, candidates: int, batch_size: int, backend: str, keep: int) -> Nearest:
    """Duplicate check, search and float64 re-ranking on the backend's torch device."""
    device = torch.device(backend.removeprefix("torch-"))
    queries = device_search.as_tensor_rows(samples).to(device)
    base = device_search.resident(device_search.as_tensor_rows(train), device)
    _check_dims(queries.shape[1], base.shape[1])
    first = device_search.distinct_rows(base, device)
    _check_distinct(len(first), len(base))
    distinct = base if len(first) == len(base) else base[first.to(base.device)]
    k, keep = len(queries), min(keep, len(first))
    finite = torch.isfinite(queries).all(1)
    nearest = torch.full((k, keep), -1, dtype=torch.int64, device=device)
    dist = torch.full((k, keep), float("nan"), dtype=torch.float64, device=device)
    used = "none"
    rows = finite.nonzero().squeeze(1)
    if len(rows):
        usable = queries if len(rows) == k else queries[rows]
        _, found = device_search.knn_on_device(usable.float(), distinct, candidates, True, device, batch_size)
        used = backend
        exact = device_search.exact_l2(usable, distinct, found, device)
        top, dist[rows] = device_search.best_by_exact(found, exact, keep)
        nearest[rows] = first[top]
    return Nearest(nearest.cpu().numpy(), dist.cpu().numpy(), finite.cpu().numpy(), len(base) - len(first), used)


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
    FAISS inner-product search; on a torch backend, a chunk at a time on the device); the
    candidates' cosines are recomputed in float64 from the descriptors as given. Samples whose
    descriptor is non-finite or zero get NaN, index -1 and ``memorized = False``; such training
    descriptors are an error.
    """
    if len(train_features) == 0:
        raise ValueError("copy_similarity needs at least 1 training descriptor, got none")
    backend = backend or search_backend()
    search = _most_similar_on_device if backend.startswith("torch-") else _most_similar_on_host
    nearest, similarity, ok, used = search(sample_features, train_features, candidates, batch_size, backend)
    memorized = np.zeros(len(similarity), dtype=bool)
    memorized[ok] = similarity[ok] > threshold
    return CopyScores(nearest, similarity, memorized, ok, threshold, used)


def _check_descriptors(sample_dim: int, train_dim: int, bad_train: np.ndarray | None = None) -> None:
    if sample_dim != train_dim:
        raise ValueError(f"sample descriptors have dimension {sample_dim}, training ones {train_dim}")
    if bad_train is not None and bad_train.any():
        raise ValueError(f"{int(bad_train.sum())} training descriptors are zero or non-finite "
                         f"(first: item {int(np.flatnonzero(bad_train)[0])})")


def _most_similar_on_host(sample_features, train_features, candidates: int, batch_size: int, backend: str):
    """(nearest, similarity, usable, backend): normalization and float64 re-ranking on the CPU around FAISS,
    ``batch_size`` samples at a time."""
    queries, base = as_rows(sample_features), as_rows(train_features)
    _check_descriptors(queries.shape[1], base.shape[1])
    base_norms = _row_norms(base)
    _check_descriptors(queries.shape[1], base.shape[1], ~(np.isfinite(base_norms) & (base_norms > 0)))
    base_unit = _unit_float32(base, base_norms)
    query_norms = _row_norms(queries)
    ok = np.isfinite(query_norms) & (query_norms > 0)
    nearest = np.full(len(queries), -1, dtype=np.int64)
    similarity = np.full(len(queries), np.nan)
    used = "none"
    for start in range(0, len(queries), batch_size):
        rows = np.flatnonzero(ok[start:start + batch_size]) + start
        if not len(rows):
            continue
        block = queries[start:start + batch_size]
        usable = block if len(rows) == len(block) else queries[rows]
        found = knn(_unit_float32(usable, query_norms[rows]), base_unit, candidates, "ip", batch_size, backend)
        used = found.backend
        exact = exact_cosine(usable, base, found.indices, query_norms[rows], base_norms)
        order = np.lexsort((found.indices, -exact), axis=1)[:, 0]
        nearest[rows] = found.indices[np.arange(len(rows)), order]
        similarity[rows] = exact[np.arange(len(rows)), order]
    return nearest, similarity, ok, used


def _most_similar_on_device(sample_features, train_features, candidates: int, batch_size: int, backend: str):
    """(nearest, similarity, usable, backend): norms, cosine search and float64 re-ranking on the device."""
    device = torch.device(backend.removeprefix("torch-"))
    queries = device_search.as_tensor_rows(sample_features).to(device)
    base = device_search.resident(device_search.as_tensor_rows(train_features), device)
    _check_descriptors(queries.shape[1], base.shape[1])
    base_norms = device_search.row_norms(base, device)
    _check_descriptors(queries.shape[1], base.shape[1], (~(base_norms.isfinite() & (base_norms > 0))).cpu().numpy())
    query_norms = device_search.row_norms(queries, device)
    ok = query_norms.isfinite() & (query_norms > 0)
    nearest = torch.full((len(queries),), -1, dtype=torch.int64, device=device)
    similarity = torch.full((len(queries),), float("nan"), dtype=torch.float64, device=device)
    used = "none"
    rows = ok.nonzero().squeeze(1)
    if len(rows):
        usable, norms = (queries, query_norms) if len(rows) == len(queries) else (queries[rows], query_norms[rows])
        unit = (usable.double() / norms[:, None]).float()
        _, found = device_search.knn_on_device(unit, base, candidates, False, device, batch_size, base_norms)
        used = backend
        exact = device_search.exact_cosine(usable, base, found, norms, base_norms, device)
        top, best = device_search.best_by_exact(found, exact, 1, descending=True)
        nearest[rows], similarity[rows] = top[:, 0], best[:, 0]
    return nearest.cpu().numpy(), similarity.cpu().numpy(), ok.cpu().numpy(), used


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), via SciPy."""
    if successes != int(successes) or trials != int(trials):
        raise ValueError(f"wilson_interval takes counts, got {successes} of {trials}")
    if trials == 0:
        return (float("nan"), float("nan"))
    from scipy.stats import binomtest  # imported here: scipy.stats takes most of a second to import

    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def memorization_ratio(memorized: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Fraction of samples memorized, with its Wilson interval: ``{ratio, lo, hi, memorized, n}``.
    ``memorized``: one verdict per sample (booleans, or 0 and 1); scores (a criterion's ``ratio`` or
    ``similarity``) are refused rather than counted as memorized wherever they are not zero."""
    values = np.asarray(memorized)
    if values.ndim != 1:
        raise ValueError(f"memorization_ratio takes one verdict per sample (1-D), got shape {values.shape}")
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        odd = values[~np.isin(values, (0, 1))][0]
        raise ValueError(f"memorization_ratio takes verdicts (booleans, or 0 and 1), got the value {odd}: pass a "
                         f"criterion's `memorized`, not its scores")
    memorized = values.astype(bool)
    hits, n = int(memorized.sum()), len(memorized)
    lo, hi = wilson_interval(hits, n, confidence)
    return {"ratio": hits / n if n else float("nan"), "lo": lo, "hi": hi, "memorized": hits, "n": n}


def copies_per_image(n_train: int, nearest: np.ndarray, memorized: np.ndarray) -> np.ndarray:
    """For each of ``n_train`` training images, how many memorized samples copy it (have it as their nearest
    training image under the criterion that flagged them): (n_train,) int64."""
    nearest, memorized = np.asarray(nearest), np.asarray(memorized, dtype=bool)
    return np.bincount(nearest[memorized & (nearest >= 0)], minlength=n_train).astype(np.int64)


def copy_concentration(copies: np.ndarray, top: float = 0.1) -> float:
    """The share of memorized samples that copy the most-copied ``top`` fraction of the training images
    (``ceil(top * N)`` of them; 1 where copying is as concentrated as it can be, about ``top`` where it is
    spread evenly); NaN where no sample is memorized."""
    copies = np.asarray(copies)
    total = int(copies.sum())
    if total == 0:
        return float("nan")
    k = max(1, int(np.ceil(top * len(copies) - 1e-9)))
    return float(np.sort(copies)[::-1][:k].sum() / total)


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


def agreement(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """How two criteria's verdicts on the same samples agree: counts of samples that ``both`` flag, that
    ``only_first`` / ``only_second`` flags, that ``neither`` does, and Cohen's kappa (Cohen 1960; agreement beyond
    chance, via scikit-learn), NaN where it is undefined (both criteria give every sample the same verdict)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"agreement: {first.shape} and {second.shape} verdicts; pairs need equal lengths")
    out = {"both": int((first & second).sum()), "only_first": int((first & ~second).sum()),
           "only_second": int((~first & second).sum()), "neither": int((~first & ~second).sum())}
    constant = len(np.unique(np.concatenate([first, second]))) < 2
    if constant or not len(first):
        return {**out, "kappa": float("nan")}
    from sklearn.metrics import cohen_kappa_score

    return {**out, "kappa": float(cohen_kappa_score(first, second))}


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

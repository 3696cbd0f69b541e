"""The extraction criterion of Carlini et al. 2023 ("Extracting training data from diffusion models",
USENIX Security; their CIFAR-10 definition): a sample is extracted when its distance to the nearest
training image is small *relative to* its distances to the ``n`` nearest ones,

    l(x_hat) = ||x_hat - x_(1)|| / (alpha * mean_{y in S_n(x_hat)} ||x_hat - y||),   extracted iff l < delta,

where ``S_n(x_hat)`` holds the ``n`` training images nearest to ``x_hat`` (``x_(1)`` among them), with the
paper's ``n = 50`` and ``alpha = 0.5``. A copy has ``l = 0``; a sample no nearer to one image than to its
other neighbours has ``l`` near ``1 / alpha = 2``. For large images the paper measures distance tiled:
the images are cut into a grid of non-overlapping tiles and the distance is the *largest* of the tiles'
L2 distances, so that every region must match, not the image on average.

The search is exact: the untiled distance through :func:`memorize.metrics.criteria.nearest_distinct`
(the same search and float64 re-ranking as the nearest-neighbour ratio, on the same backends); the tiled
one by streaming the training set in chunks on the backend's torch device, its candidates re-ranked
from explicit float64 differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from memorize.data.subsets import unique_indices
from memorize.metrics import device_search
from memorize.metrics.calibration import calibrated_threshold
from memorize.metrics.criteria import CANDIDATES, nearest_distinct
from memorize.metrics.search import search_backend

# The paper's CIFAR-10 constants.
NEIGHBOURS = 50
ALPHA = 0.5
# Float64 values per block of tiled distances (32 MiB): bounds the tiled search's working memory.
TILED_ELEMENTS = 1 << 22


@dataclass
class ExtractionScores:
    """Per-sample results of :func:`extraction_score` (index -1 and NaN for non-finite samples)."""

    nearest: np.ndarray  # (K,) int64, the nearest distinct training image (first occurrence among duplicates)
    d1: np.ndarray  # (K,) float64, distance to it (tiled where tiles > 1)
    mean_distance: np.ndarray  # (K,) float64, mean distance to the n nearest distinct training images
    score: np.ndarray  # (K,) float64, d1 / (alpha * mean_distance)
    memorized: np.ndarray  # (K,) bool, score < threshold
    finite: np.ndarray  # (K,) bool
    n: int  # neighbours averaged: min(n asked, distinct training images)
    alpha: float
    threshold: float
    tiles: int  # tiles per side (1: the plain L2 distance)
    n_train_duplicates: int
    backend: str


def extraction_score(samples: np.ndarray | torch.Tensor, train: np.ndarray | torch.Tensor, threshold: float,
                     n: int = NEIGHBOURS, alpha: float = ALPHA, tiles: int = 1, candidates: int = CANDIDATES,
                     batch_size: int = 8192, backend: str | None = None) -> ExtractionScores:
    """Carlini et al.'s criterion: ``score = d1 / (alpha * mean of the n nearest distances)``,
    ``memorized = score < threshold`` (strict).

    ``samples`` (K, ...) and ``train`` (N, ...); with ``tiles = g > 1`` both are images (·, C, H, W) with H
    and W divisible by ``g``, and the distance between two images is the largest L2 distance between their
    corresponding tiles of the g x g grid. Exact duplicates in ``train`` are collapsed to their first
    occurrence (as for :func:`memorize.metrics.nn_ratio`); where fewer than ``n`` distinct images exist, all
    are averaged (``n`` in the result says how many). Non-finite samples get NaN, index -1 and
    ``memorized = False``. ``threshold``: a number, e.g. from :func:`calibrated_extraction_threshold`.
    """
    if n < 2:
        raise ValueError(f"n: expected at least 2 neighbours to average, got {n}")
    if not alpha > 0:
        raise ValueError(f"alpha: expected a positive number, got {alpha}")
    if tiles < 1:
        raise ValueError(f"tiles: expected a positive number of tiles per side, got {tiles}")
    backend = backend or search_backend()
    if tiles == 1:
        found = nearest_distinct(samples, train, n, n + candidates, batch_size, backend)
        indices, distances, finite, duplicates, used = (found.indices, found.distances, found.finite,
                                                        found.n_train_duplicates, found.backend)
    else:
        indices, distances, finite, duplicates, used = _nearest_tiled(samples, train, n, tiles, n + candidates,
                                                                      batch_size, backend)
    d1 = distances[:, 0].copy()
    mean = distances.mean(1)  # NaN where not searched
    with np.errstate(invalid="ignore", divide="ignore"):
        score = d1 / (alpha * mean)
    score[finite & (mean == 0)] = np.nan  # cannot happen with 2 distinct images; kept out of the verdicts
    memorized = np.zeros(len(score), dtype=bool)
    memorized[finite] = score[finite] < threshold
    return ExtractionScores(indices[:, 0].copy(), d1, mean, score, memorized, finite, distances.shape[1], alpha,
                            float(threshold), tiles, duplicates, used)


def calibrated_extraction_threshold(heldout_score: np.ndarray, target_fpr: float = 0.01) -> float:
    """The threshold at which at most ``floor(target_fpr * n)`` of ``n`` held-out images are flagged
    (``score < threshold``): the ``(k + 1)``-th smallest held-out score, ``k = floor(target_fpr * n)`` (the
    cosine's :func:`memorize.metrics.calibration.calibrated_threshold` from below)."""
    return -calibrated_threshold(-np.asarray(heldout_score, dtype=np.float64), target_fpr)


def image_tiles(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(M, C, H, W) images as (M, grid * grid, C * H/grid * W/grid): the non-overlapping tiles of a grid x grid
    partition, row by row, each flattened."""
    if images.ndim != 4:
        raise ValueError(f"tiles: a tiled distance needs images (M, C, H, W), got shape {tuple(images.shape)}")
    m, c, h, w = images.shape
    if h % grid or w % grid:
        raise ValueError(f"tiles: {grid} tiles per side do not divide {h} x {w} images evenly")
    th, tw = h // grid, w // grid
    return images.reshape(m, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(m, grid * grid, c * th * tw)


def tiled_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Float64 ``max_t ||a_it - b_jt||`` for tiles (A, T, D) and (B, T, D): (A, B), from explicit differences
    of each pair (the reference every search result is checked against; use on small blocks)."""
    diff = a.double()[:, None] - b.double()[None]
    return diff.square().sum(-1).sqrt().amax(-1)


@torch.no_grad()
def _nearest_tiled(samples, train, keep: int, grid: int, candidates: int, batch_size: int, backend: str):
    """(indices, distances, finite, duplicates, backend) of the ``keep`` nearest distinct training images by
    tiled distance: each training chunk's tiled distances to a batch of samples (float64, through
    ``torch.cdist`` per tile), the best ``candidates`` kept, then re-ranked from explicit differences."""
    device = torch.device(backend.removeprefix("torch-")) if backend.startswith("torch-") else torch.device("cpu")
    queries = torch.as_tensor(np.asarray(samples) if not isinstance(samples, torch.Tensor) else samples)
    base = torch.as_tensor(np.asarray(train) if not isinstance(train, torch.Tensor) else train)
    if queries.shape[1:] != base.shape[1:]:
        raise ValueError(f"samples have shape {tuple(queries.shape[1:])} each but training images "
                         f"{tuple(base.shape[1:])}")
    first = torch.from_numpy(unique_indices(base.reshape(len(base), math.prod(base.shape[1:])).contiguous()))
    if len(first) < 2:
        raise ValueError(f"the extraction criterion needs at least 2 distinct training images, got {len(first)}")
    base_tiles = image_tiles(base[first] if len(first) < len(base) else base, grid)
    query_tiles = image_tiles(queries, grid)
    k, keep = len(queries), min(keep, len(first))
    finite = torch.isfinite(query_tiles).flatten(1).all(1)
    indices = torch.full((k, keep), -1, dtype=torch.int64)
    distances = torch.full((k, keep), float("nan"), dtype=torch.float64)
    rows = finite.nonzero().squeeze(1)
    tile_values = base_tiles.shape[1] * base_tiles.shape[2]
    batch = max(1, min(batch_size, TILED_ELEMENTS // max(1, tile_values)))
    chunk = max(keep, TILED_ELEMENTS // max(1, batch * base_tiles.shape[1]))
    for start in range(0, len(rows), batch):
        block = rows[start:start + batch]
        q = query_tiles[block].to(device, torch.float64).transpose(0, 1)  # (T, B, D)
        best_d = torch.empty((len(block), 0), dtype=torch.float64, device=device)
        best_i = torch.empty((len(block), 0), dtype=torch.int64, device=device)
        for c0 in range(0, len(base_tiles), chunk):
            b = base_tiles[c0:c0 + chunk].to(device, torch.float64).transpose(0, 1)  # (T, C, D)
            d = torch.cdist(q, b).amax(0)  # (B, C): the largest tile distance
            d_all, order = torch.cat([best_d, d], 1).topk(min(candidates, best_d.shape[1] + d.shape[1]), dim=1,
                                                          largest=False)
            best_i = torch.cat([best_i, torch.arange(c0, c0 + d.shape[1], device=device).expand(len(block), -1)],
                               1).gather(1, order)
            best_d = d_all
        exact = torch.stack([tiled_distances(query_tiles[block[i]][None], base_tiles[best_i[i].cpu()])[0]
                             for i in range(len(block))]).to(device)
        top, dist = device_search.best_by_exact(best_i, exact, keep)
        indices[block], distances[block] = first[top.cpu()], dist.cpu()
    used = backend if backend.startswith("torch-") else "torch-cpu"
    return (indices.numpy(), distances.numpy(), finite.numpy(), len(base) - len(first),
            used if len(rows) else "none")

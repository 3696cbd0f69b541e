"""Near-duplicate images: a stated descriptor, a cosine threshold, and the images that survive collapsing.

Descriptor (:func:`near_descriptors`): each image average-pooled to at most ``NEAR_SIZE`` x ``NEAR_SIZE``
pixels per channel (smaller images as they are), flattened, its own mean subtracted and scaled to unit
L2 norm. The cosine of two descriptors is then the Pearson correlation of the two images' (pooled) pixel
values, so a copy that differs by brightness, contrast, mild noise or resampling stays near 1, while a
shifted or cropped copy need not (Barz & Denzler 2020 found CIFAR's near-duplicates with CNN features and
a human look; a pixel rule catches the first kind only). A constant image has no direction: its
descriptor is zero and it is nobody's near-duplicate.

Two images are near-duplicates when their descriptors' cosine is at least the threshold
(``data.near_threshold``). The search is exact: FAISS's flat inner-product range search over float32
descriptors with a margin, each candidate then re-checked in float64, streamed over the queries in chunks.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

NEAR_SIZE = 16  # pooled side length of the descriptor
NEAR_THRESHOLD = 0.98  # default cosine threshold (data.near_threshold)
CHUNK = 4096  # images per descriptor or query chunk
_MARGIN = 1e-4  # float32 inner products of unit vectors of up to a few thousand entries err by far less


def near_descriptors(data: torch.Tensor, size: int = NEAR_SIZE) -> np.ndarray:
    """(M, d) float64 unit descriptors of ``data`` (M, C, H, W) or (M, D): average-pooled to at most
    ``size`` pixels a side, flattened, centred on each image's mean, L2-normalized (zero for a constant
    image)."""
    parts = []
    for start in range(0, len(data), CHUNK):
        x = data[start:start + CHUNK].double()
        if x.ndim == 4 and max(x.shape[-2:]) > size:
            x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], size), min(x.shape[-1], size)))
        flat = x.reshape(len(x), -1)
        flat = flat - flat.mean(dim=1, keepdim=True)
        norm = flat.norm(dim=1, keepdim=True)
        parts.append(torch.where(norm > 0, flat / norm.clamp_min(1e-300), torch.zeros_like(flat)).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 1))


def near_pairs(query: np.ndarray, ref: np.ndarray, threshold: float) -> np.ndarray:
    """(P, 2) int64 pairs ``(q, r)`` with ``cos(query[q], ref[r]) >= threshold``, sorted; exact in float64.

    FAISS's flat inner-product range search finds every candidate above ``threshold - 1e-4`` in float32,
    then each candidate's cosine is recomputed in float64, so the pairs do not depend on float32 rounding."""
    if len(query) == 0 or len(ref) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(np.ascontiguousarray(ref, dtype=np.float32))
    found = []
    for start in range(0, len(query), CHUNK):
        q = query[start:start + CHUNK]
        lims, _, ids = index.range_search(np.ascontiguousarray(q, dtype=np.float32), threshold - _MARGIN)
        rows = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
        ids = ids.astype(np.int64)
        exact = np.einsum("ij,ij->i", q[rows], ref[ids]) >= threshold
        found.append(np.stack([rows[exact] + start, ids[exact]], axis=1))
    pairs = np.concatenate(found)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def near_duplicate_pairs(desc: np.ndarray, threshold: float) -> np.ndarray:
    """(P, 2) pairs ``i < j`` of rows of ``desc`` that are near-duplicates of each other."""
    pairs = near_pairs(desc, desc, threshold)
    return pairs[pairs[:, 0] < pairs[:, 1]]


def first_of_near_copies(desc: np.ndarray, threshold: float) -> np.ndarray:
    """Ascending positions of the rows that survive collapsing near-copies: row j is kept unless it is a
    near-duplicate of a row kept before it. No two kept rows are near-duplicates, and every dropped row
    is a near-duplicate of a kept one (the exact-duplicate rule, "keep the first occurrence", for
    near-copies; a chain a ~ b ~ c with a, c apart keeps a and c)."""
    pairs = near_duplicate_pairs(desc, threshold)
    earlier: dict[int, list[int]] = {}
    for i, j in pairs:
        earlier.setdefault(int(j), []).append(int(i))
    kept = np.ones(len(desc), dtype=bool)
    for j in sorted(earlier):
        kept[j] = not any(kept[i] for i in earlier[j])
    return np.flatnonzero(kept)


def has_near_copy_in(query: np.ndarray, ref: np.ndarray, threshold: float) -> np.ndarray:
    """(len(query),) bool: whether each query row has a near-duplicate among the rows of ``ref``."""
    out = np.zeros(len(query), dtype=bool)
    out[near_pairs(query, ref, threshold)[:, 0]] = True
    return out

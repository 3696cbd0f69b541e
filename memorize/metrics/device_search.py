"""Both criteria's search on a torch device, end to end: the ``torch-cuda`` and ``torch-cpu`` backends.

The host path (FAISS, :mod:`memorize.metrics.search`) hashes the training rows for exact duplicates,
searches in float32 and re-ranks the candidates in float64, the first and last step on the CPU. Here
all three run on ``device``, the training set streamed to it ``TORCH_BASE_CHUNK`` rows at a time
(inputs already on the device are sliced, not copied):

- :func:`knn_on_device`: squared L2 ``|q|^2 - 2 q.b + |b|^2`` or inner products, full float32 (no TF32),
  a running top-k merged with each chunk's.
- :func:`distinct_rows`: the first occurrence of every distinct row (exact bit equality). Each row gets
  a 64-bit fingerprint ``sum_j bits_j * m_j mod 2^64`` with random odd multipliers ``m_j`` (two rows that
  differ collide with probability about 2^-64); rows with equal fingerprints are then compared bit for
  bit, and a collision (unequal rows, equal fingerprints) falls back to the host's exact hashing.
- :func:`exact_l2` / :func:`exact_cosine`: the candidates' distances (cosines) in float64 from the
  rows as given, one training chunk at a time: every candidate that falls in the chunk, then the next.

A training set in host memory of at most ``DEVICE_RESIDENT_BYTES`` is sent to the device once
(:func:`resident`) and the three passes slice it there; a larger one is sent chunk by chunk in each
pass. Device memory: the queries (own precision plus a float32 copy), that resident copy or one
training chunk, the search's O(batch x chunk) scores and the re-ranking's ``DEVICE_RERANK_ELEMENTS``
float64 values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

# Training rows sent to the device at a time (at 3,072 dims, 192 MiB of float32).
TORCH_BASE_CHUNK = 16384
# Float64 values per re-ranking step on the device (256 MiB).
DEVICE_RERANK_ELEMENTS = 1 << 25
# Training sets up to this size go to the device once; larger ones are streamed in every pass.
DEVICE_RESIDENT_BYTES = 4 << 30
# Seed of the fingerprint multipliers (fixed: a fingerprint is a pure function of the row).
FINGERPRINT_SEED = 20261124


def as_tensor_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(K, ...) array or tensor -> (K, D) tensor in its own float precision, where it lives (no copy if
    possible; integers become float64, as on the host path)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if not t.is_floating_point():
        t = t.double()
    return t.reshape(len(t), math.prod(t.shape[1:]))  # -1 is ambiguous for K = 0


def resident(base: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``base`` on ``device`` if it is there already or fits ``DEVICE_RESIDENT_BYTES`` (one copy, which
    every pass then slices), else as it is (each pass streams it in chunks)."""
    if base.numel() * base.element_size() <= DEVICE_RESIDENT_BYTES:
        return base.to(device)
    return base


def base_chunks(base: torch.Tensor, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, rows)`` of ``base`` on ``device``, ``TORCH_BASE_CHUNK`` rows at a time."""
    for start in range(0, len(base), TORCH_BASE_CHUNK):
        yield start, base[start:start + TORCH_BASE_CHUNK].to(device, non_blocking=True)


@contextmanager
def ieee_float32_matmul() -> Iterator[None]:
    """Within the block, float32 CUDA matrix products run in full float32 (no TF32), whatever the caller's
    global setting, and afterwards that setting is back as it was. Torch has two APIs for it (the legacy
    ``allow_tf32`` and ``fp32_precision``) and refuses to read the legacy flag once both were used; the
    block sets the legacy one, which both read consistently, and restores through the API the caller's
    state reads back through."""
    matmul = torch.backends.cuda.matmul
    try:
        legacy = matmul.allow_tf32  # readable unless the caller set TF32 through fp32_precision
    except RuntimeError:
        legacy = None
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        if legacy is not None:
            matmul.allow_tf32 = legacy
        if precision is not None and (legacy is None or precision == "none"):
            matmul.fp32_precision = precision


@torch.no_grad()
def knn_on_device(queries: torch.Tensor, base: torch.Tensor, k: int, l2: bool, device: torch.device,
                  batch_size: int, base_norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest rows of ``base`` for every row of ``queries`` (float32, on ``device``): squared L2
    (smallest first) or inner products (largest first). ``base_norms`` (N,), for inner products: each
    chunk is divided by its rows' norms first (cosine search). Returns ``(values, indices)`` on the device.

    Queries go in batches of ``batch_size``; each training chunk is sent once and compared with every batch.
    """
    batches = list(queries.split(batch_size))
    sq_norms = [q.square().sum(1, keepdim=True) for q in batches] if l2 else [None] * len(batches)
    best = [(torch.empty((len(q), 0), device=device), torch.empty((len(q), 0), dtype=torch.int64, device=device))
            for q in batches]
    with ieee_float32_matmul():
        for start, chunk in base_chunks(base, device):
            if base_norms is not None:
                chunk = chunk.double() / base_norms[start:start + len(chunk), None]
            b = chunk.float()
            b_sq = b.square().sum(1) if l2 else None
            for i, (q, q_sq) in enumerate(zip(batches, sq_norms)):
                scores = torch.addmm(b_sq, q, b.T, alpha=-2).add_(q_sq) if l2 else q @ b.T
                val, idx = scores.topk(min(k, len(b)), dim=1, largest=not l2)
                vals, order = torch.cat([best[i][0], val], 1).topk(min(k, best[i][0].shape[1] + len(b)), dim=1,
                                                                   largest=not l2)
                best[i] = (vals, torch.cat([best[i][1], idx + start], 1).gather(1, order))
    return torch.cat([v for v, _ in best]), torch.cat([i for _, i in best])


def _bits(rows: torch.Tensor) -> torch.Tensor:
    """The rows' bit patterns as int64 (float64: itself; float32/16: sign-extended)."""
    width = {8: torch.int64, 4: torch.int32, 2: torch.int16}[rows.element_size()]
    return rows.contiguous().view(width).long()


@torch.no_grad()
def distinct_rows(base: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Ascending indices of the first occurrence of every distinct row of ``base`` (exact bit equality,
    as :func:`memorize.data.subsets.unique_indices`), int64 on ``device``."""
    generator = torch.Generator().manual_seed(FINGERPRINT_SEED)
    multipliers = (torch.randint(-2**62, 2**62, (base.shape[1],), generator=generator) | 1).to(device)
    parts = [(_bits(chunk) * multipliers).sum(1) for _, chunk in base_chunks(base, device)]
    fingerprint = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=device)  # no rows: none
    value, order = torch.sort(fingerprint, stable=True)  # equal fingerprints: ascending index
    starts = torch.ones(len(value), dtype=torch.bool, device=device)
    starts[1:] = value[1:] != value[:-1]
    first = torch.empty_like(order)
    first[order] = order[starts][starts.cumsum(0) - 1]  # each row's first row with its fingerprint
    index = torch.arange(len(base), device=device)
    repeated = (first != index).nonzero().squeeze(1)
    if len(repeated):
        a, b = (base[i.to(base.device)].to(device) for i in (repeated, first[repeated]))
        if not torch.equal(_bits(a), _bits(b)):  # a fingerprint collision: settle it exactly on the host
            from memorize.data.subsets import unique_indices

            return torch.from_numpy(unique_indices(base.cpu())).to(device)
    return (first == index).nonzero().squeeze(1)


def _candidate_pairs(candidates: torch.Tensor, start: int, stop: int, dim: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(query rows, candidate slots)`` of every candidate index in ``[start, stop)``, in steps of about
    ``DEVICE_RERANK_ELEMENTS / dim`` pairs."""
    rows, slots = ((candidates >= start) & (candidates < stop)).nonzero(as_tuple=True)
    step = max(1, DEVICE_RERANK_ELEMENTS // max(1, dim))
    for s in range(0, len(rows), step):
        yield rows[s:s + step], slots[s:s + step]


@torch.no_grad()
def exact_l2(queries: torch.Tensor, base: torch.Tensor, candidates: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float64 ``||q_i - b_{candidates[i, j]}||`` from explicit differences, (Q, k) on ``device``.
    ``queries`` on the device and ``base`` in their own precision (not the float32 copies searched)."""
    out = torch.empty(candidates.shape, dtype=torch.float64, device=device)
    for start, chunk in base_chunks(base, device):
        for rows, slots in _candidate_pairs(candidates, start, start + len(chunk), base.shape[1]):
            diff = queries[rows].double() - chunk[candidates[rows, slots] - start].double()
            out[rows, slots] = diff.square().sum(1).sqrt()
    return out


@torch.no_grad()
def exact_cosine(queries: torch.Tensor, base: torch.Tensor, candidates: torch.Tensor, query_norms: torch.Tensor,
                 base_norms: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float64 ``<q_i, b_j> / (|q_i| |b_j|)`` for ``j = candidates[i]``, (Q, k) on ``device``, from the rows
    as given and their float64 norms."""
    out = torch.empty(candidates.shape, dtype=torch.float64, device=device)
    for start, chunk in base_chunks(base, device):
        for rows, slots in _candidate_pairs(candidates, start, start + len(chunk), base.shape[1]):
            j = candidates[rows, slots]
            dots = (queries[rows].double() * chunk[j - start].double()).sum(1)
            out[rows, slots] = dots / (query_norms[rows] * base_norms[j])
    return out


@torch.no_grad()
def row_norms(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float64 L2 norms of the rows of ``x`` on ``device``, a chunk at a time."""
    return torch.cat([chunk.double().norm(dim=1) for _, chunk in base_chunks(x, device)]) if len(x) else \
        torch.zeros(0, dtype=torch.float64, device=device)


def best_by_exact(candidates: torch.Tensor, exact: torch.Tensor, count: int,
                  descending: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` best candidates per row by exact value (ascending, or descending for similarities),
    ties broken by training index: ``(indices, values)``, each (Q, count)."""
    by_index = candidates.argsort(stable=True, dim=1)
    candidates, exact = candidates.gather(1, by_index), exact.gather(1, by_index)
    order = exact.argsort(stable=True, dim=1, descending=descending)[:, :count]
    return candidates.gather(1, order), exact.gather(1, order)

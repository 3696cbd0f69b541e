"""Exact k-nearest-neighbour search, in query batches, with exact re-ranking.

Backends (:func:`search_backend` picks one):

- ``faiss-cpu``: FAISS's brute-force ``knn`` (the kernel behind ``IndexFlatL2`` /
  ``IndexFlatIP`` search, without copying the database into an index).
- ``faiss-gpu``: ``faiss.knn_gpu``, where faiss-gpu is installed and sees a GPU.
- ``torch-cuda``: a float32 matrix product and ``topk`` on the GPU, for GPUs that
  faiss-gpu does not serve (PyPI's faiss-gpu-cu12 wheels are built for compute
  capability 7.0-8.9 only: no H100). ``torch-cpu`` is the same code on the CPU,
  kept for tests and comparisons. With these two, the criteria run end to end on
  the device (:mod:`memorize.metrics.device_search`).

The training set is held once, as the caller's float32 array; queries go in
batches (for torch, the queries go to the device and the training set follows in
chunks), so memory is bounded by the batch (torch: by the queries).

The matrix-product expansion ``|a|^2 - 2ab + |b|^2`` that FAISS uses loses
digits for near-copies (and the nearest/second-nearest ratio is sensitive to
it), so :func:`exact_l2` recomputes the candidates' distances in float64 from
explicit differences before any criterion is applied.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from memorize.metrics.device_search import knn_on_device


def as_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K, ...) array or tensor -> (K, D) numpy rows in their own float precision (no copy if possible)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x.reshape(len(x), math.prod(x.shape[1:]))  # -1 is ambiguous for K = 0


def as_float32_rows(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K, ...) array or tensor -> C-contiguous float32 (K, D), without a copy when already so."""
    return np.ascontiguousarray(as_rows(x), dtype=np.float32)


BACKENDS = ("faiss-cpu", "faiss-gpu", "torch-cuda", "torch-cpu")


def search_backend(device: torch.device | str | None = None) -> str:
    """The search for ``device``: ``faiss-cpu`` on the CPU; on a GPU, ``faiss-gpu`` where faiss-gpu sees
    one, else ``torch-cuda``, and for a numbered GPU ``torch-cuda:N`` (that GPU exactly). ``None``: the
    fastest there is (a GPU where there is one)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        return "faiss-cpu"
    if device.index is not None:
        return f"torch-cuda:{device.index}"
    if hasattr(faiss, "knn_gpu") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        return "faiss-gpu"
    return "torch-cuda"


def check_backend(backend: str) -> str:
    """``backend`` if it names a search (one of ``BACKENDS``, or ``torch-cuda:N``), else a ValueError."""
    if backend not in BACKENDS and not re.fullmatch(r"torch-cuda:\d+", backend):
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)} or torch-cuda:N, got {backend!r}")
    return backend


_GPU_RESOURCES = None


def _knn_batch(queries: np.ndarray, base: np.ndarray, k: int, metric: int, backend: str) -> tuple[np.ndarray, np.ndarray]:
    global _GPU_RESOURCES
    if backend == "faiss-gpu":
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        return faiss.knn_gpu(_GPU_RESOURCES, queries, base, k, metric=metric)
    return faiss.knn(queries, base, k, metric=metric)


@dataclass
class Neighbours:
    """``distances`` (Q, k): squared L2 (``l2``) or inner products (``ip``) as FAISS returns them;
    ``indices`` (Q, k) into the base; ``backend`` names the search used."""

    distances: np.ndarray
    indices: np.ndarray
    backend: str


def knn(queries: np.ndarray, base: np.ndarray, k: int, metric: str = "l2", batch_size: int = 8192,
        backend: str | None = None) -> Neighbours:
    """Exact k nearest neighbours of each query row in ``base`` (both float32 (·, D)).

    ``metric``: ``l2`` (smallest squared distance first) or ``ip`` (largest inner product first).
    ``backend``: one of ``BACKENDS``; default :func:`search_backend`.
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric: expected 'l2' or 'ip', got {metric!r}")
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the base has {base.shape[1]}")
    k = min(k, len(base))
    backend = check_backend(backend or search_backend())
    if backend.startswith("torch-"):
        device = torch.device(backend.removeprefix("torch-"))
        values, indices = knn_on_device(torch.from_numpy(queries).to(device), torch.from_numpy(base), k,
                                        metric == "l2", device, batch_size)
        return Neighbours(values.cpu().numpy(), indices.cpu().numpy(), backend)
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    distances = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        stop = start + batch_size
        distances[start:stop], indices[start:stop] = _knn_batch(queries[start:stop], base, k, faiss_metric, backend)
    return Neighbours(distances, indices, backend)


# Float64 elements per re-ranking chunk (32 MiB): bounds exact_l2's working memory.
RERANK_ELEMENTS = 1 << 22


def exact_l2(queries: np.ndarray, base: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Float64 L2 distances ``||q_i - b_{candidates[i, j]}||`` from explicit differences, (Q, k).

    Pass the caller's own arrays (float64 stays float64), not the float32 copies FAISS
    searched. Works in chunks of about ``RERANK_ELEMENTS`` float64 values.
    """
    out = np.empty(candidates.shape, dtype=np.float64)
    for s in _rerank_chunks(candidates.shape, queries.shape[1]):
        diff = queries[s, None, :].astype(np.float64) - base[candidates[s]]
        out[s] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
    return out


def exact_cosine(queries: np.ndarray, base: np.ndarray, candidates: np.ndarray, query_norms: np.ndarray,
                 base_norms: np.ndarray) -> np.ndarray:
    """Float64 cosine similarities ``<q_i, b_j> / (|q_i| |b_j|)`` for ``j = candidates[i]``, (Q, k),
    from the caller's own arrays and their float64 norms, in bounded chunks."""
    out = np.empty(candidates.shape, dtype=np.float64)
    for s in _rerank_chunks(candidates.shape, queries.shape[1]):
        dots = np.einsum("qd,qkd->qk", queries[s].astype(np.float64), base[candidates[s]].astype(np.float64))
        out[s] = dots / (query_norms[s, None] * base_norms[candidates[s]])
    return out


def _rerank_chunks(shape: tuple[int, int], dim: int):
    """Row slices of about RERANK_ELEMENTS float64 values each (rows x candidates x dim)."""
    chunk = max(1, RERANK_ELEMENTS // max(1, shape[1] * dim))
    return (slice(s, s + chunk) for s in range(0, shape[0], chunk))

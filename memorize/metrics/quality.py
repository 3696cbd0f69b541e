"""Sample quality and coverage against held-out images, on features (one row per image).

- :func:`frechet_distance` (FID; Heusel et al. 2017): the Frechet distance between Gaussians fitted
  to the two feature sets.
- :func:`kernel_distance` (KID; Binkowski et al. 2018): the unbiased estimate of the squared maximum
  mean discrepancy under the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``.
- :func:`precision_recall` (improved precision and recall; Kynkaanniemi et al. 2019): the share of
  samples inside the real images' k-NN balls, and of real images inside the samples' k-NN balls.

Every function streams over row chunks of the feature sets, so memory is bounded by the chunk size
(times the other set's row count for precision/recall), whatever the set sizes. Matrix products run
in float32 through torch on ``device`` (as the exact search does); sums are accumulated in float64.

Matrix products of ``n x d`` features each function needs (the cost, see ``benchmarks/quality.py``):

- FID: the two feature covariances (``X^T X``, ``Y^T Y``: ``(n + m) d^2`` multiply-adds) and an
  eigendecomposition of two ``d x d`` matrices;
- KID: the three kernel matrices ``X X^T``, ``Y Y^T``, ``X Y^T`` (the symmetric two by their upper
  block triangle only);
- precision/recall: the within-set k-NN radii (``X X^T``, ``Y Y^T``, by the exact search) and the
  cross distances ``X Y^T`` (once, serving both precision and recall).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memorize.metrics.device_search import ieee_float32_matmul
from memorize.metrics.search import as_float32_rows, knn

# Rows per chunk: a chunk of 4,096 rows against 10,000 is 160 MiB of float32.
CHUNK = 4096
# Rows per chunk of a covariance (the chunk is its only working memory: 16,384 x 512 is 32 MiB).
MOMENT_CHUNK = 16384


def _rows(x: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return torch.from_numpy(as_float32_rows(x)).to(device)


@ieee_float32_matmul()  # full float32 on a GPU even where the caller enables TF32
def feature_moments(x: np.ndarray | torch.Tensor, device: str = "cpu", chunk: int = MOMENT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of the rows of ``x``, float64.

    Accumulated from float32 chunks centred on ``c`` (the float32 mean):
    ``sum_c (X_c - c)^T (X_c - c) - n (mu - c)(mu - c)^T``, over ``n - 1``.
    """
    rows = _rows(x, device)
    if len(rows) < 2:
        raise ValueError(f"a covariance needs at least 2 feature rows, got {len(rows)}")
    n = len(rows)
    centre = rows.sum(0) / n  # float32: near the mean; the remainder is corrected below
    cov = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
    offset = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    for s in range(0, n, chunk):
        c = rows[s:s + chunk] - centre
        cov += c.T @ c
        offset += c.sum(0)
    offset /= n  # mean - centre
    cov -= n * torch.outer(offset, offset)  # sum (x - mean)(x - mean)^T
    return (centre.double() + offset).cpu().numpy(), (cov / (n - 1)).cpu().numpy()


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues from
    rounding are clipped to 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _check_dimensions(x_dim: int, y_dim: int) -> None:
    if x_dim != y_dim:
        raise ValueError(f"feature sets have dimensions {x_dim} and {y_dim}")


def frechet_distance_gaussians(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), squared:

    ``||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^{1/2} C2 C1^{1/2})^{1/2})``
    (Dowson and Landau 1982; the FID of Heusel et al. 2017 on network features). The trace term is
    the sum of the square roots of the eigenvalues of ``C1 C2``, taken from the symmetric
    ``L^T C2 L`` (``C1 = L L^T``, Cholesky), or ``C1^{1/2} C2 C1^{1/2}`` where ``C1`` is singular
    (fewer samples than dimensions), so it stays real.
    """
    _check_dimensions(len(mu1), len(mu2))
    try:
        factor = np.linalg.cholesky(cov1)
    except np.linalg.LinAlgError:
        factor = _psd_sqrt(cov1)
    middle = factor.T @ cov2 @ factor
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt, 0.0))


def frechet_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, device: str = "cpu",
                     chunk: int = MOMENT_CHUNK) -> float:
    """FID between feature sets ``x`` (n, d) and ``y`` (m, d): :func:`frechet_distance_gaussians`
    of their means and unbiased covariances. Biased upwards for small sets (compare FIDs only at
    equal set sizes; KID is unbiased)."""
    return frechet_distance_gaussians(*feature_moments(x, device, chunk), *feature_moments(y, device, chunk))


def _kernel_sum(a: torch.Tensor, b: torch.Tensor | None, chunk: int) -> float:
    """``sum_{i, j} k(a_i, b_j)`` for the cubic kernel, in row blocks; ``b=None`` sums ``k(a_i, a_j)``
    over ``i != j`` using the symmetry (upper block triangle, off-diagonal blocks twice)."""
    one = torch.ones((), dtype=a.dtype, device=a.device)

    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (u v^T / d + 1)^3, in one product
        return torch.addmm(one, u, v.T, alpha=1 / a.shape[1]).pow_(3)

    total = 0.0
    if b is not None:
        for s in range(0, len(a), chunk):
            total += kernel(a[s:s + chunk], b).sum(dtype=torch.float64).item()
        return total
    for s in range(0, len(a), chunk):
        block = a[s:s + chunk]
        for t in range(s, len(a), chunk):
            k = kernel(block, a[t:t + chunk])
            if t == s:
                total += k.sum(dtype=torch.float64).item() - k.diagonal().sum(dtype=torch.float64).item()
            else:
                total += 2 * k.sum(dtype=torch.float64).item()
    return total


@ieee_float32_matmul()  # full float32 on a GPU even where the caller enables TF32
def kernel_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, device: str = "cpu",
                    chunk: int = CHUNK) -> float:
    """KID: unbiased squared MMD between feature sets ``x`` (n, d) and ``y`` (m, d) (Binkowski et al.
    2018, eq. 3, with ``k(a, b) = (a.b / d + 1)^3``):

    ``sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / (n m)``.

    Taken over the whole sets at once (Binkowski et al. average it over random subsets of 1,000 to
    give a spread; the expectation is the same). Its expectation is 0 when both sets are drawn from
    one distribution, so small negative values occur.
    """
    a, b = _rows(x, device), _rows(y, device)
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 rows in each set, got {n} and {m}")
    _check_dimensions(a.shape[1], b.shape[1])
    return (_kernel_sum(a, None, chunk) / (n * (n - 1)) + _kernel_sum(b, None, chunk) / (m * (m - 1))
            - 2 * _kernel_sum(a, b, chunk) / (n * m))


def knn_radii(x: np.ndarray, k: int, backend: str | None = None) -> np.ndarray:
    """Distance (float32 search) from each row of ``x`` to its ``k``-th nearest other row: the k-NN
    ball radius of Kynkaanniemi et al. 2019. Exact duplicates count as neighbours at distance 0."""
    rows = as_float32_rows(x)
    if len(rows) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} rows, got {len(rows)}")
    found = knn(rows, rows, k + 1, "l2", backend=backend)
    # Sorted distances include the row itself at 0; the (k+1)-th is the k-th other row.
    return np.sqrt(np.maximum(found.distances[:, k], 0.0))


@dataclass
class PrecisionRecall:
    """``precision``: share of samples inside some real image's k-NN ball; ``recall``: share of real
    images inside some sample's k-NN ball (Kynkaanniemi et al. 2019); per-row flags beside them."""

    precision: float
    recall: float
    k: int
    sample_inside: np.ndarray  # (m,) bool: sample j is inside the real manifold estimate
    real_inside: np.ndarray  # (n,) bool: real image i is inside the sample manifold estimate


@ieee_float32_matmul()  # full float32 on a GPU even where the caller enables TF32
def precision_recall(real: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor, k: int = 3,
                     device: str = "cpu", chunk: int = CHUNK, backend: str | None = None) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2) of ``samples`` (m, d) against
    ``real`` (n, d) features:

    ``precision = (1/m) sum_j 1[exists i: ||s_j - r_i|| <= NND_k(r_i)]``,
    ``recall = (1/n) sum_i 1[exists j: ||r_i - s_j|| <= NND_k(s_j)]``,

    where ``NND_k`` is the distance to the k-th nearest other member of the same set
    (:func:`knn_radii`, on the exact search; k = 3 in the paper). The cross distances are computed
    once, ``chunk`` samples at a time, and serve both.
    """
    r_np, s_np = as_float32_rows(real), as_float32_rows(samples)
    _check_dimensions(r_np.shape[1], s_np.shape[1])
    radius_r = torch.from_numpy(knn_radii(r_np, k, backend)).to(device)
    radius_s = torch.from_numpy(knn_radii(s_np, k, backend)).to(device)
    r, s = torch.from_numpy(r_np).to(device), torch.from_numpy(s_np).to(device)
    r_sq = r.square().sum(1)
    sample_inside = torch.zeros(len(s), dtype=torch.bool, device=device)
    real_inside = torch.zeros(len(r), dtype=torch.bool, device=device)
    for start in range(0, len(s), chunk):
        block = s[start:start + chunk]
        dist = torch.addmm(r_sq, block, r.T, alpha=-2).add_(block.square().sum(1, keepdim=True)).clamp_(min=0).sqrt_()
        sample_inside[start:start + chunk] = (dist <= radius_r).any(1)
        real_inside |= (dist <= radius_s[start:start + chunk, None]).any(0)
    sample_inside, real_inside = sample_inside.cpu().numpy(), real_inside.cpu().numpy()
    return PrecisionRecall(float(sample_inside.mean()), float(real_inside.mean()), k, sample_inside, real_inside)

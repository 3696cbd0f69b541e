"""Quality-metric benchmark: FID, KID and improved precision/recall against the bare matrix products
their formulas need, in the same process on the same features.

n real x m sample features of d dims (default 10,000 x 10,000 x 512, Gaussian). The baseline of each
metric is the set of float32 torch products it cannot do without (``memorize/metrics/quality.py``):

- FID: ``X^T X`` and ``Y^T Y`` (the covariances) and the eigenvalues of one symmetric ``d x d``
  matrix (``numpy.linalg.eigvalsh``: the least the trace of a matrix square root needs);
- KID: ``X X^T``, ``Y Y^T``, ``X Y^T`` (the kernel matrices; ours computes half of the symmetric two);
- precision/recall: ``X X^T``, ``Y Y^T`` (the within-set k-NN radii) and ``X Y^T`` (the cross distances).

The baselines are whole products, memory unbounded (three 10,000 x 10,000 float32 matrices: 1.2 GB);
ours run in chunks of ``quality.CHUNK`` rows. Peak memory is the resident set above the start.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import add_device_argument, measure, report, result_name
from memorize.metrics.quality import CHUNK, frechet_distance, kernel_distance, precision_recall


def bare_products(x: torch.Tensor, y: torch.Tensor, which: str) -> None:
    """The products a metric needs, whole, results discarded."""
    if which == "fid":
        xx = x.T @ x
        (y.T @ y, np.linalg.eigvalsh(xx.double().cpu().numpy()))
    else:
        (x @ x.T, y @ y.T, x @ y.T)


def run(n: int, m: int, d: int, device: str = "cpu", repeats: int = 2) -> list[dict]:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((n, d)).astype(np.float32)
    samples = (rng.standard_normal((m, d)) * 0.9 + 0.1).astype(np.float32)
    x, y = torch.from_numpy(real).to(device), torch.from_numpy(samples).to(device)
    backend = "torch-cuda" if torch.device(device).type == "cuda" else None
    metrics = [
        ("fid", "X^T X, Y^T Y, eigvalsh", lambda: frechet_distance(real, samples, device)),
        ("kid", "X X^T, Y Y^T, X Y^T", lambda: kernel_distance(real, samples, device)),
        ("precision_recall", "X X^T, Y Y^T, X Y^T", lambda: precision_recall(real, samples, 3, device, backend=backend)),
    ]
    rows = []
    for name, products, ours in metrics:
        bare_products(x, y, name)  # warm up
        t_bare, mem_bare, _ = measure(lambda: bare_products(x, y, name), repeats, device)
        ours()
        t_ours, mem_ours, value = measure(ours, repeats, device)
        shown = f"{value.precision:.3f} / {value.recall:.3f}" if name == "precision_recall" else f"{value:.4g}"
        rows.append({"metric": name, "n": n, "m": m, "d": d, "products": products, "value": shown,
                     "bare_s": t_bare, "ours_s": t_ours, "x_bare": t_ours / t_bare,
                     "bare_peak_mb": mem_bare / 2**20, "ours_peak_mb": mem_ours / 2**20, "chunk": CHUNK})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--n", type=int, default=10_000, help="real (held-out) feature rows")
    parser.add_argument("--m", type=int, default=10_000, help="sample feature rows")
    parser.add_argument("--dim", type=int, default=512)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    rows = run(args.n, args.m, args.dim, args.device)
    return report(result_name("quality", args.device), rows,
                  "x_bare: our time / the bare float32 products the formula needs (same process, same features)")


if __name__ == "__main__":
    main()

"""Exact-search benchmark: memorization scoring against bare FAISS and other exact k-NN baselines.

Q queries x N training vectors x D dims (default 10,000 x 50,000 x 3,072, CIFAR-sized). Queries are
half noisy copies of training vectors (so the criterion has work to do), half fresh points. All
methods run in the same process on the same arrays; ratios are against bare FAISS (``faiss.knn``,
k = 4, the kernel behind ``IndexFlatL2.search``). Effective GFLOP/s = 2QND / time.
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np
import torch

from benchmarks.common import matmul_gflops, measure, report
from memorize.metrics import copy_similarity, nn_ratio


def make_data(q: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.uniform(-1, 1, size=(n, d)).astype(np.float32)
    copies = train[rng.integers(0, n, size=q // 2)] + rng.normal(0, 0.2, size=(q // 2, d)).astype(np.float32)
    fresh = rng.uniform(-1, 1, size=(q - q // 2, d)).astype(np.float32)
    return np.concatenate([copies, fresh]), train


def torch_cdist_topk(queries: np.ndarray, train: np.ndarray, k: int = 4, chunk: int = 2048):
    base = torch.from_numpy(train)
    out = []
    for s in range(0, len(queries), chunk):
        dist = torch.cdist(torch.from_numpy(queries[s:s + chunk]), base)
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def sklearn_brute(queries: np.ndarray, train: np.ndarray, k: int = 4):
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train).kneighbors(queries)


def run(q: int, n: int, d: int, baselines: bool = True) -> list[dict]:
    queries, train = make_data(q, n, d)
    flops = 2 * q * n * d
    rate = matmul_gflops(2048, min(n, 8192), d)
    methods = [("faiss.knn k=4 (bare)", lambda: faiss.knn(queries, train, 4)),
               ("nn_ratio (ours)", lambda: nn_ratio(queries, train)),
               ("copy_similarity pixel (ours)", lambda: copy_similarity(queries, train))]
    if baselines:
        methods += [("torch cdist+topk, chunks", lambda: torch_cdist_topk(queries, train)),
                    ("sklearn brute NearestNeighbors", lambda: sklearn_brute(queries, train))]
    rows, base_time = [], None
    for name, fn in methods:
        seconds, peak, _ = measure(fn)
        base_time = base_time or seconds
        rows.append({"method": name, "Q": q, "N": n, "D": d, "seconds": seconds, "gflops": flops / seconds / 1e9,
                     "x_bare_faiss": seconds / base_time, "peak_mem_MiB": peak / 2**20,
                     "matmul_gflops": rate})
    # agreement check: our nearest neighbours are FAISS's (exact search, exact re-ranking)
    ours, bare = nn_ratio(queries, train), faiss.knn(queries, train, 4)[1]
    agree = float(np.mean(ours.nearest == bare[:, 0]))
    print(f"# nearest neighbour agreement nn_ratio vs bare FAISS: {agree:.4f}; "
          f"memorized: {ours.memorized.mean():.3f}; inputs: {(queries.nbytes + train.nbytes) / 2**20:.0f} MiB")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--no-baselines", action="store_true", help="skip the torch and scikit-learn baselines")
    args = parser.parse_args(argv)
    return report("search", run(args.queries, args.train, args.dim, not args.no_baselines))


if __name__ == "__main__":
    main()

"""Exact-search benchmark: memorization scoring against bare FAISS and other exact k-NN baselines.

Q queries x N training vectors x D dims (default 10,000 x 50,000 x 3,072, CIFAR-sized). Queries are
half noisy copies of training vectors (so the criterion has work to do), half fresh points. All
methods run in the same process on the same arrays; ratios are against bare FAISS (``faiss.knn``,
k = 4, the kernel behind ``IndexFlatL2.search``). Effective GFLOP/s = 2QND / time.

``--device cuda`` times the GPU path instead (the ``torch-cuda`` search backend; PyPI's faiss-gpu
does not serve Hopper GPUs): ratios against torch ``cdist`` + ``topk`` on the GPU, with the
inputs starting in host memory for every method (and once more with them already on the GPU),
bare CPU FAISS on the same machine beside (``--no-baselines`` skips it), and the criteria's own
steps (duplicate check, float64 re-ranking) timed apart. ``--device cpu --torch`` runs the same
code with the ``torch-cpu`` backend, to check it without a GPU. The issue's target shape:
``--queries 50000 --train 50000 --dim 3072``.
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np
import torch

from benchmarks.common import add_device_argument, matmul_gflops, measure, report, result_name
from memorize.data.subsets import unique_indices
from memorize.metrics import copy_similarity, device_search, knn, nn_ratio
from memorize.metrics.search import exact_l2


def make_data(q: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.uniform(-1, 1, size=(n, d)).astype(np.float32)
    copies = train[rng.integers(0, n, size=q // 2)] + rng.normal(0, 0.2, size=(q // 2, d)).astype(np.float32)
    fresh = rng.uniform(-1, 1, size=(q - q // 2, d)).astype(np.float32)
    return np.concatenate([copies, fresh]), train


def torch_cdist_topk(queries: np.ndarray, train: np.ndarray, k: int = 4, chunk: int = 2048, device: str = "cpu"):
    base = torch.from_numpy(train).to(device)
    out = []
    for s in range(0, len(queries), chunk):
        dist = torch.cdist(torch.from_numpy(queries[s:s + chunk]).to(device), base)
        out.append(dist.topk(k, dim=1, largest=False).indices)
    return torch.cat(out).cpu()


def sklearn_brute(queries: np.ndarray, train: np.ndarray, k: int = 4):
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train).kneighbors(queries)


def run(q: int, n: int, d: int, baselines: bool = True) -> list[dict]:
    queries, train = make_data(q, n, d)
    rate = matmul_gflops(2048, min(n, 8192), d)
    methods = [("faiss.knn k=4 (bare)", lambda: faiss.knn(queries, train, 4)),
               ("nn_ratio (ours)", lambda: nn_ratio(queries, train)),
               ("copy_similarity pixel (ours)", lambda: copy_similarity(queries, train))]
    if baselines:
        methods += [("torch cdist+topk, chunks", lambda: torch_cdist_topk(queries, train)),
                    ("sklearn brute NearestNeighbors", lambda: sklearn_brute(queries, train))]
    rows = time_methods(methods, q, n, d, rate, "x_bare_faiss")
    # agreement check: our nearest neighbours are FAISS's (exact search, exact re-ranking)
    ours, bare = nn_ratio(queries, train), faiss.knn(queries, train, 4)[1]
    agree = float(np.mean(ours.nearest == bare[:, 0]))
    print(f"# nearest neighbour agreement nn_ratio vs bare FAISS: {agree:.4f}; "
          f"memorized: {ours.memorized.mean():.3f}; inputs: {(queries.nbytes + train.nbytes) / 2**20:.0f} MiB")
    return rows


def run_gpu(q: int, n: int, d: int, device: str = "cuda", baselines: bool = True) -> list[dict]:
    """The same shapes on a torch device: the torch backend (duplicate check, search and float64 re-ranking
    all on the device) against torch cdist + topk there."""
    queries, train = make_data(q, n, d)
    backend = f"torch-{device}"
    dev = torch.device(device)
    rate = matmul_gflops(8192, min(n, 8192), d, device=device)
    torch_cdist_topk(queries[:64], train[:4096], device=device)  # warm up CUDA, cuBLAS and the allocator
    both = lambda a, b: (nn_ratio(a, b, backend=backend), copy_similarity(a, b, backend=backend))  # noqa: E731
    queries_dev, train_dev = torch.from_numpy(queries).to(dev), torch.from_numpy(train).to(dev)
    candidates = knn(queries, train, 4, backend=backend).indices
    candidates_dev = torch.from_numpy(candidates).to(dev)
    methods = [(f"torch cdist+topk on {device}, chunks (bare)", lambda: torch_cdist_topk(queries, train, device=device)),
               (f"knn {backend}, search only (ours)", lambda: knn(queries, train, 4, backend=backend)),
               (f"nn_ratio {backend} (ours)", lambda: nn_ratio(queries, train, backend=backend)),
               (f"copy_similarity pixel {backend} (ours)", lambda: copy_similarity(queries, train, backend=backend)),
               (f"both criteria {backend} (ours)", lambda: both(queries, train)),
               (f"both criteria {backend}, inputs already on {device} (ours)", lambda: both(queries_dev, train_dev)),
               (f"  step: duplicate check on {device}", lambda: device_search.distinct_rows(train_dev, dev)),
               (f"  step: float64 re-rank of 4 candidates on {device}",
                lambda: device_search.exact_l2(queries_dev, train_dev, candidates_dev, dev)),
               ("  host path's duplicate check (CPU)", lambda: unique_indices(torch.from_numpy(train))),
               ("  host path's float64 re-rank (CPU)", lambda: exact_l2(queries, train, candidates))]
    if baselines:
        methods.append(("faiss.knn k=4 on this machine's CPU", lambda: faiss.knn(queries, train, 4)))
    knn(queries[:64], train[:4096], 4, backend=backend)  # warm up the search kernels on a slice
    rows = time_methods(methods, q, n, d, rate, "x_bare_gpu", device=device, repeats=3)
    # correctness: the device path gives the host path's answers (both exact, both re-ranked in float64)
    gpu, cpu = nn_ratio(queries, train, backend=backend), nn_ratio(queries, train, backend="faiss-cpu")
    cos_gpu, cos_cpu = (copy_similarity(queries, train, backend=b) for b in (backend, "faiss-cpu"))
    print(f"# {backend} vs faiss-cpu: nearest agree {np.mean(gpu.nearest == cpu.nearest):.4f}, second agree "
          f"{np.mean(gpu.second == cpu.second):.4f}, memorized agree {np.mean(gpu.memorized == cpu.memorized):.4f}, "
          f"max |ratio diff| {np.max(np.abs(gpu.ratio - cpu.ratio)):.2e}; copy_similarity nearest agree "
          f"{np.mean(cos_gpu.nearest == cos_cpu.nearest):.4f}, max |sim diff| "
          f"{np.max(np.abs(cos_gpu.similarity - cos_cpu.similarity)):.2e}; memorized: {gpu.memorized.mean():.3f}")
    return rows


def time_methods(methods, q: int, n: int, d: int, rate: float, ratio_name: str, device: str = "cpu",
                 repeats: int = 1) -> list[dict]:
    """Time each (name, fn), best of ``repeats``; the first is the baseline of the ratio column."""
    rows, base_time = [], None
    for name, fn in methods:
        seconds, peak, _ = measure(fn, repeats, device=device)
        base_time = base_time or seconds
        rows.append({"method": name, "Q": q, "N": n, "D": d, "seconds": seconds, "gflops": 2 * q * n * d / seconds / 1e9,
                     ratio_name: seconds / base_time, "peak_mem_MiB": peak / 2**20, "matmul_gflops": rate})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the torch and scikit-learn baselines (on a GPU: CPU FAISS)")
    parser.add_argument("--torch", action="store_true", help="with --device cpu: time the torch-cpu backend's "
                        "device path as the GPU run would (a check of the code, not a GPU figure)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.device != "cpu" or args.torch:
        return report(result_name("search", args.device) if args.device != "cpu" else "search_torch_cpu",
                      run_gpu(args.queries, args.train, args.dim, args.device, not args.no_baselines),
                      "peak memory: CUDA allocator peak (the CPU-side copies are not counted)")
    return report("search", run(args.queries, args.train, args.dim, not args.no_baselines))


if __name__ == "__main__":
    main()

"""Empirical-denoiser benchmark: throughput against bare matrix products of the same shape, and
peak memory as N grows.

The empirical denoiser of N training vectors evaluated at B queries costs two products,
``Q K^T`` (logits) and ``W V`` (weighted sum): 4BND flops. The baseline runs exactly those two
products on the same chunks without the softmax. Peak memory is measured during evaluation,
above the resident set before it (the training set and the denoiser's own copy excluded; that
copy is reported separately).

``--device cuda`` runs the same on the GPU (training set, denoiser and products there; peak memory
from the CUDA allocator) and checks the GPU outputs against the float64 denoiser on the CPU.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import add_device_argument, measure, report, result_name
from memorize.empirical import empirical_denoiser


def bare_products(queries: torch.Tensor, train: torch.Tensor, chunk: int) -> torch.Tensor:
    acc = torch.zeros_like(queries)
    for s in range(0, len(train), chunk):
        keys = train[s:s + chunk]
        acc += (queries @ keys.T) @ keys
    return acc


def run(b: int, n: int, d: int, chunk: int, sizes: list[int], device: str = "cpu") -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    repeats = 1 if device == "cpu" else 5  # GPU calls take milliseconds: best of five
    rows = []
    for dtype in (torch.float32, torch.float64):
        train = (torch.rand(n, d, generator=gen, dtype=dtype) * 2 - 1).to(device)
        queries = train[:b] + 0.5 * torch.randn(b, d, generator=gen, dtype=dtype).to(device)
        build_seconds, copy_bytes, den = measure(lambda: empirical_denoiser(train, chunk, dtype), device=device)
        den(queries[:8], 1.0)  # warm up
        bare_products(queries[:8], train[:chunk], chunk)
        bare, bare_peak, _ = measure(lambda: bare_products(queries, train, chunk), repeats, device)
        ours, peak, out = measure(lambda: den(queries, 1.0), repeats, device)
        flops = 4 * b * n * d
        row = {"case": f"D* vs bare products, {str(dtype).removeprefix('torch.')}", "B": b, "N": n, "D": d,
               "seconds": ours, "bare_seconds": bare, "x_bare": ours / bare, "gflops": flops / ours / 1e9,
               "peak_eval_MiB": peak / 2**20, "copy_MiB": copy_bytes / 2**20}
        if device != "cpu":  # the GPU result against the float64 denoiser on the CPU, for 16 queries, at
            # sigma = 1 (weights one-hot: the nearest image) and sigma = 30 (weights spread over many images)
            cpu_den, errors = empirical_denoiser(train.cpu().double(), chunk), []
            for sigma in (1.0, 30.0):
                ref = cpu_den(queries[:16].cpu().double(), sigma)
                got = den(queries[:16], sigma).cpu().double()
                errors.append(float((got - ref).norm() / ref.norm()))
            row["rel_err_vs_cpu_f64"] = max(errors)
            del cpu_den
        rows.append(row)
        del train, queries, den, out
    for size in sizes:  # memory as N grows (float32)
        train = (torch.rand(size, d, generator=gen) * 2 - 1).to(device)
        den = empirical_denoiser(train, chunk, torch.float32)
        queries = torch.randn(b, d, generator=gen).to(device)
        seconds, peak, _ = measure(lambda: den(queries, 1.0), repeats, device)
        rows.append({"case": "peak memory vs N, float32", "B": b, "N": size, "D": d, "seconds": seconds,
                     "bare_seconds": float("nan"), "x_bare": float("nan"), "gflops": 4 * b * size * d / seconds / 1e9,
                     "peak_eval_MiB": peak / 2**20, "copy_MiB": float("nan")})
        del train, den
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--chunk", type=int, default=4096, help="training vectors per streamed chunk")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    sizes = [args.train // 4, args.train // 2, args.train]
    rows = run(args.queries, args.train, args.dim, args.chunk, sizes, args.device)
    return report(result_name("empirical", args.device), rows)


if __name__ == "__main__":
    main()

"""Equivariant local score (ELS) machine benchmark: one evaluation against the bare matrix products its
formula needs, in the same run, and its peak memory as N grows.

At B query images of C x H x W and patch size s, the ELS machine compares B H W query patches (C s^2
numbers each) with the N H W patches of the training set: two products, ``Q K^T`` (logits) and
``W V`` (weighted centre pixels, C values per key), 2 B H W N H W (C s^2 + C) flops. The baseline runs
exactly those products on keys unfolded the same way, chunk by chunk, without the softmax. The LS
machine is timed beside it (B N H W C s^2 work: no products across positions), and the ELS machine
under the ``anywhere`` boundary rule (no mask). Peak memory is the resident set's rise during one
evaluation (the training set excluded).

``--device cuda`` runs the same on the GPU (peak memory from the CUDA allocator).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import add_device_argument, measure, report, result_name
from memorize.local_score import EquivariantLocalScoreDenoiser, LocalScoreDenoiser


def bare_products(queries: torch.Tensor, train: torch.Tensor, size: int, keys_per_chunk: int) -> torch.Tensor:
    """``Q K^T`` and ``W V`` on the same unfolded patches and chunks as the machine, no softmax."""
    c, h, w = train.shape[1:]
    unfold = lambda x: F.unfold(F.pad(x, (size // 2,) * 4), size).transpose(1, 2).reshape(-1, c * size * size)  # noqa: E731
    q = unfold(queries)
    acc = torch.zeros(len(q), c, dtype=q.dtype, device=q.device)
    per_chunk = max(1, keys_per_chunk // (h * w))
    for start in range(0, len(train), per_chunk):
        chunk = train[start:start + per_chunk]
        acc += (q @ unfold(chunk).T) @ chunk.permute(0, 2, 3, 1).reshape(-1, c)
    return acc


def run(b: int, n: int, shape: tuple[int, int, int], size: int, chunk: int, sizes: list[int],
        device: str = "cpu") -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    c, h, w = shape
    rows = []
    for dtype in (torch.float64, torch.float32):
        train = (torch.rand(n, c, h, w, generator=gen, dtype=dtype) * 2 - 1).to(device)
        queries = train[:b] + 0.5 * torch.randn(b, c, h, w, generator=gen, dtype=dtype).to(device)
        # the chunk fits one block of query rows (one pass over the keys), as in the machine's default use
        els = EquivariantLocalScoreDenoiser(train, size, chunk, dtype, max_logits=b * h * w * chunk)
        els(queries[:1], 1.0)  # warm up
        bare, _, _ = measure(lambda: bare_products(queries, train, size, chunk), repeats=3, device=device)
        ours, peak, _ = measure(lambda: els(queries, 1.0), repeats=3, device=device)
        anywhere = EquivariantLocalScoreDenoiser(train, size, chunk, dtype, max_logits=b * h * w * chunk,
                                                 boundary="anywhere")
        anywhere_seconds, _, _ = measure(lambda: anywhere(queries, 1.0), repeats=3, device=device)
        ls_seconds, ls_peak, _ = measure(lambda: LocalScoreDenoiser(train, size, dtype=dtype)(queries, 1.0),
                                         device=device)
        flops = 2 * b * h * w * n * h * w * (c * size * size + c)
        rows.append({"case": f"ELS vs bare products, {str(dtype).removeprefix('torch.')}", "B": b, "N": n,
                     "CHW": f"{c}x{h}x{w}", "s": size, "seconds": ours, "bare_seconds": bare, "x_bare": ours / bare,
                     "gflops": flops / ours / 1e9, "peak_eval_MiB": peak / 2**20,
                     "anywhere_x_bare": anywhere_seconds / bare, "ls_seconds": ls_seconds,
                     "ls_peak_MiB": ls_peak / 2**20})
    for count in sizes:  # memory as N grows: bounded by the chunk, not by N
        train = (torch.rand(count, c, h, w, generator=gen, dtype=torch.float64) * 2 - 1).to(device)
        queries = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(device)
        els = EquivariantLocalScoreDenoiser(train, size, chunk, max_logits=b * h * w * chunk)
        seconds, peak, _ = measure(lambda: els(queries, 1.0), device=device)
        rows.append({"case": "ELS peak memory vs N, float64", "B": b, "N": count, "CHW": f"{c}x{h}x{w}", "s": size,
                     "seconds": seconds, "peak_eval_MiB": peak / 2**20})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--queries", type=int, default=16, help="query images B")
    parser.add_argument("--train", type=int, default=1600, help="training images N")
    parser.add_argument("--shape", type=int, nargs=3, default=[1, 8, 8], metavar=("C", "H", "W"))
    parser.add_argument("--patch", type=int, default=5, help="patch size s")
    parser.add_argument("--chunk", type=int, default=8192, help="keys (training patches) per streamed chunk")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    sizes = [args.train // 4, args.train // 2, args.train]
    rows = run(args.queries, args.train, tuple(args.shape), args.patch, args.chunk, sizes, args.device)
    return report(result_name("local_score", args.device), rows)


if __name__ == "__main__":
    main()

"""The near-duplicate rule of ``data.dedup: near`` at a dataset's size, against a bare all-pairs product.

    .venv/bin/python -m benchmarks.near_duplicates [--images 60000] [--size 32] [--channels 3]

Random images (``--images`` of ``--channels`` x ``--size`` x ``--size``; CIFAR-10's 60,000 by default: the
search costs the same whatever the images hold): the descriptors (:func:`near_descriptors`), then the
rule itself (:func:`first_of_near_copies`: FAISS range search, float64 re-check, the greedy collapse),
against the baseline in the same run: every pair's cosine as float32 matrix products of the same
descriptors in row chunks, thresholded, nothing else. Reports seconds and the ratio.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import add_device_argument, measure, report
from memorize.data.near_duplicates import CHUNK, NEAR_THRESHOLD, first_of_near_copies, near_descriptors


def bare_pairs(desc: np.ndarray, threshold: float) -> int:
    """The number of pairs i < j at cosine >= ``threshold``: chunked float32 products, the baseline."""
    x = torch.from_numpy(desc.astype(np.float32))
    count = 0
    for start in range(0, len(x), CHUNK):
        cos = x[start:start + CHUNK] @ x.T
        rows = torch.arange(start, min(start + CHUNK, len(x)))[:, None]
        count += int(((cos >= threshold) & (torch.arange(len(x))[None] > rows)).sum())
    return count


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    add_device_argument(parser)  # accepted for benchmarks.run; the rule searches with FAISS on the CPU
    args = parser.parse_args(argv)
    images = torch.rand(args.images, args.channels, args.size, args.size,
                        generator=torch.Generator().manual_seed(0)) * 2 - 1
    t_desc, _, desc = measure(lambda: near_descriptors(images))
    t_rule, _, kept = measure(lambda: first_of_near_copies(desc, NEAR_THRESHOLD))
    t_bare, _, pairs = measure(lambda: bare_pairs(desc, NEAR_THRESHOLD))
    rows = [{"part": "descriptors", "images": args.images, "dims": desc.shape[1], "seconds": round(t_desc, 2)},
            {"part": "near rule (range search, re-check, collapse)", "images": args.images, "dims": desc.shape[1],
             "seconds": round(t_rule, 2), "dropped": args.images - len(kept),
             "x baseline": round(t_rule / t_bare, 2)},
            {"part": "baseline: all-pairs float32 products", "images": args.images, "dims": desc.shape[1],
             "seconds": round(t_bare, 2), "pairs": pairs}]
    return report("near_duplicates", rows, note=f"threshold {NEAR_THRESHOLD}, torch threads "
                                                f"{torch.get_num_threads()}")


if __name__ == "__main__":
    main()

"""Scoring samples made elsewhere, end to end: M PNG samples (C x H x W, default 50,000 at 3 x 32 x 32)
against N training images (default 50,000, an ``.npz`` dataset), with the time split into reading the
folder, the nearest-neighbour criterion's search, and the rest of ``memorize score`` (cosine criterion,
held-out calibration, quality on pixel features), beside bare FAISS (``faiss.knn``, k = 4) on the same
arrays in the same run. The PNGs are written first (not timed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import measure, report
from memorize.config import CellConfig, from_dict
from memorize.data.sample_files import read_samples_file
from memorize.external_cell import import_samples
from memorize.metrics import nn_ratio
from memorize.score import score_cell


def write_pngs(folder: Path, images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{k:06d}.png")


def run(m: int, n: int, shape: tuple[int, int, int], heldout: int) -> list[dict]:
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(n + heldout, *shape), dtype=np.uint8)
    samples = pool[rng.integers(0, n, size=m)].copy()  # copies of pool images (some training, some not) ...
    samples[m // 2:] = rng.integers(0, 256, size=(m - m // 2, *shape), dtype=np.uint8)  # ... and fresh ones
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "train.npz", images=pool)
        write_pngs(tmp / "pngs", samples)
        cfg = from_dict(CellConfig, {"data": {"name": "npz", "root": str(tmp / "train.npz"), "n_train": n,
                                              "n_heldout": heldout}})
        read, _, (images, _) = measure(lambda: read_samples_file(tmp / "pngs"))
        start = time.perf_counter()
        root, _ = import_samples(tmp / "pngs", tmp / "scored", cfg)  # reads again, then stores the array
        imported = time.perf_counter() - start
        start = time.perf_counter()
        summary = score_cell(root, "samples", features="pixel", threshold="auto", progress=False)
        scored = time.perf_counter() - start
        train = pool[:n].reshape(n, -1).astype(np.float32) / 127.5 - 1  # the subset's content, for the baselines
        flat = images.reshape(m, -1)
        ours, _, _ = measure(lambda: nn_ratio(flat, train))
        bare, _, _ = measure(lambda: faiss.knn(flat, train, 4))
    total = imported + scored
    return [{"M": m, "N": n, "CHW": "x".join(map(str, shape)), "read_folder_s": read, "import_s": imported,
             "score_s": scored, "total_s": total, "read_share": read / total, "nn_search_s": ours,
             "bare_faiss_s": bare, "nn_x_bare": ours / bare, "mem_nn": summary["nn"]["ratio"]}]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--heldout", type=int, default=1000)
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--device", default="cpu", help="only cpu: the reading side is what is measured")
    args = parser.parse_args(argv)
    return report("score_samples", run(args.samples, args.train, tuple(args.shape), args.heldout))


if __name__ == "__main__":
    main()

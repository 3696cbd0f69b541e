"""Scoring samples made elsewhere, end to end: M PNG samples (C x H x W, default 50,000 at 3 x 32 x 32)
against N training images (default 50,000, an ``.npz`` dataset), with the time split into reading the
folder, the nearest-neighbour criterion's search, and the rest of ``memorize score`` (cosine criterion,
held-out calibration, quality on pixel features), beside bare FAISS (``faiss.knn``, k = 4) on the same
arrays in the same run. The PNGs are written first (not timed). Memory: the peak anonymous resident
memory of importing and of scoring (:class:`AnonymousPeak`), beside the size of the samples as float32;
run it at two M to see how it grows with the sample count.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
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


class AnonymousPeak:
    """The peak of the process's anonymous resident memory (``RssAnon``: what the process itself holds;
    pages of memory-mapped files, which the kernel drops and re-reads at will, are left out), sampled
    every ``interval`` seconds in a thread while the ``with`` block runs; ``peak`` in bytes above the start."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def now() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.now() - self.start)

    def __enter__(self) -> AnonymousPeak:
        self.start = self.now()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now() - self.start)


def run(m: int, n: int, shape: tuple[int, int, int], heldout: int) -> list[dict]:
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, size=(n + heldout, *shape), dtype=np.uint8)
    samples = pool[rng.integers(0, n, size=m)].copy()  # copies of pool images (some training, some not) ...
    samples[m // 2:] = rng.integers(0, 256, size=(m - m // 2, *shape), dtype=np.uint8)  # ... and fresh ones
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "train.npz", images=pool)
        write_pngs(tmp / "pngs", samples)
        del samples
        cfg = from_dict(CellConfig, {"data": {"name": "npz", "root": str(tmp / "train.npz"), "n_train": n,
                                              "n_heldout": heldout}})
        start = time.perf_counter()
        with AnonymousPeak() as import_memory:
            root, _ = import_samples(tmp / "pngs", tmp / "scored", cfg)
        imported = time.perf_counter() - start
        start = time.perf_counter()
        with AnonymousPeak() as score_memory:
            summary = score_cell(root, "samples", features="pixel", threshold="auto", progress=False)
        scored = time.perf_counter() - start
        read, _, (images, _) = measure(lambda: read_samples_file(tmp / "pngs"))
        train = pool[:n].reshape(n, -1).astype(np.float32) / 127.5 - 1  # the subset's content, for the baselines
        flat = images.reshape(m, -1)
        ours, _, _ = measure(lambda: nn_ratio(flat, train))
        bare, _, _ = measure(lambda: faiss.knn(flat, train, 4))
    total = imported + scored
    return [{"M": m, "N": n, "CHW": "x".join(map(str, shape)), "read_folder_s": read, "import_s": imported,
             "score_s": scored, "total_s": total, "read_share": read / total, "nn_search_s": ours,
             "bare_faiss_s": bare, "nn_x_bare": ours / bare, "mem_nn": summary["nn"]["ratio"],
             "samples_mb": m * int(np.prod(shape)) * 4 / 2**20, "import_peak_anon_mb": import_memory.peak / 2**20,
             "score_peak_anon_mb": score_memory.peak / 2**20}]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--heldout", type=int, default=1000)
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--device", default="cpu", help="only cpu: the reading side is what is measured")
    args = parser.parse_args(argv)
    return report("score_samples", run(args.samples, args.train, tuple(args.shape), args.heldout))


if __name__ == "__main__":
    main()

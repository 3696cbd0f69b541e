"""Deterministic nested training subsets and a held-out split.

Recipe (fixed by the dataset and ``split_seed`` alone, never by N):

1. drop exact duplicates, keeping each image's first occurrence;
2. permute the remaining indices with ``numpy.random.default_rng(split_seed)``;
3. the last ``n_heldout`` of the permutation are held out; the rest is the pool;
4. optionally reorder the pool class by class, round robin (class-balanced);
5. subset N is the first N items of the pool (after skipping ``subset_offset`` items).

So subset N is contained in subset N' > N, and no subset ever draws a held-out
item. The chosen indices (into the loaded dataset) are saved with each cell so
its training set can be rebuilt exactly.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memorize.config import ConfigError, DataConfig
from memorize.data.datasets import Dataset
from memorize.io import atomic_savez


@dataclass
class Split:
    train: np.ndarray  # indices into the dataset, in subset order
    heldout: np.ndarray
    n_duplicates: int  # exact duplicates dropped before permuting
    train_labels: np.ndarray | None = None  # conditioning labels (None when data.labels == "none")
    num_classes: int = 0


def _row_digests(flat: np.ndarray) -> list[bytes]:
    """128-bit BLAKE2b digest of each row's bytes."""
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


# Rows hashed per thread task; hashlib releases the GIL for buffers of 2 KiB and more, so rows of
# images hash in parallel on all cores.
DIGEST_CHUNK = 4096


def unique_indices(data: torch.Tensor) -> np.ndarray:
    """Indices of the first occurrence of every distinct item (exact byte equality), ascending."""
    flat = data.reshape(len(data), -1).contiguous().numpy()
    chunks = [flat[s:s + DIGEST_CHUNK] for s in range(0, len(flat), DIGEST_CHUNK)]
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1) or 1) as pool:
        digests = [d for part in pool.map(_row_digests, chunks) for d in part]
    seen: set[bytes] = set()
    keep = []
    for i, digest in enumerate(digests):
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def round_robin_by_class(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Reorder so every prefix holds each class as evenly as the data allow.

    Takes the first remaining item of class 0, 1, ..., C-1 in turn (each class
    in its order of appearance in ``order``) until all are used.
    """
    per_class = [order[labels[order] == c] for c in np.unique(labels[order])]
    rank = np.concatenate([np.arange(len(idx)) for idx in per_class])
    cls = np.concatenate([np.full(len(idx), c) for c, idx in enumerate(per_class)])
    flat = np.concatenate(per_class)
    return flat[np.lexsort((cls, rank))]


def make_split(ds: Dataset, cfg: DataConfig) -> Split:
    """Pick the training subset and held-out set of ``cfg`` from ``ds`` (module recipe)."""
    keep = unique_indices(ds.data)
    available = len(keep) - cfg.n_heldout
    if cfg.subset_offset + cfg.n_train > available:
        offset = f" from data.subset_offset={cfg.subset_offset}" if cfg.subset_offset else ""
        raise ConfigError(f"data.n_train: {cfg.n_train}{offset} is more than the {available} distinct items of "
                          f"{cfg.name!r} left after holding out data.n_heldout={cfg.n_heldout} "
                          f"({len(ds.data) - len(keep)} exact duplicates removed)")
    order = keep[np.random.default_rng(cfg.split_seed).permutation(len(keep))]
    heldout, pool = order[available:], order[:available]
    if cfg.class_balanced:
        if ds.labels is None:
            raise ConfigError(f"data.class_balanced: dataset {cfg.name!r} has no labels")
        pool = round_robin_by_class(pool, ds.labels.numpy())
    train = pool[cfg.subset_offset: cfg.subset_offset + cfg.n_train]
    labels, num_classes = conditioning_labels(ds, cfg, train)
    return Split(train, heldout, len(ds.data) - len(keep), labels, num_classes)


def conditioning_labels(ds: Dataset, cfg: DataConfig, train: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Class labels the model is conditioned on (Gu et al. 2023 study true, random and unique labels).

    ``true``: the dataset's labels; ``random``: a fixed random class per dataset
    item (so nested subsets agree); ``unique``: item i of the subset is class i.
    """
    if cfg.labels == "none":
        return None, 0
    if cfg.labels == "unique":
        return np.arange(len(train)), len(train)
    if ds.labels is None:
        raise ConfigError(f"data.labels: dataset {cfg.name!r} has no labels, so {cfg.labels!r} labels are undefined")
    if cfg.labels == "true":
        return ds.labels.numpy()[train], ds.num_classes
    random_labels = np.random.default_rng([cfg.split_seed, 1]).integers(ds.num_classes, size=len(ds.data))
    return random_labels[train], ds.num_classes


def save_split(path: Path, split: Split) -> None:
    arrays = {"train": split.train, "heldout": split.heldout, "n_duplicates": np.asarray(split.n_duplicates),
              "num_classes": np.asarray(split.num_classes)}
    if split.train_labels is not None:
        arrays["train_labels"] = split.train_labels
    atomic_savez(path, **arrays)


def load_split(path: Path) -> Split:
    with np.load(path) as npz:
        labels = npz["train_labels"] if "train_labels" in npz else None
        return Split(npz["train"], npz["heldout"], int(npz["n_duplicates"]), labels, int(npz["num_classes"]))

"""Deterministic nested training subsets and a held-out split.

Recipe (fixed by the dataset and ``split_seed`` alone, never by N):

1. drop exact duplicates, keeping each image's first occurrence;
2. permute the remaining indices with ``numpy.random.default_rng(split_seed)`` (with ``data.dedup: near``
   then drop every image that is a near-copy of one kept before it in dataset order,
   :mod:`memorize.data.near_duplicates`: which images go does not depend on the permutation, and the
   others keep their order, so a subset is the exact rule's subset with its near-copies skipped);
3. the last ``n_heldout`` of the permutation are held out; the rest is the pool;
4. optionally reorder the pool class by class, round robin (class-balanced);
5. subset N is the first N items of the pool (after skipping ``subset_offset`` items).

So subset N is contained in subset N' > N, and no subset ever draws a held-out
item. The chosen indices (into the loaded dataset) are saved with each cell so
its training set can be rebuilt exactly.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memorize.config import ConfigError, DataConfig
from memorize.data.datasets import Dataset
from memorize.data.near_duplicates import first_of_near_copies, has_near_copy_in, near_descriptors
from memorize.io import atomic_savez


@dataclass
class Split:
    train: np.ndarray  # indices into the dataset, in subset order
    heldout: np.ndarray
    n_duplicates: int  # exact duplicates dropped before permuting
    train_labels: np.ndarray | None = None  # conditioning labels (None when data.labels == "none")
    num_classes: int = 0
    n_near_duplicates: int = 0  # near-copies dropped besides (data.dedup: near)


def _row_digests(flat: np.ndarray) -> list[bytes]:
    """128-bit BLAKE2b digest of each row's bytes."""
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


# Rows hashed per thread task; hashlib releases the GIL for buffers of 2 KiB and more, so rows of
# images hash in parallel on all cores.
DIGEST_CHUNK = 4096


def item_digests(data: torch.Tensor) -> list[bytes]:
    """Each item's 128-bit BLAKE2b digest of its bytes, hashed in threads."""
    flat = data.reshape(len(data), math.prod(data.shape[1:])).contiguous().numpy()  # -1 is ambiguous for none
    chunks = [flat[s:s + DIGEST_CHUNK] for s in range(0, len(flat), DIGEST_CHUNK)]
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1) or 1) as pool:
        return [d for part in pool.map(_row_digests, chunks) for d in part]


def unique_indices(data: torch.Tensor, digests: list[bytes] | None = None) -> np.ndarray:
    """Indices of the first occurrence of every distinct item (exact byte equality), ascending."""
    digests = item_digests(data) if digests is None else digests
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


def read_index_file(path: str | Path, size: int) -> np.ndarray:
    """The dataset indices in ``path`` (``.npy``, or text with one integer per line), checked: whole numbers,
    each below ``size`` and none twice; errors name ``data.train_indices`` and the file."""
    path = Path(path)
    where = f"data.train_indices: {path}"
    try:
        raw = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: not a list of indices (.npy, or one integer per line): "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    raw = np.asarray(raw)
    if raw.ndim != 1 or raw.size == 0 or not np.issubdtype(raw.dtype, np.number) or \
            not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
        raise ConfigError(f"{where}: expected a non-empty list of whole numbers, got shape {raw.shape} "
                          f"of {raw.dtype}")
    indices = raw.astype(np.int64)
    if indices.min() < 0 or indices.max() >= size:
        raise ConfigError(f"{where}: indices must lie in [0, {size}) for this dataset, got "
                          f"[{indices.min()}, {indices.max()}]")
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{where}: index {values[counts > 1][0]} appears {counts[counts > 1][0]} times")
    return indices


# Positions in ``keep`` that survive the near rule, by the content of the kept images and the threshold: the
# cells of one process (a pack, a slot's cells) run the search, quadratic in the dataset's size, once.
_NEAR_SURVIVORS: dict[tuple[str, float], np.ndarray] = {}


def near_survivors(data: torch.Tensor, keep: np.ndarray, digests: list[bytes], threshold: float) -> np.ndarray:
    """:func:`memorize.data.near_duplicates.first_of_near_copies` of ``data[keep]``, kept in the process by the
    kept images' content (their digests, in order) and ``threshold``."""
    content = hashlib.blake2b(b"".join(digests[i] for i in keep), digest_size=16).hexdigest()
    key = (content, float(threshold))
    if key not in _NEAR_SURVIVORS:
        if len(_NEAR_SURVIVORS) >= 4:
            _NEAR_SURVIVORS.pop(next(iter(_NEAR_SURVIVORS)))
        _NEAR_SURVIVORS[key] = first_of_near_copies(near_descriptors(data[keep]), threshold)
    return _NEAR_SURVIVORS[key].copy()


def heldout_count(cfg: DataConfig) -> int:
    """How many items the dataset holds back: ``data.n_heldout``, or none where the held-out images come
    from files (``data.heldout_path``), which then serve instead."""
    return 0 if cfg.heldout_path is not None else cfg.n_heldout


def make_split(ds: Dataset, cfg: DataConfig) -> Split:
    """Pick the training subset and held-out set of ``cfg`` from ``ds`` (module recipe; with
    ``data.train_indices`` the subset is the file's, and the held-out items are the last ``n_heldout`` of
    the permutation among the images whose content no training image has). With ``data.heldout_path``
    the dataset holds nothing back (:func:`heldout_count`); the subsets are the same, since they are
    drawn from the front of the permutation."""
    if cfg.train_indices is not None:
        return _indexed_split(ds, cfg)
    digests = item_digests(ds.data)
    keep = unique_indices(ds.data, digests)
    n_exact = len(ds.data) - len(keep)
    order = keep[np.random.default_rng(cfg.split_seed).permutation(len(keep))]
    n_near = 0
    if cfg.dedup == "near":  # the survivors keep their places in the permutation of the exact rule
        survivors = keep[near_survivors(ds.data, keep, digests, cfg.near_threshold)]
        n_near, keep, order = len(keep) - len(survivors), survivors, order[np.isin(order, survivors)]
    n_heldout = heldout_count(cfg)
    available = len(keep) - n_heldout
    near = f", {n_near} near-copies" if cfg.dedup == "near" else ""
    if available <= 0:
        raise ConfigError(f"data.n_heldout: {n_heldout} held-out items leave none of the {len(keep)} distinct items "
                          f"of {cfg.name!r} to train on ({n_exact} exact duplicates{near} removed)")
    if cfg.subset_offset + cfg.n_train > available:
        offset = f" from data.subset_offset={cfg.subset_offset}" if cfg.subset_offset else ""
        raise ConfigError(f"data.n_train: {cfg.n_train}{offset} is more than the {available} distinct items of "
                          f"{cfg.name!r} left after holding out data.n_heldout={n_heldout} "
                          f"({n_exact} exact duplicates{near} removed)")
    heldout, pool = order[available:], order[:available]
    if cfg.class_balanced:
        if ds.labels is None:
            raise ConfigError(f"data.class_balanced: dataset {cfg.name!r} has no labels")
        pool = round_robin_by_class(pool, ds.labels.numpy())
    train = pool[cfg.subset_offset: cfg.subset_offset + cfg.n_train]
    labels, num_classes = conditioning_labels(ds, cfg, train)
    return Split(train, heldout, n_exact, labels, num_classes, n_near)


def _indexed_split(ds: Dataset, cfg: DataConfig) -> Split:
    train = read_index_file(cfg.train_indices, len(ds.data))
    if len(train) != cfg.n_train:
        raise ConfigError(f"data.n_train: {cfg.n_train}, but data.train_indices ({cfg.train_indices}) lists "
                          f"{len(train)} images; set data.n_train={len(train)}")
    digests = item_digests(ds.data)
    keep = unique_indices(ds.data, digests)
    seen = {digests[i] for i in train}
    order = keep[np.random.default_rng(cfg.split_seed).permutation(len(keep))]
    unseen = np.asarray([i for i in order if digests[i] not in seen], dtype=np.int64)
    n_heldout = heldout_count(cfg)
    n_near = 0
    if cfg.dedup == "near" and n_heldout:
        near = has_near_copy_in(near_descriptors(ds.data[unseen]), near_descriptors(ds.data[train]),
                                cfg.near_threshold)
        n_near, unseen = int(near.sum()), unseen[~near]
    if n_heldout > len(unseen):
        what = "among" if cfg.dedup == "exact" else "among or near-copies of"
        raise ConfigError(f"data.n_heldout: {n_heldout}, but only {len(unseen)} distinct images of "
                          f"{cfg.name!r} are not {what} the {len(train)} of data.train_indices (or give held-out "
                          f"images of your own: data.heldout_path)")
    heldout = unseen[len(unseen) - n_heldout:]
    labels, num_classes = conditioning_labels(ds, cfg, train)
    return Split(train, heldout, len(ds.data) - len(keep), labels, num_classes, n_near)


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
    if split.n_near_duplicates:  # absent under exact de-duplication, so those files stay as they were
        arrays["n_near_duplicates"] = np.asarray(split.n_near_duplicates)
    if split.train_labels is not None:
        arrays["train_labels"] = split.train_labels
    atomic_savez(path, **arrays)


def load_split(path: Path) -> Split:
    with np.load(path) as npz:
        labels = npz["train_labels"] if "train_labels" in npz else None
        near = int(npz["n_near_duplicates"]) if "n_near_duplicates" in npz else 0
        return Split(npz["train"], npz["heldout"], int(npz["n_duplicates"]), labels, int(npz["num_classes"]), near)

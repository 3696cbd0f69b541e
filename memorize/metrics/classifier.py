"""Features for quality metrics where no pretrained network fits the data: a small classifier
trained on the dataset's labelled training pool (``features: classifier``).

FID on 8x8 digits or MNIST through an ImageNet network measures mostly the resizing; the usual
practice for such data is a classifier trained on the dataset itself, whose penultimate layer gives
the features. Ours:

- trained on the *pool*: every distinct image of the dataset except the held-out ones (the held-out
  images are the reference set of the quality metrics, and their labels only measure the
  classifier's accuracy);
- deterministic: a fixed recipe (:data:`RECIPE`) and seed, trained on one CPU thread, so every
  cell of a sweep, every re-run and every core count gives the same network;
- cached: trained once per dataset and held-out split, in ``CACHE/classifier-<key>.pt`` (a sweep's
  ``features/`` directory; a single cell's own), where the key digests the recipe, the pool's
  images and labels; a lock keeps parallel cells from training it twice.

Features: the 64 channels after the last convolution, averaged over space (ReLU, so non-negative).
On scikit-learn's digits it trains in about 6 s (one thread) and classifies 97.5% of the 197
held-out digits of the default sweep correctly. It is small on purpose: for CIFAR-10 and larger images, prefer a pretrained
network (``timm:...`` or ``torchvision:...`` specs) if one is on disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memorize.data.datasets import Dataset
from memorize.data.subsets import unique_indices
from memorize.io import atomic_torch_save
from memorize.metrics.embedders import Embedder, EmbedderError
from memorize.progress import progress_bar

# What the cache key digests besides the data: change any value and the classifier is retrained.
RECIPE = {"version": 2, "widths": [16, 32, 64], "steps": 600, "batch_size": 128, "lr": 1e-3,
          "weight_decay": 1e-4, "seed": 0}
HALF = (0.5, 0.5, 0.5)  # the embedder's normalization: [-1, 1] images stay in [-1, 1], 3 channels


class SmallClassifier(nn.Module):
    """conv3x3(3 -> w0), conv3x3(w0 -> w1), 2x2 max-pool, conv3x3(w1 -> w2), global average pool
    (the features), linear (the logits); ReLU after each convolution."""

    def __init__(self, num_classes: int, widths: list[int]):
        super().__init__()
        w0, w1, w2 = widths
        self.body = nn.Sequential(
            nn.Conv2d(3, w0, 3, padding=1), nn.ReLU(), nn.Conv2d(w0, w1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(w2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def training_pool(ds: Dataset, heldout: np.ndarray) -> np.ndarray:
    """Indices of every distinct labelled item of ``ds`` that is not held out, ascending."""
    keep = unique_indices(ds.data)
    return keep[~np.isin(keep, heldout)]


def cache_key(ds: Dataset, pool: np.ndarray) -> str:
    """Digest of the recipe and the pool's images and labels."""
    h = hashlib.blake2b(json.dumps(RECIPE, sort_keys=True).encode(), digest_size=8)
    h.update(ds.data[torch.from_numpy(pool)].numpy().tobytes())
    h.update(ds.labels[torch.from_numpy(pool)].numpy().tobytes())
    return h.hexdigest()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, device: str = "cpu",
                     progress: bool = False) -> SmallClassifier:
    """Train :class:`SmallClassifier` on ``images`` (K, C, H, W) in [-1, 1] with ``labels`` (K,): AdamW,
    cross-entropy, RECIPE's steps of random minibatches drawn by a seeded generator. On the CPU it runs
    on one thread: reductions split over threads round differently, and the network should not depend
    on the machine's core count."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        return _train(images, labels, num_classes, device, progress)
    finally:
        torch.set_num_threads(threads)


def _train(images: torch.Tensor, labels: torch.Tensor, num_classes: int, device: str, progress: bool) -> SmallClassifier:
    torch.manual_seed(RECIPE["seed"])
    model = SmallClassifier(num_classes, RECIPE["widths"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    prep = Embedder("classifier", mean=HALF, std=HALF).preprocess
    x, y = prep(images).to(device), labels.to(device)
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    for _ in progress_bar(range(RECIPE["steps"]), disable=not progress, desc="feature classifier", leave=False):
        idx = torch.randint(len(x), (min(RECIPE["batch_size"], len(x)),), generator=gen).to(device)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: SmallClassifier, images: torch.Tensor, labels: torch.Tensor, device: str = "cpu") -> float:
    prep = Embedder("classifier", mean=HALF, std=HALF).preprocess
    predicted = torch.cat([model(prep(images[s:s + 512]).to(device)).argmax(1).cpu() for s in range(0, len(images), 512)])
    return float((predicted == labels).float().mean()) if len(labels) else float("nan")


def trainable(ds: Dataset) -> bool:
    """Whether ``ds`` holds labelled images of two or more classes, as the classifier needs: over one class
    its cross-entropy is 0 whatever the weights, so no gradient reaches them (weight decay only shrinks
    their initial values) and its features would describe nothing (an image folder whose images share one
    subfolder is labelled with one class)."""
    return ds.is_image and ds.labels is not None and len(torch.unique(ds.labels)) >= 2


def classifier_embedder(ds: Dataset, heldout: np.ndarray, cache: Path, device: str = "cpu",
                        progress: bool = False) -> tuple[Embedder, dict]:
    """The ``classifier`` embedder of dataset ``ds`` with held-out indices ``heldout``: read from
    ``cache`` or trained there first. Returns it and its record (key, pool size, held-out accuracy).
    The network is trained on the CPU whatever ``device`` the run uses (its features are computed there):
    a GPU trains with TF32 and non-deterministic backward passes, and the cache, keyed by the recipe and
    the pool, must hold the same network whichever run fills it first."""
    if not trainable(ds):
        raise EmbedderError(f"features 'classifier': dataset {ds.name!r} has no labelled images of two or more "
                            f"classes to train it on; use features: pixel or an embedder spec")
    pool = training_pool(ds, heldout)
    key = cache_key(ds, pool)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"classifier-{key}.pt"
    with open(cache / f".classifier-{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first one's network
        cached = _read_cached(path)
        if cached is None:
            pool_t = torch.from_numpy(pool)
            model = train_classifier(ds.data[pool_t], ds.labels[pool_t], ds.num_classes, "cpu", progress)
            held = torch.from_numpy(np.asarray(heldout, dtype=np.int64))
            record = {"key": key, "dataset": ds.name, "n_pool": len(pool), "recipe": RECIPE,
                      "pool_accuracy": accuracy(model, ds.data[pool_t], ds.labels[pool_t]),
                      "heldout_accuracy": accuracy(model, ds.data[held], ds.labels[held])}
            atomic_torch_save(path, {"state_dict": model.cpu().state_dict(), "num_classes": ds.num_classes,
                                     "record": record})
            cached = model, record
    model, record = cached
    model = model.to(device).eval()
    # named by its file: descriptors are kept in the process by embedder name (memorize.metrics.embedders)
    return Embedder(f"classifier:{path}", model.features, None, HALF, HALF, device), record


def _read_cached(path: Path) -> tuple[SmallClassifier, dict] | None:
    """The cached network and its record, None where there is none; a damaged file (truncated, emptied,
    overwritten) is named and counts as none, so the network is trained again (on the CPU, the same one)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = SmallClassifier(state["num_classes"], state["record"]["recipe"]["widths"])
        model.load_state_dict(state["state_dict"])
        return model, state["record"]
    except FileNotFoundError:
        return None
    except Exception as err:  # any unreadable content: torch raises several kinds for damaged archives
        print(f"memorize: the cached feature classifier {path} is damaged ({type(err).__name__}); training it "
              f"again", file=sys.stderr)
        return None

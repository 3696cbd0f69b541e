"""Calibrating memorization criteria on held-out real images.

Held-out images, scored against the training subset they were never part of, are not copies:
the share a criterion flags among them is its false-positive rate, reported beside every
memorization ratio. A fixed cosine threshold is calibrated only for its own descriptor (0.5-0.75
for SSCD); for any other descriptor (raw pixels above all) :func:`calibrated_threshold` sets it
from the held-out similarities for a target false-positive rate.
"""

from __future__ import annotations

import math

import numpy as np


def default_threshold(embedder: str) -> float | str:
    """The cosine threshold used when none is given: ``auto`` (calibrated on held-out images) for raw
    pixels, 0.6 (Zhang et al. 2024, calibrated for SSCD) for network descriptors."""
    return "auto" if embedder == "pixel" else 0.6


def min_heldout(target_fpr: float) -> int:
    """Held-out images needed to resolve a false-positive rate of ``target_fpr``: ``ceil(1 / target_fpr)``."""
    return math.ceil(1.0 / target_fpr - 1e-9)


def check_heldout(n_heldout: int, target_fpr: float) -> None:
    """Raise if ``n_heldout`` usable held-out images cannot resolve ``target_fpr`` (:func:`min_heldout`);
    the error says how many are needed."""
    if not 0 < target_fpr < 1:
        raise ValueError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
    need = min_heldout(target_fpr)
    if n_heldout < need:
        raise ValueError(f"threshold auto at a {target_fpr:g} false-positive rate needs at least {need} held-out "
                         f"images; this cell has {n_heldout} (raise data.n_heldout, or the target rate)")


def calibrated_threshold(heldout_similarity: np.ndarray, target_fpr: float = 0.01) -> float:
    """The cosine threshold at which at most ``floor(target_fpr * n)`` of the ``n`` held-out images are
    flagged (memorized iff ``s > threshold``): the ``(k + 1)``-th largest held-out similarity,
    ``k = floor(target_fpr * n)``, i.e. their ``1 - target_fpr`` quantile taken from above.

    Non-finite similarities (unusable descriptors) are left out. Fewer than
    :func:`min_heldout` usable images is an error that says how many are needed.
    """
    s = np.sort(np.asarray(heldout_similarity, dtype=np.float64)[np.isfinite(heldout_similarity)])[::-1]
    check_heldout(len(s), target_fpr)
    k = math.floor(target_fpr * len(s) + 1e-9)
    return float(s[k])

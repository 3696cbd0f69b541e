"""Figures. Each function takes data and returns a matplotlib Figure; callers save it atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw one (C, H, W) image in [-1, 1]."""
    img = (np.clip(image, -1, 1) + 1) / 2
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def nearest_neighbour_figure(samples: np.ndarray, train: np.ndarray, nearest: np.ndarray, ratio: np.ndarray,
                             n: int = 8, title: str = "") -> plt.Figure:
    """Generated samples above their nearest training images: the ``n`` most memorized samples
    (lowest d1/d2) on the left block, the ``n`` least memorized on the right block."""
    valid = np.flatnonzero(np.isfinite(ratio))
    ranked = valid[np.argsort(ratio[valid], kind="stable")]
    n = max(1, min(n, len(ranked) // 2 or 1))
    groups = [("most memorized", ranked[:n]), ("least memorized", ranked[::-1][:n])]
    fig, axes = plt.subplots(2, 2 * n + 1, figsize=(1.1 * (2 * n + 1), 2.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n + [0.3] + [1] * n})
    for ax in axes[:, n]:
        ax.axis("off")
    for block, (label, idx) in enumerate(groups):
        for j in range(n):
            col = j + block * (n + 1)
            for row in range(2):
                ax = axes[row, col]
                if j >= len(idx):
                    ax.axis("off")
                    continue
                _show(ax, samples[idx[j]] if row == 0 else train[nearest[idx[j]]])
                if row == 0:
                    ax.set_title(f"{ratio[idx[j]]:.2f}", fontsize=7)
        axes[0, block * (n + 1)].set_ylabel("sample", fontsize=7)
        axes[1, block * (n + 1)].set_ylabel("nearest\ntraining", fontsize=7)
        axes[0, block * (n + 1) + n // 2].annotate(label, (0.5, 1.45), xycoords="axes fraction", ha="center",
                                                   fontsize=8)
    fig.suptitle(title or "samples (d1/d2 above each) and their nearest training images", fontsize=8, y=1.0)
    fig.tight_layout()
    return fig

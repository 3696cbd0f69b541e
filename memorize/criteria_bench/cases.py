"""Memorization cases with ground truth, built from a training subset.

Each case is an image with what it is known to be: a copy of training image ``source`` (possibly
altered), a partial copy (a pixel mixture, ``strength`` = the weight of ``source``), or novel
(``source = -1``). Kinds (``strength`` in brackets):

- copies: ``exact``; ``noise`` (PSNR in dB, peak-to-peak 2 for data in [-1, 1]); ``flip``
  (horizontal); ``shift`` (pixels, edges replicated); ``crop`` (the centre share of each side kept,
  resized back); ``brightness`` (added offset, clipped); ``contrast`` (factor about the image mean);
  ``empirical`` (samples of the empirical denoiser of the training subset: copies of their nearest
  training image);
- partial: ``mixture`` (``w x_source + (1 - w) x_other`` for another training image);
- novel: ``gaussian`` (samples of the Gaussian denoiser of the training subset), ``heldout`` (real
  images never trained on).

Everything is deterministic from ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COPY, PARTIAL, NOVEL = "copy", "partial", "novel"
KIND_CLASS = {"exact": COPY, "noise": COPY, "flip": COPY, "shift": COPY, "crop": COPY, "brightness": COPY,
              "contrast": COPY, "empirical": COPY, "mixture": PARTIAL, "gaussian": NOVEL, "heldout": NOVEL}
# Strengths per kind in the default bench (None: the kind has no strength).
DEFAULT_STRENGTHS: dict[str, list[float | None]] = {
    "exact": [None], "noise": [40.0, 30.0, 25.0, 20.0, 15.0], "flip": [None], "shift": [1.0, 2.0],
    "crop": [0.875, 0.75], "brightness": [0.1, 0.3], "contrast": [0.8, 0.5], "empirical": [None],
    "mixture": [0.9, 0.7, 0.5], "gaussian": [None], "heldout": [None],
}


@dataclass
class CaseSet:
    """Cases with ground truth: ``images`` (K, ...) in [-1, 1]; ``source`` (K,) the training index each
    copies (-1: novel); ``kind`` (K,) and ``strength`` (K,) (NaN where the kind has none)."""

    images: np.ndarray
    source: np.ndarray
    kind: np.ndarray
    strength: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def truth(self) -> np.ndarray:
        """``copy``, ``partial`` or ``novel`` per case."""
        return np.asarray([KIND_CLASS[k] for k in self.kind])

    def select(self, mask: np.ndarray) -> CaseSet:
        return CaseSet(self.images[mask], self.source[mask], self.kind[mask], self.strength[mask])


def add_noise_at_psnr(x: torch.Tensor, psnr_db: float, gen: torch.Generator) -> torch.Tensor:
    """``x + sigma z`` with ``sigma = 2 / 10^(psnr / 20)``: PSNR = 10 log10(2^2 / MSE) for data in [-1, 1]
    (unclipped, so the stated PSNR holds in expectation)."""
    sigma = 2.0 / 10 ** (psnr_db / 20)
    return x + sigma * torch.randn(x.shape, generator=gen)


def shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift right and down by ``pixels``, replicating the edge rows and columns into the gap."""
    padded = F.pad(x, (pixels, 0, pixels, 0), mode="replicate")
    return padded[..., :x.shape[-2], :x.shape[-1]]


def crop_resize(x: torch.Tensor, keep: float) -> torch.Tensor:
    """Keep the centre ``keep`` share of each side and resize back (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return ((x - mean) * factor + mean).clamp(-1, 1)


def _altered(kind: str, strength: float | None, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if kind == "exact":
        return x.clone()
    if kind == "noise":
        return add_noise_at_psnr(x, strength, gen)
    if kind == "flip":
        return x.flip(-1)
    if kind == "shift":
        return shift(x, int(strength))
    if kind == "crop":
        return crop_resize(x, strength)
    if kind == "brightness":
        return (x + strength).clamp(-1, 1)
    if kind == "contrast":
        return contrast(x, strength)
    raise ValueError(f"kind {kind!r} is not a transformation")


IMAGE_ONLY = {"flip", "shift", "crop", "contrast"}


def build_cases(train: torch.Tensor, heldout: torch.Tensor, per_kind: int = 64, seed: int = 0,
                strengths: dict[str, list[float | None]] | None = None, sample_steps: int = 18,
                device: str = "cpu") -> CaseSet:
    """The cases of every kind in ``strengths`` (default :data:`DEFAULT_STRENGTHS`): ``per_kind`` of each
    (kind, strength), sources drawn from ``train`` without replacement where it is large enough; the
    held-out cases are all of ``heldout`` (they calibrate thresholds: a 1% false-positive rate needs 100).
    Vector data skips the image-only kinds."""
    from memorize.config import SampleConfig
    from memorize.empirical import empirical_denoiser, gaussian_denoiser
    from memorize.sampling import generate, sample_seeds

    strengths = DEFAULT_STRENGTHS if strengths is None else strengths
    unknown = set(strengths) - set(KIND_CLASS)
    if unknown:
        raise ValueError(f"unknown case kinds {sorted(unknown)}; expected some of {sorted(KIND_CLASS)}")
    if len(train) < 2:
        raise ValueError(f"the cases need at least 2 training images (a mixture blends two; the nearest-neighbour "
                         f"criterion needs a second), got {len(train)}")
    train = train.float().cpu()
    images = train.ndim == 4
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    parts: list[tuple[torch.Tensor, np.ndarray, str, float | None]] = []
    for kind, levels in strengths.items():
        if kind in IMAGE_ONLY and not images:
            continue
        for strength in levels:
            sources = rng.choice(len(train), size=per_kind, replace=per_kind > len(train))
            if kind in ("gaussian", "empirical"):
                model = (empirical_denoiser if kind == "empirical" else gaussian_denoiser)(train.to(device))
                seeds = sample_seeds(seed * 1000 + (kind == "gaussian"), np.arange(per_kind))
                drawn = generate(model, tuple(train.shape[1:]), seeds, SampleConfig(steps=sample_steps,
                                 batch_size=per_kind), device, progress=False)
                drawn = drawn.clamp(-1, 1) if images else drawn
                if kind == "empirical":  # each is a copy of its nearest training image
                    sources = torch.cdist(drawn.reshape(per_kind, -1).double(),
                                          train.reshape(len(train), -1).double()).argmin(1).numpy()
                else:
                    sources = np.full(per_kind, -1)
                parts.append((drawn, sources, kind, strength))
            elif kind == "heldout":  # all of them: they also calibrate thresholds (100 for a 1% rate)
                parts.append((heldout.float().cpu(), np.full(len(heldout), -1), kind, strength))
            elif kind == "mixture":
                others = (sources + 1 + rng.integers(0, len(train) - 1, size=per_kind)) % len(train)
                mixed = strength * train[sources] + (1 - strength) * train[others]
                parts.append((mixed, sources, kind, strength))
            else:
                parts.append((_altered(kind, strength, train[sources], gen), sources, kind, strength))
    return CaseSet(
        images=torch.cat([p[0] for p in parts]).numpy().astype(np.float32),
        source=np.concatenate([p[1] for p in parts]).astype(np.int64),
        kind=np.concatenate([np.full(len(p[1]), p[2], dtype=object) for p in parts]),
        strength=np.concatenate([np.full(len(p[1]), np.nan if p[3] is None else p[3]) for p in parts]),
    )

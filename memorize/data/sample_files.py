"""Samples made elsewhere, read into our convention: float32 (M, C, H, W) in [-1, 1].

Accepted: an image folder (PNG, JPEG, BMP, WebP, ...; decoded by Pillow in parallel threads), ``.npz``
(its ``samples`` or ``images`` array, or its only one), ``.npy`` and ``.pt`` (a tensor). Arrays may be
(M, C, H, W), (M, H, W, C) with 1 or 3 channels, or (M, H, W). Values are mapped to [-1, 1] from the
range ``value_range`` names: ``0-255`` (uint8 images), ``0-1``, ``-1-1``, or ``auto``: uint8 is 0-255,
floats within [0, 1] are 0-1 and floats within [-1, 1] with a negative value are -1-1 (anything else
is an error asking for the range). The range used is returned with the array, for the record.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from memorize.data.datasets import IMAGE_SUFFIXES, DatasetError

RANGES = ("auto", "0-255", "0-1", "-1-1")


def _decode(path: Path) -> np.ndarray:
    """One image as uint8 (C, H, W): grayscale stays one channel, anything else becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img if img.mode in ("L", "RGB") else img.convert("RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable image ({str(err).splitlines()[0][:120]})") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image_folder(root: Path, threads: int | None = None) -> np.ndarray:
    """Every image under ``root`` (recursively, sorted by path) as uint8 (M, C, H, W), decoded in
    ``threads`` threads; every image must have the first one's shape."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_decode, files))
    for path, image in zip(files, images):
        if image.shape != images[0].shape:
            raise DatasetError(f"{path}: shape {tuple(image.shape)}, but {files[0].name} has "
                               f"{tuple(images[0].shape)}: every sample must have one shape")
    return np.stack(images)


def _array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            names = [n for n in ("samples", "images") if n in npz.files] or npz.files
            if len(names) != 1 and names[0] not in ("samples", "images"):
                raise DatasetError(f"{path}: holds {', '.join(npz.files)}; expected an array named samples or images")
            return npz[names[0]]
    if path.suffix == ".pt":
        value = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(value, torch.Tensor):
            raise DatasetError(f"{path}: holds a {type(value).__name__}; expected one tensor of samples")
        return value.numpy()
    raise DatasetError(f"{path}: expected an image folder, .npz, .npy or .pt file")


def _channels_first(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise DatasetError(f"{path}: samples of shape {tuple(images.shape)}; expected (M, C, H, W), (M, H, W, C) "
                       f"with 1 or 3 channels, or (M, H, W)")


def to_unit_range(images: np.ndarray, value_range: str, path: Path) -> tuple[np.ndarray, str]:
    """``images`` mapped to float32 [-1, 1] from ``value_range`` (``auto``: from the dtype and values)."""
    if value_range not in RANGES:
        raise DatasetError(f"--range: expected one of {RANGES}, got {value_range!r}")
    if images.dtype == np.uint8 and value_range in ("auto", "0-255"):
        return images.astype(np.float32) / 127.5 - 1.0, "0-255"
    values = images.astype(np.float32)
    if not np.isfinite(values).all():
        raise DatasetError(f"{path}: samples contain NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if value_range == "auto":
        if 0.0 <= lo and hi <= 1.0:
            value_range = "0-1"
        elif -1.0 <= lo < 0.0 and hi <= 1.0:
            value_range = "-1-1"
        else:
            raise DatasetError(f"{path}: values in [{lo:.4g}, {hi:.4g}] fit no usual range; say which with "
                               f"--range 0-255, 0-1 or -1-1")
    bounds = {"0-255": (0.0, 255.0), "0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0)}[value_range]
    if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
        raise DatasetError(f"{path}: values in [{lo:.4g}, {hi:.4g}] lie outside the stated range {value_range}")
    return (values - bounds[0]) / (bounds[1] - bounds[0]) * 2.0 - 1.0, value_range


def read_samples_file(path: str | Path, value_range: str = "auto") -> tuple[np.ndarray, str]:
    """The samples at ``path`` as float32 (M, C, H, W) in [-1, 1], and the value range they were read with
    (module docstring)."""
    path = Path(path)
    if path.is_dir():
        images = read_image_folder(path)
    elif path.is_file():
        images = _array(path)
    else:
        raise DatasetError(f"{path}: no such samples file or folder")
    if len(images) == 0:
        raise DatasetError(f"{path}: holds no samples")
    return to_unit_range(_channels_first(images, path), value_range, path)

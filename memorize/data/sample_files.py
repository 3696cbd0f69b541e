"""Samples made elsewhere, read into our convention: float32 (M, C, H, W) in [-1, 1].

Accepted: an image folder (PNG, JPEG, BMP, WebP, ...; decoded by Pillow in parallel threads), ``.npz``
(its ``samples`` or ``images`` array, or its only one), ``.npy`` and ``.pt`` (a tensor). Arrays may be
(M, C, H, W), (M, H, W, C) with 1 or 3 channels, or (M, H, W); a folder's images may be read with the
training images' channels (:func:`open_samples`). Values are mapped to [-1, 1] from the
range ``value_range`` names: ``0-255`` (uint8 images), ``0-1``, ``-1-1``, or ``auto``: uint8 is 0-255,
floats within [0, 1] are 0-1 and floats within [-1, 1] with a negative value are -1-1 (anything else
is an error asking for the range). The range used is returned with the array, for the record.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memorize.data.datasets import (IMAGE_SUFFIXES, NUMPY_FILE_ERRORS, DatasetError, decode_image, decode_images,
                                     image_paths, resize_images)
from memorize.errors import foreign_message

RANGES = ("auto", "0-255", "0-1", "-1-1")


def image_files(root: Path) -> list[Path]:
    """The images under ``root``, recursively, sorted by path (:func:`memorize.data.datasets.image_paths`)."""
    files = image_paths(root)
    if not files:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def stacked_images(files: list[Path], first: tuple[Path, tuple[int, ...]], channels: int | None = None,
                   size: int | None = None) -> np.ndarray:
    """``files`` as uint8 (M, C, H, W) (:func:`memorize.data.datasets.decode_images`); every image must have
    the shape of ``first`` (a file and its shape)."""
    images = decode_images(files, channels, size)
    name, shape = first
    for path, image in zip(files, images):
        if image.shape != shape:
            raise DatasetError(f"{path}: shape {tuple(image.shape)}, but {name.name} has {tuple(shape)}: every "
                               f"sample must have one shape")
    return np.stack(images)


def _array(path: Path) -> np.ndarray:
    """The array in a ``.npy`` (memory-mapped: read as used), ``.npz`` or ``.pt`` file (read whole); a file that
    its reader cannot read (cut short, of another format, of Python objects) is a :class:`DatasetError` naming it."""
    if path.suffix not in (".npy", ".npz", ".pt"):
        raise DatasetError(f"{path}: expected an image folder, .npz, .npy or .pt file")
    try:
        value = _load(path)
    except DatasetError:
        raise
    except (*NUMPY_FILE_ERRORS, KeyError, RuntimeError, pickle.UnpicklingError) as err:  # and torch.load's
        raise DatasetError(f"{path}: not a readable {path.suffix} file of samples ({foreign_message(err)})") from None
    if not isinstance(value, np.ndarray):  # a file whose suffix names another format (an .npz saved as .npy)
        if isinstance(value, np.lib.npyio.NpzFile):
            value.close()
        raise DatasetError(f"{path}: holds a {type(value).__name__}, not the one array a {path.suffix} file of "
                           f"samples holds")
    return value


def _load(path: Path) -> object:
    """What the reader of ``path``'s suffix finds in it (:func:`_array`)."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if path.suffix == ".npz":
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return loaded
        with loaded as npz:
            names = [n for n in ("samples", "images") if n in npz.files] or npz.files
            if len(names) != 1 and (not names or names[0] not in ("samples", "images")):
                raise DatasetError(f"{path}: holds {', '.join(npz.files) or 'no arrays'}; expected an array named "
                                   f"samples or images")
            return npz[names[0]]
    value = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(value, torch.Tensor):
        raise DatasetError(f"{path}: holds a {type(value).__name__}; expected one tensor of samples")
    return value.numpy()


def channels_first(images: np.ndarray, path: Path) -> np.ndarray:
    """Images (M, C, H, W), (M, H, W, C) with 1 or 3 channels, or (M, H, W) as (M, C, H, W)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise DatasetError(f"{path}: samples of shape {tuple(images.shape)}; expected (M, C, H, W), (M, H, W, C) "
                       f"with 1 or 3 channels, or (M, H, W)")


def samples_array(images: np.ndarray, path: Path, vectors: bool = False) -> np.ndarray:
    """``images`` checked as samples (real numbers, at least one) and channels first (:func:`channels_first`);
    with ``vectors``, an (M, D) array of vectors passes as it is."""
    if images.dtype.kind not in "uif":
        raise DatasetError(f"{path}: samples of dtype {images.dtype}; expected real numbers (uint8 images or floats)")
    if images.ndim == 0 or len(images) == 0:
        raise DatasetError(f"{path}: holds no samples")
    return images if vectors and images.ndim == 2 else channels_first(images, path)


BOUNDS = {"0-255": (0.0, 255.0), "0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0)}


def resolve_range(dtype: np.dtype, lo: float, hi: float, value_range: str, path: Path) -> str:
    """The value range of samples of ``dtype`` whose values span [``lo``, ``hi``] (module docstring), checked."""
    if value_range not in RANGES:
        raise DatasetError(f"--range: expected one of {RANGES}, got {value_range!r}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DatasetError(f"{path}: samples contain NaN or infinite values")
    if value_range == "auto":
        if dtype == np.uint8:
            value_range = "0-255"
        elif 0.0 <= lo and hi <= 1.0:
            value_range = "0-1"
        elif -1.0 <= lo < 0.0 and hi <= 1.0:
            value_range = "-1-1"
        else:
            raise DatasetError(f"{path}: values in [{lo:.4g}, {hi:.4g}] fit no usual range; say which with "
                               f"--range 0-255, 0-1 or -1-1")
    bounds = BOUNDS[value_range]
    if lo < bounds[0] - 1e-6 or hi > bounds[1] + 1e-6:
        raise DatasetError(f"{path}: values in [{lo:.4g}, {hi:.4g}] lie outside the stated range {value_range}")
    return value_range


def map_range(images: np.ndarray, value_range: str) -> np.ndarray:
    """``images`` in the resolved ``value_range``, as float32 in [-1, 1]."""
    if images.dtype == np.uint8 and value_range == "0-255":  # the datasets' own mapping, so copies match exactly
        return images.astype(np.float32) / 127.5 - 1.0
    lo, hi = BOUNDS[value_range]
    return (images.astype(np.float32) - lo) / (hi - lo) * 2.0 - 1.0


def _span(images: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value (NaN where any is not finite)."""
    if images.dtype == np.uint8:
        return float(images.min()), float(images.max())
    values = images.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        return float("nan"), float("nan")
    return float(values.min()), float(values.max())


def to_unit_range(images: np.ndarray, value_range: str, path: Path) -> tuple[np.ndarray, str]:
    """``images`` mapped to float32 [-1, 1] from ``value_range`` (``auto``: from the dtype and values)."""
    used = resolve_range(images.dtype, *_span(images), value_range, path)
    return map_range(images, used), used


@dataclass
class SampleSource:
    """Samples at a path, read ``chunk`` rows at a time: ``count`` of them, each of ``shape`` (C, H, W),
    in the value range ``value_range`` (resolved). An image folder is decoded a chunk at a time and a
    ``.npy`` file memory-mapped, so memory is bounded by a chunk; ``.npz`` and ``.pt`` are read whole."""

    path: Path
    count: int
    shape: tuple[int, ...]
    value_range: str
    _rows: Callable[[int, int], np.ndarray]  # raw rows [start, stop), channels first
    folder: bool = False  # an image folder, whose images can be read with other channels (open_samples)

    def chunks(self, size: int = 4096) -> Iterator[np.ndarray]:
        """The samples as float32 (k, C, H, W) in [-1, 1], ``size`` rows at a time."""
        for start in range(0, self.count, size):
            yield map_range(self._rows(start, min(start + size, self.count)), self.value_range)


def open_samples(path: str | Path, value_range: str = "auto", chunk: int = 4096,
                 channels: int | None = None, size: int | None = None) -> SampleSource:
    """The samples at ``path`` (module docstring) as a :class:`SampleSource`. Where the range is to be
    inferred from float values, their span is read first, a chunk at a time. With ``channels`` (the
    training images') and ``size``, the images of a folder are read with that many channels and resized
    (:func:`memorize.data.datasets.decode_image`); arrays are read as they are."""
    path = Path(path)
    if path.is_dir():
        files = image_files(path)
        first = decode_image(files[0], channels, size)

        def rows(start: int, stop: int) -> np.ndarray:
            return stacked_images(files[start:stop], (files[0], first.shape), channels, size)

        return SampleSource(path, len(files), tuple(first.shape),
                            resolve_range(np.dtype(np.uint8), 0.0, 255.0, value_range, path), rows, folder=True)
    if not path.is_file():
        raise DatasetError(f"{path}: no such samples file or folder")
    array = samples_array(_array(path), path)
    if array.dtype == np.uint8 and value_range in ("auto", "0-255"):
        lo, hi = 0.0, 255.0
    else:
        spans = [_span(array[s:s + chunk]) for s in range(0, len(array), chunk)]
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    return SampleSource(path, len(array), tuple(array.shape[1:]), resolve_range(array.dtype, lo, hi, value_range, path),
                        lambda start, stop: np.asarray(array[start:stop]))


def read_samples_file(path: str | Path, value_range: str = "auto", channels: int | None = None,
                      size: int | None = None) -> tuple[np.ndarray, str]:
    """The samples at ``path`` as float32 (M, C, H, W) in [-1, 1], held whole, and the value range they were
    read with (module docstring; ``channels``: :func:`open_samples`). ``size``: images resized to ``size x
    size`` as the datasets resize theirs (``data.resize``): a folder's with PIL's bicubic filter, as the
    ``folder`` dataset's, and arrays with :func:`memorize.data.datasets.resize_images`, as the datasets of
    arrays'."""
    source = open_samples(path, value_range, channels=channels, size=size)
    images = np.concatenate(list(source.chunks()))
    if size is not None and not source.folder and images.ndim == 4:
        images = resize_images(torch.from_numpy(images), size).numpy()
    return images, source.value_range

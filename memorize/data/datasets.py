"""Datasets by name, loaded whole into memory as float32 in [-1, 1].

Images have shape (M, C, H, W); vector data (the ``gmm`` mixtures) (M, D).
Nothing is downloaded: MNIST and CIFAR-10 are read from torchvision's standard
files under a local root, and a missing file is an error that names the path
where it was expected.
"""

from __future__ import annotations

import functools
import pickle
import sys
import weakref
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from memorize.config import DataConfig, GMMConfig
from memorize.errors import foreign_message

if TYPE_CHECKING:
    import PIL.Image

MAX_CLASSES = 2**20  # an npz's labels index a table of this many rows at most
# what np.load raises for a file that is not NumPy's, is cut short, or holds Python objects
NUMPY_FILE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)

GMM_CHUNK_BYTES = 2**26  # the mixture's points are drawn in chunks whose gathered factors take this much at most
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class DatasetError(FileNotFoundError):
    """A dataset's files are missing or malformed; the message names the path."""


@dataclass
class GaussianMixture:
    """Parameters of a known Gaussian mixture: ``sum_k w_k N(means_k, covs_k)``."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    covs: torch.Tensor  # (K, D, D)


@dataclass
class Dataset:
    """A whole dataset in memory. ``mixture`` is set when the true density is known."""

    name: str
    data: torch.Tensor  # (M, C, H, W) or (M, D), float32
    labels: torch.Tensor | None  # (M,) int64
    num_classes: int
    mixture: GaussianMixture | None = None
    files: tuple[Path, ...] = ()  # the local files it was read from (none for digits and gmm)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item."""
        return tuple(self.data.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.data.ndim == 4


def _from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


def _missing(path: Path, what: str) -> DatasetError:
    return DatasetError(f"{what}: expected file {path} (not found). Nothing is downloaded; "
                        f"place the file there or point data.root elsewhere.")


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits' pixels and labels as scikit-learn ships them, parsed once per process (every stage of a cell loads its data, and a pack runs many cells in one process)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16), shipped with the package."""
    images, labels = _sklearn_digits()
    return Dataset("digits", (torch.tensor(images) / 8.0 - 1.0)[:, None], torch.tensor(labels), 10)


def load_mnist(root: str | Path) -> Dataset:
    """MNIST training split from ``root/MNIST/raw`` (torchvision's layout, unpacked idx files)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = Path(root) / "MNIST" / "raw"
    image_file, label_file = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    for path in (image_file, label_file):
        if not path.is_file():
            raise _missing(path, "mnist")
    images, labels = _read_idx(read_image_file, image_file, "images"), _read_idx(read_label_file, label_file, "labels")
    if len(images) != len(labels):
        raise DatasetError(f"mnist: {image_file} holds {len(images)} images but {label_file} {len(labels)} labels")
    images, labels = images.numpy(), labels.long()
    return Dataset("mnist", _from_uint8(images[:, None]), labels, 10, files=(image_file, label_file))


def _read_idx(reader: Callable[[str], torch.Tensor], path: Path, kind: str) -> torch.Tensor:
    """One of MNIST's idx files read by torchvision's ``reader``, which checks the format with assertions: a file
    of another format or cut short is a :class:`DatasetError` naming it."""
    try:
        return reader(str(path))
    except (AssertionError, RuntimeError, ValueError, IndexError) as err:
        reason = foreign_message(err) if str(err) else type(err).__name__
        raise DatasetError(f"mnist: {path} is not an MNIST idx file of {kind} ({reason})") from None


def load_cifar10(root: str | Path) -> Dataset:
    """CIFAR-10 training split from ``root/cifar-10-batches-py/data_batch_{1..5}``.

    Read directly from the pickled batches (the format described on the
    CIFAR-10 page), so fixtures need not match torchvision's md5 sums.
    """
    folder = Path(root) / "cifar-10-batches-py"
    images, labels = [], []
    for i in range(1, 6):
        path = folder / f"data_batch_{i}"
        if not path.is_file():
            raise _missing(path, "cifar10")
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            if not isinstance(batch, dict):
                raise TypeError(f"it holds a {type(batch).__name__}, not a dict")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"])
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, ImportError,
                IndexError, OverflowError) as err:  # what unpickling a file of another format raises
            raise DatasetError(f"cifar10: {path} is not a CIFAR-10 python batch ({foreign_message(err)})") from None
    return Dataset("cifar10", _from_uint8(np.concatenate(images)), torch.tensor(labels).long(), 10,
                   files=tuple(folder / f"data_batch_{i}" for i in range(1, 6)))


def eight_bit(img: PIL.Image.Image, path: Path) -> PIL.Image.Image:
    """``img`` (a PIL image) where its channels have 8 bits. PIL converts a 16-bit or floating-point image
    (modes ``I;16``, ``I``, ``F``) to RGB or L by clipping its values to 0-255, which turns most of a 16-bit
    image white without a word, so such images are refused, naming ``path``."""
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        raise DatasetError(f"{path}: image mode {img.mode}, more than 8 bits per channel, which reading as 8-bit "
                           f"would clip to 0-255: convert the images to 8 bits, or save them as an .npz (float "
                           f"images in [-1, 1])")
    return img


_WARNED_TOP_LEVEL: set[str] = set()  # folders whose top-level images this process has named


def load_folder(root: str | Path, size: int | None,
                listing: tuple[tuple[str, int, int], ...] | None = None) -> Dataset:
    """Every image under ``root`` (recursively), as RGB; labels from first-level subfolders (an image at the
    top level beside them gets the first subfolder's class, said once per process on stderr). ``listing``:
    :func:`_folder_listing` of ``root`` where the caller has it.

    Images of different sizes need ``data.resize``; they are then resized to
    ``size x size`` here.
    """
    root = Path(root)
    listing = _folder_listing(root) if listing is None else listing
    files = [Path(name) for name, *_ in listing]
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    class_index = {c: i for i, c in enumerate(classes)}
    top = [p for p in files if len(p.relative_to(root).parts) == 1]
    if classes and top and str(root) not in _WARNED_TOP_LEVEL:  # labelled as the first class, as before
        _WARNED_TOP_LEVEL.add(str(root))
        print(f"memorize: folder {root}: {len(top):,} image(s) at its top level ({top[0].name}) beside class "
              f"subfolders ({', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''}) are labelled as the first "
              f"class, {classes[0]!r}; move them into the subfolder of their class (or every image to the top "
              f"level, for no labels)", file=sys.stderr)
    images = _decoded(str(root), listing, size)
    labels = None
    if classes:
        labels = torch.tensor([class_index.get(p.relative_to(root).parts[0], 0) for p in files]).long()
    return Dataset("folder", _from_uint8(images), labels, max(len(classes), 1), files=tuple(files))


def image_paths(root: Path) -> list[Path]:
    """The image files under ``root`` (by suffix, :data:`IMAGE_SUFFIXES`), recursively, sorted by path."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_listing(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Every image under ``root`` (:func:`image_paths`) with its size and modification time (:func:`_stat`)."""
    if not root.is_dir():
        raise DatasetError(f"folder: expected an image folder at {root} (not found)")
    files = image_paths(root)
    if not files:
        raise DatasetError(f"folder: no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return tuple((str(p), *_stat(p)) for p in files)


def _stat(path: Path) -> tuple[int, int]:
    """Size and modification time (ns) of a file: with its path, what says that it is unchanged (a file gone
    since it was listed is named when it is read)."""
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=1)
def _decoded(root: str, listing: tuple[tuple[str, int, int], ...], size: int | None) -> np.ndarray:
    """The images of ``listing`` (path, size, modification time) under ``root``, as (M, 3, H, W) uint8, resized
    to ``size x size`` where it is set. Decoded once per process while the files stay as they are: every stage
    of a cell loads its data, and a pack runs many cells in one process (the caller converts, never altering
    this array)."""
    try:
        arrays = decode_images([Path(name) for name, *_ in listing], channels=3, size=size)
    except DatasetError as err:
        raise DatasetError(f"folder: {err}") from None
    other = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if other is not None:
        (_, h0, w0), (_, h, w) = arrays[0].shape, arrays[other].shape
        raise DatasetError(f"folder: images under {root} differ in size ({listing[0][0]} is {w0}x{h0}, "
                           f"{listing[other][0]} {w}x{h}); set data.resize to train on them at one size")
    return np.stack(arrays)


def decode_image(path: Path, channels: int | None = None, size: int | None = None) -> np.ndarray:
    """One image file as uint8 (C, H, W), by Pillow. ``channels=None``: grayscale stays one channel, anything
    else becomes RGB. ``channels=3``: every image becomes RGB (a grayscale value copied to R, G and B).
    ``channels=1``: grayscale, and an image whose red, green and blue are equal (as
    ``torchvision.utils.save_image`` writes a one-channel image) as that one channel; a colour image is
    refused, naming ``path``. ``size``: resized to ``size x size`` with PIL's bicubic filter (``data.resize``).
    Images of more than 8 bits per channel are refused (:func:`eight_bit`)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = eight_bit(img, path)
            if channels == 1 and img.mode != "L":
                rgb = np.asarray(img.convert("RGB"))
                if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                    raise DatasetError(f"{path}: a colour image (its red, green and blue differ), but the training "
                                       f"images have one channel")
                array = rgb[..., 0]
            else:
                kept = ("RGB",) if channels == 3 else ("L", "RGB")
                array = np.asarray(img if img.mode in kept else img.convert("RGB"))
    except DatasetError:
        raise
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise DatasetError(f"{path} is not a readable image ({foreign_message(err)}); remove it or replace "
                           f"it") from None
    if size is not None:
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_images(files: list[Path], channels: int | None = None, size: int | None = None,
                  threads: int | None = None) -> list[np.ndarray]:
    """``files`` decoded by :func:`decode_image` in order, in ``threads`` threads (default: torch's, the threads
    this process is allotted, up to 8; Pillow decodes without holding the GIL); the first unreadable one in
    order raises."""
    with ThreadPoolExecutor(threads or min(8, torch.get_num_threads())) as pool:
        return list(pool.map(lambda file: decode_image(file, channels, size), files))


def load_npz(path: str | Path) -> Dataset:
    """Arrays from an ``.npz``: ``images`` (M, C, H, W), (M, H, W, C), (M, H, W) or (M, D);
    uint8 in [0, 255] or float in [-1, 1]; optional integer ``labels`` (M,)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"npz: expected file {path} (not found)")
    try:
        archive = np.load(path, allow_pickle=False)
    except NUMPY_FILE_ERRORS as err:
        raise DatasetError(f"npz: {path} is not a readable .npz archive ({foreign_message(err)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"npz: {path} holds one array (a .npy file); expected an .npz archive with an array "
                           f"'images', as np.savez(file, images=...) writes")
    with archive as npz:
        if "images" not in npz:
            raise DatasetError(f"npz: {path} has no array 'images' (found: {', '.join(npz.files)})")
        try:
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz else None
        except NUMPY_FILE_ERRORS as err:  # object arrays, damaged members
            raise DatasetError(f"npz: {path}: its arrays cannot be read ({foreign_message(err)}); expected "
                               f"numbers (uint8 or float images, integer labels)") from None
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim not in (2, 4):
        raise DatasetError(f"npz: {path}: 'images' must be (M, C, H, W), (M, H, W, C), (M, H, W) or (M, D); "
                           f"got shape {images.shape}")
    if images.dtype == np.uint8:
        data = _from_uint8(images)
    else:
        data = torch.from_numpy(np.asarray(images, dtype=np.float32))
        lo, hi = float(data.min()), float(data.max())
        if lo < -1.0 or hi > 1.0 or not np.isfinite([lo, hi]).all():
            raise DatasetError(f"npz: {path}: float 'images' must lie in [-1, 1]; found [{lo}, {hi}]")
    label_tensor = None
    num_classes = 1
    if labels is not None:
        if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"npz: {path}: 'labels' must be integers of shape ({len(data)},); "
                               f"got {labels.dtype} {labels.shape}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < MAX_CLASSES:
            # the largest sizes the label table and the classifier's output (and -1 is the null label of
            # classifier-free guidance)
            raise DatasetError(f"npz: {path}: 'labels' must be class indices in [0, {MAX_CLASSES:,}); found "
                               f"{labels.min()} to {labels.max()}: number the classes 0, 1, 2, ... (or save no "
                               f"labels)")
        label_tensor = torch.from_numpy(labels).long()
        num_classes = int(labels.max()) + 1
    return Dataset("npz", data, label_tensor, num_classes, files=(path,))


def make_gmm(cfg: GMMConfig) -> Dataset:
    """Draw ``cfg.size`` points from a random Gaussian mixture (see GMMConfig): point i is
    ``mu_c + F_c z_i`` with its component ``c`` and ``z_i ~ N(0, I_r)``, ``Sigma_c = F_c F_c^T``.
    The points are drawn in chunks (:data:`GMM_CHUNK_BYTES`), each as the whole set would be, so the
    same draws give the same points bit for bit; memory beyond them and the mixture stays bounded."""
    gen = torch.Generator().manual_seed(cfg.seed)
    k, d = cfg.components, cfg.dim
    r = cfg.rank or d
    try:
        means = cfg.shift * torch.randn(k, d, generator=gen, dtype=torch.float64)
        eigvals = cfg.scale**2 * torch.linspace(1.0, 0.5, r, dtype=torch.float64)
        bases = torch.linalg.qr(torch.randn(k, d, r, generator=gen, dtype=torch.float64)).Q  # (K, D, r)
        factors = bases * eigvals.sqrt()  # Sigma_k = factors_k factors_k^T
        covs = factors @ factors.transpose(1, 2)
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        comp = torch.multinomial(weights, cfg.size, replacement=True, generator=gen)
        z = torch.randn(cfg.size, r, 1, generator=gen, dtype=torch.float64)
        rows = max(1, GMM_CHUNK_BYTES // (8 * d * r))
        points = torch.cat([means[c] + (factors[c] @ zc).squeeze(-1) for c, zc in zip(comp.split(rows), z.split(rows))])
    except (RuntimeError, MemoryError) as err:  # torch's allocator: "can't allocate memory: you tried to ..."
        if isinstance(err, RuntimeError) and "alloc" not in str(err):
            raise
        need = 8 * (k * d * (d + r) + cfg.size * (d + r)) / 2**30  # the covariances and factors, the points
        raise DatasetError(f"data.gmm: {cfg.size:,} points from {k} components of rank {r} in {d} dimensions take "
                           f"{need:.3g} GiB, more memory than there is ({foreign_message(err)}); choose a smaller "
                           f"size, dim, rank or components") from None
    mixture = GaussianMixture(weights, means, covs)
    return Dataset("gmm", points.float(), comp.long(), k, mixture)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (M, C, H, W) images to ``size x size`` (bilinear, antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(-1.0, 1.0)


_HELD: weakref.WeakValueDictionary[tuple, Dataset] = weakref.WeakValueDictionary()  # loaded datasets still held
_STAMPS: dict[tuple, tuple] = {}  # their files as they were read (path, size, modification time)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset ``cfg.name`` (resized if ``cfg.resize``). While a dataset loaded before is held anywhere
    and its files are as they were, it is returned again: the cells of a pack load their dataset at once, and
    each held a copy of its own (0.6 GB per cell for CIFAR-10 as float32). So a dataset is never altered in
    place; what its users change is their own copy (its subsets are)."""
    key = (cfg.name, str(cfg.root), cfg.resize, repr(cfg.gmm) if cfg.name == "gmm" else None)
    # what tells its files now from those it was read from: each file's path, size and modification time
    # (for an image folder, every image under its root, so that one added counts too)
    listing = _folder_listing(Path(cfg.root)) if cfg.name == "folder" else None
    held = _HELD.get(key)
    if held is not None and _STAMPS.get(key) == (listing or _file_stamp(held.files)):
        return held
    ds = load_folder(cfg.root, cfg.resize, listing) if listing else _read_dataset(cfg)
    for gone in [k for k in _STAMPS if k not in _HELD]:
        del _STAMPS[gone]
    _HELD[key], _STAMPS[key] = ds, listing or _file_stamp(ds.files)
    return ds


def _file_stamp(files: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    return tuple((str(p), *_stat(Path(p))) for p in files)


def _read_dataset(cfg: DataConfig) -> Dataset:
    """The dataset ``cfg.name`` read from its files, or made (resized if ``cfg.resize``; a folder is read by
    :func:`load_folder`)."""
    if cfg.name == "digits":
        ds = load_digits()
    elif cfg.name == "gmm":
        ds = make_gmm(cfg.gmm)
    elif cfg.name == "mnist":
        ds = load_mnist(cfg.root)
    elif cfg.name == "cifar10":
        ds = load_cifar10(cfg.root)
    elif cfg.name == "npz":
        ds = load_npz(cfg.root)
    else:  # guarded by DataConfig's Literal
        raise ValueError(f"data.name: unknown dataset {cfg.name!r}")
    if cfg.resize is not None:
        if not ds.is_image:
            raise DatasetError(f"data.resize: dataset {cfg.name!r} holds vectors, not images")
        ds.data = resize_images(ds.data, cfg.resize)
    return ds

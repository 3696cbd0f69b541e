"""Local score (LS) and equivariant local score (ELS) machines: the closed-form denoisers of a training
set under the two inductive biases of convolutional denoisers, locality and translation equivariance
(Kamb & Ganguli, ICML 2025, "An analytic theory of creativity in convolutional diffusion models").

Both follow the denoiser interface ``D(x, sigma) -> x0_hat`` on images ``x`` of shape (B, C, H, W).
``P_p(x)`` is the patch of size s x s (s odd, all channels) centred on pixel p, with zeros outside the
image (the zero padding of a convolution):

    LS:   D(x, sigma)_p = sum_i w_i(p) x_i[p],        w(p) = softmax_i(-||P_p(x) - P_p(x_i)||^2 / (2 sigma^2))
    ELS:  D(x, sigma)_p = sum_{i,q} w_iq(p) x_i[q],   w(p) = softmax_{i,q}(-||P_p(x) - P_q(x_i)||^2 / (2 sigma^2))

The LS machine compares each pixel's neighbourhood with the same neighbourhood of every training image;
the ELS machine with neighbourhoods of every training image at other positions q too. Which q, at the
border, is the ``boundary`` rule of :class:`EquivariantLocalScoreDenoiser`:

- ``aligned`` (default; Kamb & Ganguli's rule for zero-padded networks): q ranges over the positions
  whose window meets the border exactly as p's does (the same cells of the window fall outside the
  image). A pixel whose window lies inside the image is compared with every inside window; a pixel in
  the top r = s // 2 rows with the windows of its own row (inside columns); a corner pixel with its own
  position only, as the LS machine does. Zero padding tells a convolutional network how far the border
  is, within its receptive field; this is the equivariance it keeps.
- ``anywhere``: q ranges over all H x W positions, padded windows included (a border window then prefers
  training windows that overlap the border alike). Equivariance holds exactly for pixels whose window
  lies inside the image; kept to reproduce results computed under it.

With s covering the whole image from every pixel (s >= 2 max(H, W) - 1) the LS machine is the empirical
denoiser, and so is the aligned ELS machine (every window then meets the border its own way).
The patch size is the machines' one free function of sigma (:class:`PatchSchedule`).

Both are attention (queries: the noisy patches; keys: training patches; values: their centre pixels) and
are streamed over chunks of the training set with an online log-sum-exp (as
:class:`memorize.empirical.EmpiricalDenoiser`), so memory is bounded by a chunk, never by N.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from memorize.empirical import ClassConditionalDenoiser


@dataclass(frozen=True)
class PatchSchedule:
    """The patch size s(sigma): ``sizes[k]`` at noise level ``sigmas[k]`` (increasing), and at any other
    sigma the size of the nearest level in log sigma. ``PatchSchedule.constant(s)`` is one size at all."""

    sigmas: tuple[float, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sigmas or len(self.sigmas) != len(self.sizes):
            raise ValueError(f"patch schedule: {len(self.sigmas)} noise levels for {len(self.sizes)} patch sizes")
        if (any(b <= a for a, b in zip(self.sigmas, self.sigmas[1:])) or self.sigmas[0] <= 0
                or not all(math.isfinite(s) for s in self.sigmas)):
            raise ValueError(f"patch schedule: noise levels must be positive, finite and increasing, got {self.sigmas}")
        if any(s < 1 or s % 2 == 0 for s in self.sizes):
            raise ValueError(f"patch schedule: patch sizes must be odd and >= 1, got {self.sizes}")

    @classmethod
    def constant(cls, size: int) -> PatchSchedule:
        return cls((1.0,), (int(size),))

    def __call__(self, sigma: float) -> int:
        if len(self.sigmas) == 1:
            return self.sizes[0]
        logs = [math.log(s) for s in self.sigmas]
        k = bisect.bisect_left(logs, math.log(sigma))
        if k == 0:
            return self.sizes[0]
        if k == len(logs):
            return self.sizes[-1]
        return self.sizes[k] if logs[k] - math.log(sigma) < math.log(sigma) - logs[k - 1] else self.sizes[k - 1]

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, d: dict) -> PatchSchedule:
        return cls(tuple(float(s) for s in d["sigmas"]), tuple(int(s) for s in d["sizes"]))


MACHINES = ("ls", "els")
BOUNDARIES = ("aligned", "anywhere")  # the ELS machine's rules at the border (module docstring)
N_CALIBRATE = 16  # noisy held-out images per noise level that calibrate a cell's patch sizes (memorize compare --local)


def read_patch_schedules(path: Path) -> dict[str, PatchSchedule]:
    """The schedules of a calibration file (:func:`calibrate_patch_schedule`'s results, by machine), or one
    size for every machine where the file holds ``{"size": s}``."""
    expected = '{machine: {"sigmas": [...], "sizes": [...]}} or {"size": S}'
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no patch schedule there (`memorize compare DIR --local` calibrates one)") \
            from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a directory, not a patch-schedule JSON file ({expected})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a patch-schedule JSON file ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected {expected}, got a JSON {type(raw).__name__}")
    try:
        if "size" in raw:
            return {m: PatchSchedule.constant(raw["size"]) for m in MACHINES}
        return {m: PatchSchedule.from_dict(raw[m]) for m in MACHINES if m in raw}
    except KeyError as err:
        raise ValueError(f"{path}: expected {expected}, missing {err}") from None
    except (TypeError, ValueError) as err:  # a list or number where a mapping or number belongs
        raise ValueError(f"{path}: expected {expected} ({err})") from None


def _schedule(patch: PatchSchedule | int) -> PatchSchedule:
    return patch if isinstance(patch, PatchSchedule) else PatchSchedule.constant(patch)


def _sigma_groups(sigma: torch.Tensor | float, batch: int) -> list[tuple[float, torch.Tensor]]:
    """The distinct noise levels of a batch with the rows at each (samplers pass one level per batch)."""
    flat = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).cpu()
    flat = flat.expand(batch) if flat.numel() == 1 else flat.reshape(batch)
    return [(float(s), (flat == s).nonzero().reshape(-1)) for s in torch.unique(flat)]


def patch_sq_distances(x: torch.Tensor, train: torch.Tensor, size: int) -> torch.Tensor:
    """``d[b, i, p] = ||P_p(x_b) - P_p(train_i)||^2`` for patches of ``size`` x ``size`` with zero padding:
    the per-pixel squared difference summed over channels, then summed over each pixel's window (outside
    the image both patches are zero and add nothing). Shape (B, n, H, W)."""
    b, n, (h, w) = len(x), len(train), x.shape[-2:]
    per_pixel = (x[:, None] - train[None]).square().sum(2).reshape(b * n, 1, h, w)
    window = F.avg_pool2d(per_pixel, size, stride=1, padding=size // 2, count_include_pad=True) * size * size
    return window.reshape(b, n, h, w)


class _OnlineSoftmax:
    """``sum_k softmax_k(logits) v_k`` accumulated over chunks of k: a running maximum and rescaled running
    sums (online log-sum-exp; Milakov & Gimelshein 2018). ``max``/``total`` have the logits' shape without
    the key axis; ``acc``, the weighted sum of values, has one more axis, last: the value's."""

    def __init__(self) -> None:
        self.max = self.total = self.acc = None

    def add(self, logits: torch.Tensor, key_dim: int, weighted_sum) -> None:
        """Fold in one chunk; ``logits`` is consumed (overwritten by the weights)."""
        chunk_max = logits.amax(key_dim)
        new_max = chunk_max if self.max is None else torch.maximum(self.max, chunk_max)
        weights = logits.sub_(new_max.unsqueeze(key_dim)).exp_()
        part_sum, part_acc = weights.sum(key_dim), weighted_sum(weights)
        if self.max is None:
            self.total, self.acc = part_sum, part_acc
        else:
            rescale = torch.exp(self.max - new_max)
            self.total = self.total * rescale + part_sum
            self.acc = self.acc * rescale[..., None] + part_acc
        self.max = new_max


class _PatchMachine:
    """What the two machines share: the training set in the working dtype, the patch schedule, and a call
    that denoises each noise level of the batch with that level's patch size (``_denoise``)."""

    def __init__(self, train: torch.Tensor, patch: PatchSchedule | int, dtype: torch.dtype):
        if train.dim() != 4 or len(train) < 1:
            raise ValueError(f"{type(self).__name__}: expected a non-empty (N, C, H, W) training set, got shape "
                             f"{tuple(train.shape)}")
        self.train, self.schedule, self.dtype = train.to(dtype), _schedule(patch), dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        queries = x.to(self.train.device, self.dtype)
        out = torch.empty_like(queries)
        for level, rows in _sigma_groups(sigma, len(x)):
            out[rows.to(queries.device)] = self._denoise(queries[rows.to(queries.device)], level)
        return out.to(x.device, x.dtype)

    def _denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        raise NotImplementedError


class LocalScoreDenoiser(_PatchMachine):
    """The LS machine of ``train`` (N, C, H, W) with patch size ``patch`` (a :class:`PatchSchedule` or one
    odd size); see the module docstring. Streams over ``chunk_size`` training images at a time (memory
    O(B x chunk x H x W)); float64 by default, computed as differences (no cancellation at small sigma)."""

    def __init__(self, train: torch.Tensor, patch: PatchSchedule | int, chunk_size: int = 256,
                 dtype: torch.dtype = torch.float64):
        super().__init__(train, patch, dtype)
        self.chunk_size = chunk_size


    def _denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        size, soft = self.schedule(sigma), _OnlineSoftmax()
        for start in range(0, len(self.train), self.chunk_size):
            chunk = self.train[start:start + self.chunk_size]
            logits = -patch_sq_distances(x, chunk, size) / (2 * sigma**2)  # (B, n, H, W)
            soft.add(logits, 1, lambda w: torch.einsum("bnhw,nchw->bhwc", w, chunk))
        return (soft.acc / soft.total[..., None]).permute(0, 3, 1, 2)


def border_classes(height: int, width: int, size: int) -> torch.Tensor:
    """For each pixel (row-major, shape (H W,)), the class of positions whose ``size`` x ``size`` window meets
    the border as its own does: 0 for windows inside the image; else one class per row of the top and
    bottom ``size // 2`` rows (times inside columns), per such column, and per position where both meet it.
    The aligned ELS machine compares a pixel's window only with training windows of its class."""
    r = size // 2
    rows, cols = torch.arange(height), torch.arange(width)
    row = torch.where((rows < r) | (rows >= height - r), rows + 1, 0)  # 0: the window's rows all inside
    col = torch.where((cols < r) | (cols >= width - r), cols + 1, 0)
    return (row[:, None] * (width + 1) + col[None, :]).reshape(-1)


class EquivariantLocalScoreDenoiser(_PatchMachine):
    """The ELS machine of ``train`` (N, C, H, W) with patch size ``patch`` and the ``boundary`` rule
    (``aligned`` or ``anywhere``); see the module docstring.

    Queries are the B x H x W patches of the input, keys every patch of every training image (unfolded a
    chunk of images at a time, ``chunk_size`` keys per chunk), values their centre pixels; logits
    ``(q . k - ||k||^2 / 2) / sigma^2`` (``||q||^2`` is constant over the keys), and under ``aligned`` minus
    infinity where the two windows meet the border differently (:func:`border_classes`; every chunk holds
    whole images, so each query keeps at least its own position's keys). Patches are centred on the
    training mean first, which leaves every difference unchanged and shrinks float cancellation. Query
    rows are taken in blocks so that one block of logits holds at most ``max_logits`` numbers."""

    def __init__(self, train: torch.Tensor, patch: PatchSchedule | int, chunk_size: int = 8192,
                 dtype: torch.dtype = torch.float64, max_logits: int = 2**24, boundary: str = "aligned"):
        super().__init__(train, patch, dtype)
        if boundary not in BOUNDARIES:
            raise ValueError(f"ELS boundary: expected one of {BOUNDARIES}, got {boundary!r}")
        self.offset = float(self.train.mean())
        self.chunk_size, self.max_logits, self.boundary = chunk_size, max_logits, boundary


    def _patches(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """(n x H x W, C s^2): the zero-padded patch of every pixel, then centred by the training mean (the
        same shift of every coordinate of queries and keys, so every difference is unchanged)."""
        padded = F.pad(images, (size // 2,) * 4) - self.offset
        cols = F.unfold(padded, size)  # (n, C s^2, H W)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def _denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        size = self.schedule(sigma)
        b, c, h, w = x.shape
        queries = self._patches(x, size)  # (B H W, C s^2)
        per_chunk = max(1, self.chunk_size // (h * w))
        rows = max(1, self.max_logits // (per_chunk * h * w))
        classes = border_classes(h, w, size).to(x.device) if self.boundary == "aligned" else None
        out = torch.empty(len(queries), c, dtype=self.dtype, device=x.device)
        for r in range(0, len(queries), rows):
            q, soft = queries[r:r + rows], _OnlineSoftmax()
            query_class = None if classes is None else classes.repeat(b)[r:r + rows, None]
            for start in range(0, len(self.train), per_chunk):
                chunk = self.train[start:start + per_chunk]
                keys = self._patches(chunk, size)
                values = chunk.permute(0, 2, 3, 1).reshape(-1, c)  # the centre pixel of each key
                # (q . k - ||k||^2 / 2) / sigma^2 in one product-and-add
                logits = torch.addmm(keys.square().sum(1).mul_(-0.5 / sigma**2)[None], q, keys.T, alpha=1 / sigma**2)
                if query_class is not None:
                    logits.masked_fill_(query_class != classes.repeat(len(chunk))[None, :], -math.inf)
                soft.add(logits, 1, lambda wts: wts @ values)
            out[r:r + rows] = soft.acc / soft.total[..., None]
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


def local_score_denoiser(train: torch.Tensor, patch: PatchSchedule | int,
                         labels: torch.Tensor | None = None) -> LocalScoreDenoiser | ClassConditionalDenoiser:
    """The LS machine of ``train``; with ``labels``, each class's own (and all of them for no class)."""
    if labels is not None:
        return ClassConditionalDenoiser(lambda t: LocalScoreDenoiser(t, patch), train, labels)
    return LocalScoreDenoiser(train, patch)


def equivariant_local_score_denoiser(train: torch.Tensor, patch: PatchSchedule | int, labels: torch.Tensor | None = None,
                                     boundary: str = "aligned") -> EquivariantLocalScoreDenoiser | ClassConditionalDenoiser:
    """The ELS machine of ``train`` under the ``boundary`` rule; with ``labels``, each class's own (and all of
    them for no class)."""
    if labels is not None:
        return ClassConditionalDenoiser(lambda t: EquivariantLocalScoreDenoiser(t, patch, boundary=boundary),
                                        train, labels)
    return EquivariantLocalScoreDenoiser(train, patch, boundary=boundary)


def local_machine(name: str, train: torch.Tensor, patch: PatchSchedule | int, labels: torch.Tensor | None = None,
                  boundary: str = "aligned"):
    """``ls`` or ``els``: the machine of that name (class-conditional with ``labels``; ``boundary``: the ELS
    machine's rule at the border)."""
    if name == "ls":
        return local_score_denoiser(train, patch, labels)
    if name == "els":
        return equivariant_local_score_denoiser(train, patch, labels, boundary)
    raise ValueError(f"expected a local machine, one of {MACHINES}, got {name!r}")


def r_squared(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Per item, the share of the target's variance over its pixels that the prediction explains:
    ``r^2 = 1 - ||t - p||^2 / ||t - mean(t)||^2`` (Kamb & Ganguli 2025 compare a machine's and a network's
    images this way). Shape (B,)."""
    t, p = target.reshape(len(target), -1).double(), prediction.reshape(len(prediction), -1).double()
    return 1 - (t - p).square().sum(1) / (t - t.mean(1, keepdim=True)).square().sum(1)


def odd_sizes(height: int, width: int) -> tuple[int, ...]:
    """The candidate patch sizes of a calibration: odd, from 1 to the first that covers the image's larger side."""
    side = max(height, width)
    return tuple(range(1, side + 2 if side % 2 == 0 else side + 1, 2))


@torch.no_grad()
def calibrate_patch_schedule(reference, train: torch.Tensor, images: torch.Tensor, machine: str,
                             sigmas: tuple[float, ...], sizes: tuple[int, ...] | None = None, seed: int = 0,
                             labels: torch.Tensor | None = None, train_labels: torch.Tensor | None = None,
                             progress=None, boundary: str = "aligned") -> tuple[PatchSchedule, list[dict]]:
    """The patch size s(sigma) that makes ``machine`` (``ls`` or ``els``) of ``train`` agree best with the
    denoiser ``reference`` (a trained network) on ``images + sigma eps`` at each of ``sigmas`` (``eps`` fixed
    by ``seed``): the size of highest pooled r^2 = 1 - sum ||D_m - D_ref||^2 / sum ||D_ref - its mean||^2,
    the per-noise-level calibration of Kamb & Ganguli 2025. ``labels``: each image's class (class-conditional
    machines, with ``train_labels``); ``boundary``: the ELS machine's rule at the border. Returns the schedule
    and one row per (sigma, size) with its r^2."""
    sizes = sizes or odd_sizes(*images.shape[-2:])
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen, dtype=images.dtype)
    extra = () if labels is None else (labels,)
    inputs, targets, spreads = [], [], []
    for sigma in sigmas:
        x = images + sigma * noise.to(images.device)
        target = reference(x, torch.tensor(sigma, device=x.device), *extra).double()
        inputs.append(x)
        targets.append(target)
        spreads.append((target - target.mean(dim=tuple(range(1, target.dim())), keepdim=True)).square().sum())
    scores = torch.empty(len(sizes), len(sigmas), dtype=torch.float64)
    for i, size in enumerate(sizes):  # one machine (one copy of the training set) at a time
        denoise = local_machine(machine, train, size, train_labels, boundary)
        for j, sigma in enumerate(sigmas):
            out = denoise(inputs[j], sigma, *extra).double()
            scores[i, j] = float(1 - (out - targets[j]).square().sum() / spreads[j])
            if progress is not None:
                progress()
    rows = [{"machine": machine, "sigma": sigma, "patch_size": size, "r2": float(scores[i, j])}
            for j, sigma in enumerate(sigmas) for i, size in enumerate(sizes)]
    best = [sizes[int(scores[:, j].argmax())] for j in range(len(sigmas))]
    return PatchSchedule(tuple(float(s) for s in sigmas), tuple(best)), rows

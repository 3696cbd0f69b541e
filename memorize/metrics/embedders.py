"""Descriptors for the copy-detection criterion, chosen by a string. Nothing is downloaded.

- ``pixel``: the flattened data tensor.
- ``sscd:PATH``: an SSCD TorchScript file (Pizzi et al. 2022). Following the SSCD recipe,
  images are skewed to 320x320, grayscale repeated to 3 channels, and normalized with the
  ImageNet mean/std; SSCD models L2-normalize their own descriptors.
- ``inception:PATH``: the FID Inception network (pytorch-fid's definition, 2048 pooled features) with
  the 2015-12-05 weights from the local file PATH (``pt_inception-2015-12-05-6726825d.pth``, as
  pytorch-fid, torch-fidelity and clean-fid use them): as ``features``, ``fid`` is then the FID of the
  literature (:func:`fid_inception`). Needs the ``fid`` extra.
- ``timm:MODEL:WEIGHTS``: a timm backbone (``timm.create_model(MODEL)``) with weights from a
  local file (``.safetensors`` or a torch state dict), classifier removed: pooled features at
  the model's default input size and normalization.
- ``torchvision:MODEL:WEIGHTS``: a torchvision classification model
  (``torchvision.models.get_model(MODEL)``) with local weights, classifier replaced by the
  identity: pooled features at 224x224 with the ImageNet mean/std.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from memorize.errors import foreign_message
from memorize.progress import progress_bar

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SSCD_SIZE = 320


class EmbedderError(ValueError):
    """An embedder spec is malformed, or its file is missing or unusable."""


@dataclass
class Embedder:
    """``embedder(data)`` maps (K, C, H, W) images in [-1, 1] (or (K, D) vectors for ``pixel``)
    to (K, d) float32 descriptors, in batches."""

    spec: str
    network: Callable[[torch.Tensor], torch.Tensor] | None = None
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    device: str = "cpu"
    batch_size: int = 128

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> resized, 3-channel, mean/std-normalized network input."""
        x = (images.float() + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, data: np.ndarray | torch.Tensor, progress: bool = False) -> np.ndarray:
        data = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
        if self.network is None:
            return data.reshape(len(data), math.prod(data.shape[1:])).float().numpy()
        if data.ndim != 4:
            raise EmbedderError(f"embedder {self.spec!r} takes images (K, C, H, W), got shape {tuple(data.shape)}")
        key = (self.spec, str(self.device), self.size, self.mean, self.std, _fingerprint(data))
        if key in _DESCRIPTORS:
            _DESCRIPTORS.move_to_end(key)
            return _DESCRIPTORS[key].copy()
        out = []
        for start in progress_bar(range(0, len(data), self.batch_size), disable=not progress, desc="embedding",
                                  leave=False):
            batch = self.preprocess(data[start:start + self.batch_size].to(self.device))
            out.append(self.network(batch).reshape(len(batch), -1).float().cpu())
        features = torch.cat(out).numpy()
        _remember(key, features)
        return features.copy()


# Descriptors of a network embedder, kept in this process by (embedder, device, input, content of the images;
# the embedder by its spec, which names its weights file):
# an evaluation embeds a cell's training and held-out images in scoring, in calibrating the comparison's
# threshold and at every scored checkpoint; a network (SSCD at 320x320) computes them once per process.
_DESCRIPTORS: OrderedDict[tuple, np.ndarray] = OrderedDict()
DESCRIPTOR_CACHE_BYTES = 1 << 30  # the most recently used sets up to 1 GiB in all


def _fingerprint(data: torch.Tensor) -> tuple:
    """Shape, dtype and a BLAKE2b digest of the images' bytes (equal arrays, equal keys)."""
    array = np.ascontiguousarray(data.detach().cpu().numpy())
    return array.shape, str(array.dtype), hashlib.blake2b(array.data, digest_size=16).hexdigest()


def _remember(key: tuple, features: np.ndarray) -> None:
    """Keep ``features`` under ``key``, dropping the least recently used sets beyond ``DESCRIPTOR_CACHE_BYTES``."""
    _DESCRIPTORS[key] = features
    while len(_DESCRIPTORS) > 1 and sum(f.nbytes for f in _DESCRIPTORS.values()) > DESCRIPTOR_CACHE_BYTES:
        _DESCRIPTORS.popitem(last=False)


def _weights_file(path: str, spec: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise EmbedderError(f"embedder {spec!r}: weights file {file} not found (nothing is downloaded; "
                            f"copy the file there)")
    return file


def _state_dict(file: Path, spec: str) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as err:  # a damaged, foreign or pickled-code file: torch's or safetensors' error in one line
        reader = "safetensors" if file.suffix == ".safetensors" else "torch.load (weights only)"
        raise EmbedderError(f"embedder {spec!r}: {file} is not a weights file {reader} reads "
                            f"({foreign_message(err)}); save the network's weights with "
                            f"torch.save(model.state_dict(), PATH)") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def _timm_backbone(name: str, file: Path, spec: str) -> tuple[torch.nn.Module, dict]:
    import timm

    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # unknown model name
        raise EmbedderError(f"embedder {spec!r}: {err}") from None
    state = _state_dict(file, spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if any(not k.startswith(("head", "fc", "classifier")) for k in missing) or unexpected:
        raise EmbedderError(f"embedder {spec!r}: {file} does not fit timm model {name!r} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.reset_classifier(0)
    return model, model.pretrained_cfg


def _torchvision_backbone(name: str, file: Path, spec: str) -> torch.nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as err:
        raise EmbedderError(f"embedder {spec!r}: {err}") from None
    try:
        model.load_state_dict(_state_dict(file, spec))
    except RuntimeError as err:
        raise EmbedderError(f"embedder {spec!r}: {file} does not fit torchvision model {name!r}: "
                            f"{str(err).splitlines()[0]}") from None
    for head in ("fc", "classifier", "heads", "head"):
        if hasattr(model, head):
            setattr(model, head, torch.nn.Identity())
            return model
    raise EmbedderError(f"embedder {spec!r}: cannot find the classifier of {name!r} to remove")


def load_embedder(spec: str, device: str = "cpu", batch_size: int = 128) -> Embedder:
    """Build the embedder named by ``spec`` (module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "pixel" and not rest:
        return Embedder(spec)
    if kind == "sscd" and rest:
        file = _weights_file(rest, spec)
        try:
            with warnings.catch_warnings():  # SSCD ships TorchScript; torch >= 2.10 warns that jit is deprecated
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated")  # Deprecation- or FutureWarning
                network = torch.jit.load(str(file), map_location=device)
        except RuntimeError as err:
            raise EmbedderError(f"embedder {spec!r}: {file} is not a TorchScript file "
                                f"({foreign_message(err)})") from None
        network.eval()
        return Embedder(spec, network, (SSCD_SIZE, SSCD_SIZE), device=device, batch_size=batch_size)
    if kind == "inception" and rest:
        network = fid_inception(_weights_file(rest, spec), device)
        # pytorch-fid's network takes [0, 1] images and resizes them to 299 x 299 itself, as its FID does
        return Embedder(spec, lambda batch: network(batch)[0], None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), device,
                        batch_size)
    if kind in ("timm", "torchvision"):
        name, _, path = rest.partition(":")
        if not name or not path:
            raise EmbedderError(f"embedder {spec!r}: expected {kind}:MODEL:WEIGHTS_FILE")
        file = _weights_file(path, spec)
        if kind == "timm":
            model, cfg = _timm_backbone(name, file, spec)
            size, mean, std = tuple(cfg["input_size"][1:]), tuple(cfg["mean"]), tuple(cfg["std"])
        else:
            model, size, mean, std = _torchvision_backbone(name, file, spec), (224, 224), IMAGENET_MEAN, IMAGENET_STD
        return Embedder(spec, model.to(device).eval(), size, mean, std, device, batch_size)
    raise EmbedderError(f"embedder {spec!r}: expected 'pixel', 'sscd:PATH', 'inception:PATH', "
                        f"'timm:MODEL:WEIGHTS' or 'torchvision:MODEL:WEIGHTS'")


def fid_inception(weights: Path, device: str = "cpu") -> torch.nn.Module:
    """The FID Inception network (the 2015-12-05 TensorFlow Inception weights that pytorch-fid,
    torch-fidelity and clean-fid use, ``pt_inception-2015-12-05-6726825d.pth``) from the local file
    ``weights``, built by pytorch-fid's own definition (2048 pooled features). pytorch-fid loads the file
    from torch hub's cache when it is there, so the file is offered through a temporary hub directory:
    nothing is downloaded."""
    import os
    import tempfile

    try:
        from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3
    except ImportError:
        raise EmbedderError("embedder 'inception:PATH' needs pytorch-fid: pip install 'memorize[fid]'") from None
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        os.makedirs(os.path.join(hub, "checkpoints"))
        os.symlink(os.path.abspath(weights), os.path.join(hub, "checkpoints", FID_WEIGHTS_URL.rsplit("/", 1)[-1]))
        torch.hub.set_dir(hub)
        try:
            network = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        except Exception as err:  # an empty, truncated or other network's file, whatever torch.load raises
            raise EmbedderError(f"embedder 'inception:{weights}': not the FID Inception weights "
                                f"({foreign_message(err)})") from None
        finally:
            torch.hub.set_dir(previous)
    return network.to(device).eval()

"""Denoisers trained elsewhere, wrapped into the one interface ``D(x, sigma) -> x0_hat``.

- A **TorchScript** module whose ``forward(x, sigma)`` already is such a denoiser (``sigma`` a (B,) tensor).
- A **torch.export** program (a ``.pt2`` file of ``torch.export.save``) of such a module. A batch outside
  the range the graph was exported for (a fixed size, or a ``Dim``'s min and max) is cut into chunks no
  larger than the max, each padded up to the min with copies of its last image whose outputs are dropped
  (as everywhere in memorize, one image's denoised output is taken not to depend on the rest of its
  batch). The graph is fixed in the mode it was exported in: ``eval()`` does not reach it. An AOTInductor
  package (also a ``.pt2`` archive) is refused: its compiled code checks neither the shape, the dtype, the
  strides nor the device of its inputs (a CPU package given CUDA tensors ends the process).
- A **diffusers** ``UNet2DModel`` trained on a discrete DDPM schedule ``alphas_cumprod`` (``abar_t``, t =
  0..T-1) with prediction type ``epsilon``, ``sample`` or ``v_prediction``. Its noisy input is the VP
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, i.e. our ``x = x0 + sigma eps`` scaled by
  ``alpha = 1 / sqrt(1 + sigma^2)`` at ``sigma_t = sqrt((1 - abar_t) / abar_t)``; the output becomes
  ``x0_hat`` by the eps / x0 / v rows of :mod:`memorize.diffusion.precond` (``c_skip x + c_out F``).
  Between the schedule's discrete sigmas the timestep is fractional, linear in log sigma between the
  two neighbouring grid points (the network's sinusoidal time embedding takes any real t); outside the
  grid it is clamped to 0 or T-1. At a grid point ``sigma_t`` this is the model's own x0 prediction
  (diffusers' ``DDPMScheduler.step(...).pred_original_sample`` without clipping; a test holds it).
"""

from __future__ import annotations

import io
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from memorize.diffusion.precond import _per_sample, denoised_from_output

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The VE noise level of each DDPM timestep: ``sigma_t = sqrt((1 - abar_t) / abar_t)``."""
    abar = alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt()


def sigma_to_timestep(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The fractional timestep of each ``sigma``: linear interpolation of t in log sigma between the two
    neighbouring grid points of the increasing ``log_sigmas`` (t = 0..T-1), clamped to the grid's ends."""
    log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
    upper = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    lo, hi = log_sigmas[upper - 1], log_sigmas[upper]
    return (upper - 1).double() + (log_sigma - lo) / (hi - lo)


class DiscreteVPDenoiser(nn.Module):
    """A network ``F(x_t, t)`` trained on a discrete VP schedule, as ``D(x, sigma)`` (module docstring).
    ``network(x_t, t)`` returns the prediction as a tensor."""

    def __init__(self, network, alphas_cumprod: torch.Tensor, prediction: str):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction type: expected one of {tuple(PREDICTIONS)}, got {prediction!r}")
        self.network, self.parameterization = network, PREDICTIONS[prediction]
        self.register_buffer("log_sigmas", discrete_sigmas(alphas_cumprod).log())

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("this imported denoiser is unconditional: it takes no class labels")
        sigma_b = _per_sample(sigma, x)
        t = sigma_to_timestep(sigma_b.reshape(-1), self.log_sigmas.to(x.device))
        alpha = 1.0 / torch.sqrt(1.0 + sigma_b**2)  # c_in of the eps, x0 and v rows
        output = self.network(alpha * x, t.to(x.dtype)).to(x.dtype)
        return denoised_from_output(self.parameterization, output, x, sigma_b)


class ScriptedDenoiser(nn.Module):
    """A TorchScript (or, subclassed, torch.export) module that is a denoiser ``forward(x, sigma)`` with
    ``sigma`` of shape (B,)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("this imported denoiser is unconditional: it takes no class labels")
        return self._run(x, _per_sample(sigma, x).reshape(-1))

    def _run(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.module(x, sigma)


class ExportedDenoiser(ScriptedDenoiser):
    """A ``torch.export`` program's module that is a denoiser ``forward(x, sigma)`` with ``sigma`` of shape (B,),
    run on any batch: ``batches`` = (min, max or None) is the batch range its graph accepts (module docstring).
    Its graph was traced in one mode (training or eval), so ``train()`` and ``eval()`` stop at this wrapper."""

    def __init__(self, module: nn.Module, batches: tuple[int, int | None] = (0, None)):
        super().__init__(module)
        self.batches = batches

    def _run(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        low, high = self.batches
        if low <= len(x) and (high is None or len(x) <= high):
            return self.module(x, sigma)
        if len(x) == 0:
            return torch.empty_like(x)
        size = high or len(x)
        return torch.cat([self._padded(x[i:i + size], sigma[i:i + size]) for i in range(0, len(x), size)])

    def _padded(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The program on ``x`` padded to the graph's smallest batch with copies of its last image."""
        pad = max(self.batches[0] - len(x), 0)
        if pad == 0:
            return self.module(x, sigma)
        return self.module(torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]),
                           torch.cat([sigma, sigma[-1:].expand(pad)]))[:len(x)]

    def train(self, mode: bool = True) -> "ExportedDenoiser":
        self.training = mode
        return self


def batch_range(program: "torch.export.ExportedProgram") -> tuple[int, int | None]:
    """The batch sizes a program's graph accepts, (min, max or None for no bound): its first input's
    dimension 0 as exported, a constant ``b`` giving (b, b), a ``torch.export.Dim`` its range."""
    first = program.graph_signature.user_inputs[0]
    value = next(node.meta["val"] for node in program.graph.nodes if node.op == "placeholder" and node.name == first)
    size = value.shape[0]
    if isinstance(size, int):
        return size, size
    bounds = program.range_constraints[size.node.expr]
    return int(bounds.lower), (int(bounds.upper) if bounds.upper < sys.maxsize else None)


AOTI_REFUSAL = "an AOTInductor package, not a torch.export program: import the program it was compiled from " \
               "(torch.export.save)"


def archive_kind(path: str | Path) -> str:
    """What a model file is, by the zip archive that each of PyTorch's savers writes: ``"program"`` (a
    ``torch.export.save`` archive, holding ``archive_format``), ``"aoti"`` (an AOTInductor package: compiled
    code under ``data/aotinductor/``), ``"torchscript"`` (``torch.jit.save``: ``code/`` and ``constants.pkl``),
    ``"torch.save"`` (a pickle, ``data.pkl``, alone: weights, a checkpoint or a pickled module), or
    ``"other"``."""
    if not zipfile.is_zipfile(path):
        return "other"
    with zipfile.ZipFile(path) as archive:
        names = [name.partition("/")[2] for name in archive.namelist()]  # below the archive's top folder
    if "archive_format" in names:
        return "aoti" if any(name.startswith("data/aotinductor/") for name in names) else "program"
    if "constants.pkl" in names:
        return "torchscript"
    return "torch.save" if "data.pkl" in names else "other"


class NotAModelFile(ValueError):
    """A file that is not of the kind it is loaded as: what it is instead, and how to make one that is."""


def check_archive(path: str | Path, expected: str) -> None:
    """Refuse ``path`` unless :func:`archive_kind` is ``expected`` (``torchscript`` or ``program``), saying
    what it is."""
    kind = archive_kind(path)
    if kind == expected:
        return
    if kind == "aoti":
        raise NotAModelFile(AOTI_REFUSAL)
    wanted = {"torchscript": "a TorchScript file (torch.jit.save)", "program": "a torch.export program "
              "(torch.export.save)"}[expected]
    found = {"program": "a torch.export program (import it with --kind pt2)",
             "torchscript": "a TorchScript file (import it with --kind torchscript)",
             "torch.save": "a torch.save file (weights, a checkpoint or a pickled module), which holds no code to "
                           "run: save the model with torch.jit.save(torch.jit.script(model)) or torch.export.save",
             "other": "not an archive that any of PyTorch's savers writes"}[kind]
    raise NotAModelFile(f"not {wanted}: {found}")


def load_diffusers(path: str, device: torch.device | str = "cpu") -> DiscreteVPDenoiser:
    """A diffusers pipeline directory (``unet/`` and ``scheduler/``, as ``DDPMPipeline.save_pretrained``
    writes it) as a denoiser. Needs the ``diffusers`` extra."""
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise ImportError("importing a diffusers model needs the diffusers package: pip install "
                          "'memorize[diffusers]'") from None
    unet = UNet2DModel.from_pretrained(path, subfolder="unet").to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    return DiscreteVPDenoiser(lambda x_t, t: unet(x_t, t).sample, scheduler.alphas_cumprod,
                              scheduler.config.prediction_type).to(device)


def load_torchscript(path: str, device: torch.device | str = "cpu") -> ScriptedDenoiser:
    """A TorchScript file (``torch.jit.save``) whose module is ``D(x, sigma)``."""
    check_archive(path, "torchscript")
    with warnings.catch_warnings():  # torch deprecates TorchScript; the files people have are still this
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated")  # Deprecation- or FutureWarning
        return ScriptedDenoiser(torch.jit.load(path, map_location=device)).eval()


def load_export(path: str, device: torch.device | str = "cpu") -> ExportedDenoiser:
    """A ``torch.export.save`` file whose program is ``D(x, sigma)``, moved to ``device``; best exported with a
    dynamic batch (``dynamic_shapes`` with a ``torch.export.Dim`` for dimension 0 of both inputs), though any
    batch range runs (:class:`ExportedDenoiser`)."""
    from torch.export.passes import move_to_device_pass

    check_archive(path, "program")
    with warnings.catch_warnings():  # torch 2.11 warns that it reads the weights from read-only bytes (never written)
        warnings.filterwarnings("ignore", "The given buffer is not writable")
        # read as bytes: torch.export.load wants a file name ending in .pt2
        program = torch.export.load(io.BytesIO(Path(path).read_bytes()))
    if len(program.graph_signature.user_inputs) != 2:
        raise ValueError(f"the exported program takes {len(program.graph_signature.user_inputs)} inputs; "
                         f"expected two, x and sigma")
    return ExportedDenoiser(move_to_device_pass(program, device).module(), batch_range(program))


LOADERS = {"diffusers": load_diffusers, "torchscript": load_torchscript, "pt2": load_export}

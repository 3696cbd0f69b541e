"""Training steps as CUDA graphs: captured once, replayed every step.

A small denoiser's training step is hundreds of kernels of a few microseconds each; in eager PyTorch
the host launches them more slowly than the GPU runs them. Captured in a CUDA graph, the whole step
(forward, backward, clipping, the optimizer and the EMA) is one launch. The pattern is PyTorch's
"whole network capture" (CUDA semantics notes, "CUDA Graphs"):

1. static input tensors on the device, into which each step's draws are copied (through pinned host
   buffers, so that the copy is asynchronous);
2. an optimizer whose state and learning rate live on the device (``capturable=True``, the rate a
   tensor that the step's inputs fill);
3. a few eager warm-up steps on a side stream (they are real training steps);
4. ``torch.cuda.graph`` around one step, then ``replay()`` for this step and every later one.

A captured step reads no device value on the host: it returns the values the host checks (the loss,
the gradient norm) as a tensor, read once after the replay. :class:`StepRunner` runs a step function
this way on a CUDA device, or eagerly (on the CPU, with ``train.cuda_graph: off``, or where capture
failed, which it says in one line).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal

import torch

Inputs = dict[str, torch.Tensor | None]
StepFn = Callable[[Inputs], torch.Tensor]
WARMUP_STEPS = 3  # eager steps on a side stream before the capture (PyTorch's notes use three)


def graph_refusal(setting: Literal["auto", "off"], device: torch.device, processes: int = 1,
                  compiled: bool = False) -> str | None:
    """Why a training step on ``device`` runs eagerly rather than as a CUDA graph (None: it is captured).
    Only a CUDA device captures; ``train.cuda_graph: off`` turns it off; a step of several data-parallel
    processes (its gradient averaging runs between the processes) and a ``train.compile``d step (inductor
    has graphs of its own) stay eager."""
    if device.type != "cuda":
        return f"{device.type} device"
    if setting == "off":
        return "train.cuda_graph: off"
    if processes > 1:
        return f"{processes} data-parallel processes"
    if compiled:
        return "train.compile"
    return None


def capturable_optimizer(optimizer: torch.optim.Optimizer, lr: torch.Tensor) -> None:
    """Make ``optimizer`` (Adam or AdamW) steppable inside a CUDA graph, in place: its step counts on the
    parameters' device and its learning rate the device tensor ``lr`` (which the step's inputs fill)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        group["lr"] = lr
    for p, state in optimizer.state.items():
        if "step" in state:
            state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` as an eager optimizer writes it, whatever :func:`capturable_optimizer` did:
    learning rates as numbers, ``capturable`` off, step counts on the CPU; so a checkpoint resumes the same
    with or without graphs. The live state is not changed."""
    state = optimizer.state_dict()
    groups = [{**g, "capturable": False, "lr": float(g["lr"])} if g.get("capturable") else g
              for g in state["param_groups"]]
    per_param = {i: {**s, "step": s["step"].detach().to("cpu", torch.float32)} if torch.is_tensor(s.get("step"))
                 and s["step"].device.type != "cpu" else s for i, s in state["state"].items()}
    return {"state": per_param, "param_groups": groups}


class StaticInputs:
    """Device buffers shaped like ``example`` (None entries stay None) that a captured step reads, filled
    each step from host tensors through pinned host buffers (the copies then run asynchronously,
    ordered before the replay on the same stream). The host buffers are written again only after the
    step's values have been read, so the previous copy has finished by then."""

    def __init__(self, example: Inputs, device: torch.device):
        self.device = device
        self.tensors: Inputs = {k: None if v is None else torch.empty(v.shape, dtype=v.dtype, device=device)
                                for k, v in example.items()}
        pin = device.type == "cuda"
        self.host: Inputs = {k: None if v is None else torch.empty(v.shape, dtype=v.dtype, pin_memory=pin)
                             for k, v in example.items()}

    def load(self, values: Inputs) -> Inputs:
        for key, target in self.tensors.items():
            value = values[key]
            if (value is None) != (target is None) or (value is not None and value.shape != target.shape):
                raise ValueError(f"static input {key!r}: {None if value is None else tuple(value.shape)} does not "
                                 f"match the captured {None if target is None else tuple(target.shape)}")
            if target is not None and value.device == target.device:  # already on the device: copied there
                target.copy_(value)
            elif target is not None:
                self.host[key].copy_(value)
                target.copy_(self.host[key], non_blocking=True)
        return self.tensors


class StepRunner:
    """Runs ``fn(inputs) -> values`` (device work only; ``values`` a 1-d tensor of what the host reads) once
    per training step and returns ``values`` as floats, with one read per step.

    Unless ``eager_because`` says why not (:func:`graph_refusal`; a CUDA device captures): the inputs go
    into :class:`StaticInputs` (``on_static`` is called with them once, when they are made: e.g. to point
    the optimizer's learning rate at one of them), the first :data:`WARMUP_STEPS` calls run ``fn`` eagerly
    on a side stream, the next captures it in a CUDA graph, and that call and every later one replay it.
    Where the capture fails, a line on stderr says why and ``fn`` runs eagerly from then on, on the same
    buffers. ``before_capture`` runs just before the capture and after a failed one (e.g. to drop the
    gradients, so that the captured backward pass allocates its own). Otherwise ``fn`` runs eagerly on the
    inputs as given (moved to ``device``). :attr:`mode` says which it was."""

    def __init__(self, fn: StepFn, device: torch.device, eager_because: str | None, label: str,
                 on_static: Callable[[Inputs], None] | None = None,
                 before_capture: Callable[[], None] | None = None, warmup: int = WARMUP_STEPS,
                 what: str = "the training step"):
        self.fn, self.device, self.label, self.what = fn, device, label, what
        self.eager_because, self.capture = eager_because, eager_because is None
        self.on_static, self.before_capture, self.warmup = on_static, before_capture, warmup
        self.static: StaticInputs | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.values: torch.Tensor | None = None
        self.calls = 0
        self.fallback: str | None = None  # why the capture failed

    @property
    def mode(self) -> str:
        """How the steps ran: ``captured`` (in a CUDA graph, after the warm-up), or ``eager (why)``."""
        if self.graph is not None:
            return "captured"
        if not self.capture:
            return f"eager ({self.eager_because})"
        if self.fallback is not None:
            return f"eager (capture failed: {self.fallback})"
        return f"eager (all {self.calls} steps were warm-up steps)"

    def __call__(self, inputs: Inputs) -> list[float]:
        return self.run(inputs).tolist()

    def run(self, inputs: Inputs) -> torch.Tensor:
        """``fn(inputs)`` on the device, captured or eager as above, without reading it: a captured call
        returns the graph's output tensor, which the next replay overwrites."""
        self.calls += 1
        if not self.capture:
            moved = {k: None if v is None else v.to(self.device) for k, v in inputs.items()}
            return self.fn(moved)
        return self._graph_call(inputs)

    def _graph_call(self, inputs: Inputs) -> torch.Tensor:
        if self.static is None:
            self.static = StaticInputs(inputs, self.device)
            if self.on_static is not None:
                self.on_static(self.static.tensors)
        static = self.static.load(inputs)
        if self.graph is not None:
            self.graph.replay()
            return self.values
        if self.fallback is not None:
            return self.fn(static)
        if self.calls <= self.warmup:
            return self._side_stream(static)
        try:
            self._capture(static)
        except Exception as err:  # torch raises several kinds; the eager step is always right
            self.graph = None
            while err.__context__ is not None:  # what went wrong first (ending a failed capture raises again)
                err = err.__context__
            self.fallback = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            print(f"memorize: {self.label}: {self.what} was not captured in a CUDA graph ({self.fallback}); "
                  f"it runs eagerly", file=sys.stderr, flush=True)
            if self.before_capture is not None:
                self.before_capture()
            return self._side_stream(static)
        self.graph.replay()
        return self.values

    def _side_stream(self, static: Inputs) -> torch.Tensor:
        """``fn`` eagerly on a side stream, ordered after the copies and before the read (the warm-up the
        capture needs; PyTorch's notes)."""
        with torch.cuda.device(self.device):  # streams belong to the current device
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                values = self.fn(static)
            torch.cuda.current_stream(self.device).wait_stream(side)
        return values

    def _capture(self, static: Inputs) -> None:
        if self.before_capture is not None:
            self.before_capture()
        with torch.cuda.device(self.device):  # the capture belongs to the current device
            stream = torch.cuda.current_stream(self.device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.values = self.fn(static)
            except BaseException:
                torch.cuda.set_stream(stream)  # a capture that fails to begin or end leaves its stream current
                raise
        self.graph = graph


class GraphedCall:
    """``fn(*tensors) -> tensor`` (a denoiser's forward pass in a sampler: device work only) captured in a
    CUDA graph once per shapes and dtypes of its arguments, after :data:`WARMUP_STEPS` eager calls, and
    replayed for the rest (a :class:`StepRunner` each); on any other device ``fn`` runs as called. Each
    call returns its own tensor (the graph's output is copied, since the next replay overwrites it:
    samplers keep earlier outputs, e.g. DPM-Solver++(2M)). Arguments elsewhere than the first one's
    device are moved there first: nothing here reads the output back on the host, so a pinned host
    buffer (:class:`StaticInputs`) could be written again before its copy of the last call had run."""

    capture_on: tuple[str, ...] = ("cuda",)  # device types whose calls are captured

    def __init__(self, fn: Callable[..., torch.Tensor], label: str):
        self.fn, self.label = fn, label
        self.runners: dict[tuple, StepRunner] = {}

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        device = args[0].device
        if device.type not in self.capture_on:
            return self.fn(*args)
        args = tuple(a.to(device) for a in args)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        runner = self.runners.get(key)
        if runner is None:
            def call(inputs: Inputs, n: int = len(args)) -> torch.Tensor:
                return self.fn(*(inputs[str(i)] for i in range(n)))

            runner = self.runners[key] = StepRunner(call, device, None, self.label,
                                                    what="the sampler's denoiser call")
        return runner.run({str(i): a for i, a in enumerate(args)}).clone()

    @property
    def modes(self) -> list[str]:
        """How each captured shape ran (:attr:`StepRunner.mode`); empty where nothing was captured."""
        return [r.mode for r in self.runners.values()]

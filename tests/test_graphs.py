"""Training steps as CUDA graphs (memorize.graphs), everything but the capture itself, on the CPU: which steps
are captured, the static inputs, the warm-up / capture / replay sequence, the optimizer's device state and the
checkpoints it writes, the fallback where a capture fails. The capture is played by :class:`TracedGraph`, which
replays only the tensor work recorded at the capture, as a CUDA graph does: a step that left a host value
in its work (a learning rate, a step count, an EMA weight) trains differently from the eager one here too,
and a step that reads a device value on the host is not captured here either (:class:`HostReadRefused`).
The capture itself: tests/test_gpu.py."""

import dataclasses
import importlib

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

import memorize.graphs as graphs
import memorize.pack as pack_module
import memorize.train as train_module
from memorize.cell import CellPaths
from memorize.graphs import StaticInputs, StepRunner, graph_refusal, portable_optimizer_state
from memorize.pack import train_packed
from memorize.train import train
from tests.conftest import pack_variants, reads_on_host, same_weights


def test_only_a_cuda_step_of_one_process_that_is_not_compiled_is_captured():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert graph_refusal("auto", cuda) is None
    assert graph_refusal("auto", cpu) == "cpu device"
    assert graph_refusal("off", cuda) == "train.cuda_graph: off"
    assert graph_refusal("auto", cuda, processes=2) == "2 data-parallel processes"
    assert graph_refusal("auto", cuda, compiled=True) == "train.compile"


def test_a_checkpoint_of_a_capturable_optimizer_is_what_an_eager_one_writes():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    eager = opt.state_dict()
    expected = {"state": {i: {k: v.clone() for k, v in s.items()} for i, s in eager["state"].items()},
                "param_groups": [dict(g) for g in eager["param_groups"]]}
    lr = torch.tensor(1e-3)
    graphs.capturable_optimizer(opt, lr)
    assert all(g["capturable"] and g["lr"] is lr for g in opt.param_groups)
    portable = portable_optimizer_state(opt)
    assert portable["param_groups"][0]["lr"] == pytest.approx(1e-3) and not portable["param_groups"][0]["capturable"]
    assert opt.param_groups[0]["capturable"] and opt.param_groups[0]["lr"] is lr  # the live state is untouched
    for i, s in expected["state"].items():
        for key, value in s.items():
            assert torch.equal(portable["state"][i][key], value) and portable["state"][i][key].device.type == "cpu"
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    fresh.load_state_dict(portable)  # resumes as an eager optimizer
    assert not fresh.param_groups[0]["capturable"] and isinstance(fresh.param_groups[0]["lr"], float)


def test_static_inputs_are_filled_in_place_and_refuse_another_shape():
    static = StaticInputs({"x": torch.zeros(2, 3), "labels": None}, torch.device("cpu"))
    buffer = static.tensors["x"]
    assert static.load({"x": torch.ones(2, 3), "labels": None})["x"] is buffer and torch.equal(buffer, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"static input 'x': \(3, 3\) does not match the captured \(2, 3\)"):
        static.load({"x": torch.ones(3, 3), "labels": None})
    with pytest.raises(ValueError, match="static input 'labels'"):
        static.load({"x": torch.ones(2, 3), "labels": torch.zeros(2)})


class HostReadRefused(TorchDispatchMode):
    """What a CUDA graph's capture does where the step reads a device value on the host
    (:func:`tests.conftest.reads_on_host`): it raises, so the step would not be captured and would run eagerly
    on the GPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if reads_on_host(func, args):
            raise RuntimeError(f"{func} reads a device value on the host: not permitted while a CUDA graph is "
                               f"captured")
        return func(*args, **(kwargs or {}))


class TracedGraph:
    """A stand-in for torch.cuda.CUDAGraph on the CPU that keeps its rules. The capture records the step with
    ``make_fx`` (which runs it once, for real: that is the capture's own step, so the first replay only
    counts) and refuses a read of a device value on the host (:class:`HostReadRefused`). A replay repeats the
    tensor work recorded at the capture and nothing else: a number the host gave the step at the capture (a
    learning rate or step count as a Python float) stays what it was in every later replay, as on a GPU,
    while tensors the step reads or updates in place (the static inputs, the weights, the optimizer's state)
    are the live ones. As a CUDA graph reads fixed addresses, a replay reads the input tensors the capture
    saw, not whatever the input dict holds by then (new values reach it only through a copy into those
    tensors). Each replay writes into the capture's output tensor, as a CUDA graph does."""

    def __init__(self, runner: StepRunner, static):
        outputs = []

        def step(inputs):
            with HostReadRefused():
                outputs.append(runner.fn(inputs))
            return outputs[-1]

        self.runner, self.static, self.replays = runner, dict(static), 0
        self.module = make_fx(step)(self.static)
        runner.values = outputs[0].detach()

    def replay(self):
        self.replays += 1
        if self.replays > 1:  # the first replay's work ran at the capture
            with torch.no_grad():  # the recorded work has its backward pass written out
                self.runner.values.copy_(self.module(self.static))


def traced_capture(self, static):
    """:meth:`StepRunner._capture` on the CPU: :class:`TracedGraph`."""
    if self.before_capture is not None:
        self.before_capture()
    self.graph = TracedGraph(self, static)


@pytest.mark.parametrize("host_read", [False, True])
def test_the_stand_in_captures_a_step_that_reads_nothing_on_the_host_and_refuses_one_that_does(host_read,
                                                                                                 monkeypatch):
    """The CPU stand-in's capture fails where a GPU's would: a host read of a tensor outside the inputs (here a
    weight, read with ``float``); the step then runs eagerly. Without the read, the replays follow the weight
    as it changes in place."""
    monkeypatch.setattr(StepRunner, "_side_stream", lambda self, static: self.fn(static))
    monkeypatch.setattr(StepRunner, "_capture", traced_capture)
    weight = torch.ones(1)

    def step(inputs):
        scale = float(weight) if host_read else weight
        return (inputs["x"] * scale).sum().reshape(1)

    runner = StepRunner(step, torch.device("cpu"), None, "test")
    for value in range(1, 7):
        weight.fill_(value)
        assert runner({"x": torch.ones(2)}) == [2.0 * value]
    assert runner.mode == ("eager (capture failed: RuntimeError: aten._local_scalar_dense.default reads a device "
                           "value on the host: not permitted while a CUDA graph is captured)" if host_read
                           else "captured")


@pytest.fixture
def fake_capture(monkeypatch):
    """Steps captured on the CPU: the capture decision is a GPU's, the side stream is the CPU's, the capture a
    :class:`TracedGraph`; the optimizer made capturable as on a GPU (:func:`memorize.graphs.capturable_optimizer`:
    its step counts and learning rate device tensors), torch's list of the devices that allow it given the
    CPU. Returns the runners that captured."""
    runners = []

    def capture(self, static):
        traced_capture(self, static)
        runners.append(self)

    modules = [importlib.import_module(f"torch.optim.{name}") for name in ("optimizer", "adam")]
    supported = modules[0]._get_capturable_supported_devices
    for module in modules:
        monkeypatch.setattr(module, "_get_capturable_supported_devices",
                            lambda supports_xla=True: [*supported(supports_xla), "cpu"])
    monkeypatch.setattr(train_module, "graph_refusal",  # decided as for a GPU
                        lambda setting, device, *args, **kwargs: graph_refusal(setting, torch.device("cuda"), *args,
                                                                               **kwargs))
    monkeypatch.setattr(StepRunner, "_side_stream", lambda self, static: self.fn(static))
    monkeypatch.setattr(StepRunner, "_capture", capture)
    return runners


def _short(cfg, steps=16):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps, checkpoint_every=8,
                                                              eval_every=8, warmup_steps=6))


def test_a_captured_cell_warms_up_captures_once_and_replays_the_rest(tiny_cfg, tmp_path, fake_capture):
    """Three eager warm-up steps, one capture, 13 replays on static buffers refilled from the cell's own draws
    each step (the learning rate among them): the weights of the eager run, to the rounding of a float32 rate."""
    cfg = _short(tiny_cfg)
    assert train(cfg, tmp_path / "graph", progress=False)["step_mode"] == "captured"
    (runner,) = fake_capture
    assert runner.calls == 16 and runner.graph.replays == 13 and runner.values is not None
    assert CellPaths(tmp_path / "graph").checkpoint_steps() == [16]  # (the one at 8 rotated away)
    fake_capture.clear()
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cuda_graph="off")), tmp_path / "eager",
          progress=False)
    assert not fake_capture  # train.cuda_graph: off: nothing captured
    graph, eager = (torch.load(CellPaths(tmp_path / d).checkpoint(16), weights_only=False) for d in ("graph", "eager"))
    same_weights(graph, eager, atol=1e-6)
    assert graph["optimizer"]["param_groups"][0]["lr"] == pytest.approx(eager["optimizer"]["param_groups"][0]["lr"])


def test_a_capture_that_fails_says_why_once_and_the_cell_trains_eagerly(tiny_cfg, tmp_path, fake_capture,
                                                                        monkeypatch, capsys):
    def refuse(self, static):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(StepRunner, "_capture", refuse)
    cfg = _short(tiny_cfg)
    summary = train(cfg, tmp_path / "fallback", progress=False)
    assert summary["step_mode"] == ("eager (capture failed: RuntimeError: operation not permitted when stream is "
                                    "capturing)")
    lines = [line for line in capsys.readouterr().err.splitlines() if "CUDA graph" in line]
    assert lines == [f"memorize: {(tmp_path / 'fallback').name}: the training step was not captured in a CUDA graph "
                     f"(RuntimeError: operation not permitted when stream is capturing); it runs eagerly"]
    off = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cuda_graph="off")), tmp_path / "eager",
                progress=False)
    assert off["step_mode"] == "eager (train.cuda_graph: off)"
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(16), weights_only=False)
                   for d in ("fallback", "eager")), atol=1e-6)


def test_a_captured_pack_ends_where_the_eager_pack_ends(tiny_cfg, tmp_path, fake_capture):
    """A pack's step (losses, backward, the stacked clip / AdamW / EMA update, the rates a static input) replayed
    on static buffers gives the eager pack's weights bit for bit; a cell leaving (a shorter budget) makes the
    rest a new stack, captured anew."""
    cfgs = [_short(c) for c in pack_variants(tiny_cfg)]
    cfgs[2] = dataclasses.replace(cfgs[2], train=dataclasses.replace(cfgs[2].train, steps=8))
    summaries = train_packed(cfgs, [tmp_path / f"graph{i}" for i in range(3)])
    assert [s["step_mode"] for s in summaries] == ["captured"] * 3
    assert [r.graph.replays for r in fake_capture] == [8 - 3, 8 - 3] and len(fake_capture[0].static.tensors) == 5
    fake_capture.clear()
    off = [dataclasses.replace(c, train=dataclasses.replace(c.train, cuda_graph="off")) for c in cfgs]
    train_packed(off, [tmp_path / f"eager{i}" for i in range(3)])
    assert not fake_capture
    for i, steps in enumerate((16, 16, 8)):
        a, b = (torch.load(CellPaths(tmp_path / f"{d}{i}").checkpoint(steps), weights_only=False)
                for d in ("graph", "eager"))
        same_weights(a, b, atol=0)


def test_a_cell_whose_loss_turns_non_finite_in_a_captured_pack_leaves_and_the_others_are_untouched(
        tiny_cfg, tmp_path, fake_capture, monkeypatch):
    cfgs = [_short(c) for c in pack_variants(tiny_cfg)[:2]]
    real_losses, real_draw = pack_module.StackedCells.stacked_losses, train_module.CellTraining.draw_host
    poison = torch.zeros(())  # the first cell's loss is NaN from its step 12 on: a tensor the captured step reads

    def draw_host(self):
        if self.paths.root.name == "bad" and self.step >= 11:
            poison.fill_(1.0)
        return real_draw(self)

    def poisoned(self, inputs, base):
        losses = real_losses(self, inputs, base)
        if self.cells[0].paths.root.name == "bad":  # decided once, at the capture
            first = torch.tensor([float("nan")] + [1.0] * (len(self.cells) - 1))
            losses = losses * torch.where(poison > 0, first, torch.ones(len(self.cells)))
        return losses

    monkeypatch.setattr(pack_module.StackedCells, "stacked_losses", poisoned)
    monkeypatch.setattr(train_module.CellTraining, "draw_host", draw_host)
    bad, good = train_packed(cfgs, [tmp_path / "bad", tmp_path / "good"])
    assert isinstance(bad, train_module.NonFiniteLossError) and "at step 12" in str(bad)
    assert good["steps"] == 16 and CellPaths(tmp_path / "bad").checkpoint_steps() == [8]
    monkeypatch.undo()
    train(cfgs[1], tmp_path / "alone", progress=False)
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(16), weights_only=False)
                   for d in ("good", "alone")), atol=1e-5)


class TinyDenoiser(torch.nn.Module):
    def __init__(self, classes: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.embed = torch.nn.Embedding(classes + 1, 1) if classes else None

    def forward(self, x, sigma, labels=None):
        out = self.conv(x) / (1 + sigma**2) + x * sigma**2 / (1 + sigma**2)
        return out if labels is None else out + self.embed(labels.clamp(min=0))[:, :, None, None]


def unet_denoiser(tiny_cfg, classes: int) -> torch.nn.Module:
    """The project's denoiser (preconditioning around the tiny cell's U-Net), with a null label where it has
    classes (for guidance)."""
    from memorize.cell import build_denoiser

    cfg = tiny_cfg
    if classes:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, labels="true"),
                                  train=dataclasses.replace(cfg.train, label_dropout=0.1))
    torch.manual_seed(0)
    return build_denoiser(cfg, (1, 8, 8), classes, 0.5).eval()


@pytest.mark.parametrize("sampler, guidance, network", [("heun", 0.0, "tiny"), ("dpm_solver_2m", 0.0, "tiny"),
                                                        ("ddim", 0.0, "tiny"), ("heun", 1.5, "tiny"),
                                                        ("heun", 0.0, "unet"), ("heun", 1.5, "unet")])
def test_a_sampler_with_captured_denoiser_calls_draws_the_eager_samples_bit_for_bit(sampler, guidance, network,
                                                                                     tiny_cfg, monkeypatch):
    """Each batch shape captured once (batches of 4, 4 and 2: two graphs) after three eager calls, the rest
    replayed into one output tensor; DPM-Solver++(2M) keeps the previous output and guidance calls the
    network twice per step, so an output not copied out of the graph would change the samples. With the
    project's own denoiser too, whose forward pass must read nothing on the host to be captured."""
    import memorize.sampling as sampling_module
    from memorize.config import SampleConfig
    from memorize.graphs import GraphedCall
    from memorize.sampling import generate, sample_seeds

    made = []

    class Recording(GraphedCall):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(sampling_module, "GraphedCall", Recording)
    monkeypatch.setattr(GraphedCall, "capture_on", ("cpu",))
    monkeypatch.setattr(StepRunner, "_side_stream", lambda self, static: self.fn(static))
    monkeypatch.setattr(StepRunner, "_capture", traced_capture)
    classes = 3 if guidance else 0
    net = TinyDenoiser(classes) if network == "tiny" else unet_denoiser(tiny_cfg, classes)
    cfg = SampleConfig(sampler=sampler, steps=8, num=10, batch_size=4, guidance=guidance)
    seeds = sample_seeds(0, range(10))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]) if guidance else None
    eager = generate(net, (1, 8, 8), seeds, cfg, labels=labels, progress=False)
    assert not made
    graphed = generate(net, (1, 8, 8), seeds, cfg, labels=labels, progress=False, cuda_graph="auto")
    (call,) = made
    assert torch.equal(graphed, eager)
    assert call.modes == ["captured", "captured"] and all(r.graph.replays > 0 for r in call.runners.values())


def test_a_graphed_call_moves_its_arguments_to_the_device_before_they_reach_the_graphs_buffers(monkeypatch):
    """A sampler's call reads nothing back, so an argument copied through a pinned host buffer could be
    overwritten by the next call before its copy ran: every argument reaches the static buffers from the
    device (here the meta device stands in for a GPU)."""
    from memorize.graphs import GraphedCall

    seen = []
    load = StaticInputs.load
    monkeypatch.setattr(StaticInputs, "load", lambda self, values: seen.append(
        {k: v.device.type for k, v in values.items()}) or load(self, values))
    monkeypatch.setattr(GraphedCall, "capture_on", ("meta",))
    monkeypatch.setattr(StepRunner, "_side_stream", lambda self, static: self.fn(static))
    call = GraphedCall(lambda x, sigma: x * sigma, "test")
    out = call(torch.zeros(2, 3, device="meta"), torch.tensor(0.5))
    assert out.device.type == "meta" and out.shape == (2, 3)
    assert seen == [{"0": "meta", "1": "meta"}]


def test_a_captured_cell_resumed_from_its_checkpoint_ends_where_one_eager_run_ends(tiny_cfg, tmp_path, fake_capture):
    """Eight captured steps, a checkpoint (written as an eager optimizer writes it), a new run that resumes it,
    makes the optimizer capturable again and captures anew for the last eight: the weights of one eager run."""
    cfg = _short(tiny_cfg)
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8))
    assert train(half, tmp_path / "graph", progress=False)["step_mode"] == "captured"
    assert train(cfg, tmp_path / "graph", progress=False)["step_mode"] == "captured"
    assert [r.calls for r in fake_capture] == [8, 8] and [r.graph.replays for r in fake_capture] == [5, 5]
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cuda_graph="off")), tmp_path / "eager",
          progress=False)
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(16), weights_only=False)
                   for d in ("graph", "eager")), atol=1e-6)


def test_a_captured_pack_resumed_from_its_checkpoints_ends_where_the_eager_pack_ends(tiny_cfg, tmp_path,
                                                                                     fake_capture):
    cfgs = [_short(c) for c in pack_variants(tiny_cfg)[:2]]
    halves = [dataclasses.replace(c, train=dataclasses.replace(c.train, steps=8)) for c in cfgs]
    roots = [tmp_path / f"graph{i}" for i in range(2)]
    train_packed(halves, roots)
    assert [s["step_mode"] for s in train_packed(cfgs, roots)] == ["captured"] * 2
    assert [r.graph.replays for r in fake_capture] == [5, 5]
    off = [dataclasses.replace(c, train=dataclasses.replace(c.train, cuda_graph="off")) for c in cfgs]
    train_packed(off, [tmp_path / f"eager{i}" for i in range(2)])
    for i in range(2):
        same_weights(*(torch.load(CellPaths(tmp_path / f"{d}{i}").checkpoint(16), weights_only=False)
                       for d in ("graph", "eager")), atol=0)

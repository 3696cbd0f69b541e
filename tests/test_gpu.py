"""The CUDA paths against known answers and against the CPU. Deselected by default (they need a
GPU); on a GPU machine: ``python -m pytest -m gpu``. The search backends' GPU cases live in
test_metrics.py (``torch-cuda``), marked the same way."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from memorize.config import ModelConfig, SampleConfig
from memorize.diffusion import Denoiser
from memorize.empirical import empirical_denoiser
from memorize.models import build_network
from memorize.sampling import generate, sample_seeds
from memorize.sweep import collect, load_spec, run_sweep
from memorize.sweep.job import run_cell
from memorize.sweep.spec import ScoreConfig
from memorize.train import train
from tests.conftest import brute_force
from tests.conftest import TINY_SPEC, write_spec

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("test marked gpu run without a CUDA GPU (run `pytest -m gpu` on a GPU machine only)")
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    # global switches: a test that leaves them changed changes the kernels of every test after it
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == flags, "cuDNN flags left changed"


@pytest.mark.parametrize("sigma", [80.0, 0.5, 0.002])
def test_empirical_denoiser_on_cuda_matches_float64_brute_force(sigma):
    gen = torch.Generator().manual_seed(0)
    train_set = torch.rand(300, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    train_set[10] = train_set[3] + 1e-3 * torch.randn(3, 8, 8, generator=gen, dtype=torch.float64)
    x = train_set[:16] + sigma * torch.randn(16, 3, 8, 8, generator=gen, dtype=torch.float64)
    got = empirical_denoiser(train_set.cuda(), chunk_size=64)(x.cuda(), sigma)
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), brute_force(train_set, x, sigma), rtol=1e-5, atol=1e-9)


def test_empirical_float32_on_cuda_picks_the_nearest_image_at_small_sigma():
    gen = torch.Generator().manual_seed(4)
    train_set = torch.rand(2000, 3, 32, 32, generator=gen) * 2 - 1
    train_set[1] = train_set[0] + 0.02 * torch.randn(3, 32, 32, generator=gen)  # a near-duplicate pair
    queries = train_set[:64] + 0.002 * torch.randn(64, 3, 32, 32, generator=gen)
    out = empirical_denoiser(train_set.cuda(), chunk_size=512, dtype=torch.float32)(queries.cuda(), 0.002).cpu()
    torch.testing.assert_close(out, train_set[:64], atol=1e-4, rtol=0)


@pytest.fixture
def full_float32_convolutions():
    """cuDNN convolutions in full float32 (PyTorch's default lets them use TF32) for tight comparisons."""
    conv = torch.backends.cudnn.conv if hasattr(torch.backends.cudnn, "conv") else None
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        saved, conv.fp32_precision = conv.fp32_precision, "ieee"
        yield
        conv.fp32_precision = saved
    else:
        saved, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
        yield
        torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic algorithms, not autotuned, for this test only (the flags are global: a test
    that set them and left them would change every later test's kernels)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def random_unet() -> torch.nn.Module:
    """A U-Net whose zero-initialised output layers are perturbed, so that it computes something."""
    torch.manual_seed(0)
    net = build_network(ModelConfig(channels=16, channel_mult=(1, 2)), (3, 16, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("noise", ["generator", "counter"])
@pytest.mark.parametrize("sampler", ["heun", "ddim", "ddpm", "euler_maruyama"])
def test_samplers_on_cuda_match_the_cpu_for_the_same_seeds(sampler, noise, full_float32_convolutions):
    """Same seeds, same samples on either device (generator: noise drawn on the CPU per sample; counter: the
    same integer streams computed on each device); the empirical denoiser of one image returns that image."""
    net = random_unet()
    cfg = SampleConfig(sampler=sampler, steps=10, num=8, batch_size=8, eta=0.5, churn=1.0, noise=noise)
    seeds = sample_seeds(0, range(8))
    on_cpu = generate(Denoiser(net).eval(), (3, 16, 16), seeds, cfg, "cpu", progress=False)
    on_gpu = generate(Denoiser(net).eval().cuda(), (3, 16, 16), seeds, cfg, "cuda", progress=False)
    x_hat = Denoiser(net).cpu()(torch.zeros(1, 3, 16, 16), torch.tensor(1.0))
    assert x_hat.abs().max() > 0.01  # the network is not the zero function: the comparison means something
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=0)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    out = generate(empirical_denoiser(image.cuda()), (3, 16, 16), seeds, cfg, "cuda", progress=False)
    torch.testing.assert_close(out, image.expand(8, -1, -1, -1), atol=1e-5, rtol=0)


def test_counter_noise_on_cuda_is_the_cpus_to_float64_rounding():
    from memorize.sampling import CounterNoise

    seeds = sample_seeds(3, range(64))
    on_cpu, on_gpu = (CounterNoise(seeds, (3, 32, 32), device, torch.float64) for device in ("cpu", "cuda"))
    for _ in range(3):
        torch.testing.assert_close(on_gpu().cpu(), on_cpu(), atol=1e-12, rtol=0)


def _tiny_cuda_cfg(tiny_cfg, amp: bool):
    return dataclasses.replace(tiny_cfg, train=dataclasses.replace(
        tiny_cfg.train, device="cuda", amp=amp, steps=400, checkpoint_every=200, log_every=50, eval_every=200))


def test_training_on_cuda_learns_with_and_without_bf16_autocast(tiny_cfg, tmp_path):
    """bf16 autocast (train.amp) reaches about the float32 run's held-out loss."""
    final = {}
    for amp in (False, True):
        summary = train(_tiny_cuda_cfg(tiny_cfg, amp), tmp_path / f"amp{amp}", progress=False)
        assert summary["device"].startswith("cuda")
        log = pd.read_csv(tmp_path / f"amp{amp}" / "loss.csv")
        losses = log["running_loss"].dropna().to_numpy()
        assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
        final[amp] = log["heldout_loss"].dropna().iloc[-1]
    assert abs(final[True] - final[False]) < 0.15 * final[False], final


def test_a_cell_runs_end_to_end_on_cuda(tiny_cfg, tmp_path):
    """Train, sample, score (torch-cuda search) and compare (empirical denoiser on the GPU)."""
    from memorize.metrics.search import search_backend

    (summary,) = run_cell(tmp_path / "cell", [_tiny_cuda_cfg(tiny_cfg, True)], ScoreConfig(compare=True))
    assert summary["search_backend"] == search_backend("cuda")  # faiss-gpu where installed, else torch-cuda
    assert 0.0 <= summary["mem_nn"] <= 1.0 and np.isfinite(summary["train_loss"])


def test_cuda_rng_state_is_checkpointed_so_dropout_resumes_exactly(tiny_cfg, tmp_path, deterministic_cudnn):
    """Dropout on the GPU draws from the CUDA generator: a run resumed from a checkpoint ends where an
    uninterrupted one ends only if that generator's state is saved and restored."""
    cfg = _tiny_cuda_cfg(tiny_cfg, False)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.3),
                              train=dataclasses.replace(cfg.train, steps=40, checkpoint_every=20, eval_every=40))
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=20))
    train(short, tmp_path / "resumed", progress=False)
    torch.cuda.manual_seed_all(12345)  # a resumed process starts from another CUDA generator state
    train(cfg, tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "straight", progress=False)
    a = torch.load(tmp_path / "resumed" / "checkpoints" / "step-0000040.pt", weights_only=False)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "step-0000040.pt", weights_only=False)
    assert a["cuda_rng"] is not None
    for name, tensor in b["model"].items():
        torch.testing.assert_close(a["model"][name], tensor, rtol=0, atol=1e-6)


def test_a_local_sweep_trains_on_the_gpu(tmp_path):
    """Cells launched by the local executor see the GPU (submitit hides it unless told), so
    ``train.device: auto`` trains there and scoring searches there."""
    out = tmp_path / "sweep"
    report = run_sweep(load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [16], "seed": [0]})), out,
                       "local", progress=False)
    assert report["launched"] == 1 and report["failed"] == 0, report
    (cell,) = (out / "cells").iterdir()
    assert json.loads((cell / "train.json").read_text())["device"].startswith("cuda")
    from memorize.metrics.search import search_backend

    assert collect(out).search_backend.tolist() == [search_backend("cuda")]


def test_packed_cells_on_cuda_end_where_separate_runs_end(tiny_cfg, tmp_path, full_float32_convolutions,
                                                         deterministic_cudnn):
    """The stacked clip, AdamW and EMA on the GPU: three cells (different N, seed, budget, lr, weight decay,
    clip, EMA decay, sigma_data) trained together equal their separate runs on the GPU; sampled together
    there, each cell's samples equal the ones it draws alone. Grouped and single convolutions are
    different kernels whatever cuDNN picks: the tolerance is the pack tests' float32 one, with cuDNN held
    to its deterministic algorithms so that its autotuning cannot pick a kernel of another summation order
    from one run to the next."""
    from memorize.cell import CellPaths
    from memorize.generate import read_samples, sample_cell
    from memorize.pack import sample_packed, train_packed
    from tests.conftest import pack_variants, same_weights

    cfgs = [dataclasses.replace(c, train=dataclasses.replace(c.train, device="cuda", amp=False))
            for c in pack_variants(tiny_cfg)]
    roots = [tmp_path / f"packed{i}" for i in range(3)]
    train_packed(cfgs, roots)
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone{i}", progress=False)
        same_weights(*(torch.load(CellPaths(tmp_path / f"{kind}{i}").latest_checkpoint(), weights_only=False,
                                   map_location="cpu") for kind in ("packed", "alone")), atol=1e-4)
    sample = dataclasses.replace(cfgs[0].sample, num=9, batch_size=4)
    packed = sample_packed(roots, sample, name="together", device="cuda")
    for i, root in enumerate(roots):
        alone = sample_cell(root, sample, name="alone", device="cuda", progress=False)
        np.testing.assert_allclose(read_samples(packed[i])["samples"], read_samples(alone)["samples"], atol=1e-4,
                                   rtol=0)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 20.0])
def test_local_score_machines_on_cuda_match_the_cpu_in_float64(sigma):
    from memorize.local_score import EquivariantLocalScoreDenoiser, LocalScoreDenoiser

    gen = torch.Generator().manual_seed(0)
    train_set = torch.rand(40, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    x = train_set[:6] + sigma * torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64)
    for machine in (LocalScoreDenoiser, EquivariantLocalScoreDenoiser):
        cpu = machine(train_set, 5)(x, sigma)
        gpu = machine(train_set.cuda(), 5)(x.cuda(), sigma).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-9)


def test_attention_on_cuda_runs_a_fused_sdpa_kernel(tiny_cfg):
    """The 4-D q/k/v of the U-Net's attention take a fused kernel: the math fallback alone refuses them."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from memorize.models.unet import AttentionBlock

    block = AttentionBlock(32, heads=2).cuda().half()
    x = torch.randn(4, 32, 8, 8, device="cuda", dtype=torch.half)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        assert block(x).shape == x.shape


def test_packed_cells_under_bf16_autocast_take_the_first_step_of_the_cells_alone(tiny_cfg, tmp_path):
    """train.amp (bf16): the wide network's per-cell losses and gradients at one step equal each cell's own
    under the same autocast to bf16 precision (every grouped layer runs in the dtype a network alone runs
    it in: tests/test_wide.py checks the dtypes on the CPU's autocast). Over many steps bf16 runs drift
    apart as any two bf16 runs with different kernels do, so the step is what is held."""
    from memorize.pack import StackedCells
    from memorize.train import CellTraining

    cfgs = [dataclasses.replace(tiny_cfg, seed=s, data=dataclasses.replace(tiny_cfg.data, n_train=n),
                                train=dataclasses.replace(tiny_cfg.train, device="cuda", amp=True))
            for s, n in ((0, 8), (1, 16), (2, 24))]
    cells = [CellTraining(c, tmp_path / str(i)) for i, c in enumerate(cfgs)]
    for cell in cells:
        for p in cell.denoiser.net.parameters():
            torch.nn.init.normal_(p, std=0.1)
    batches = [c.draw() for c in cells]
    stack = StackedCells(cells)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        together = stack.losses(batches, cells[0].denoiser.net)
    together.sum().backward()
    for k, (cell, b) in enumerate(zip(cells, batches)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            alone = cell.loss(b.x0, b.sigma, b.noise, b.labels).mean()
        alone.backward()
        torch.testing.assert_close(together[k].float(), alone.float(), rtol=2e-2, atol=1e-3)
        for name, p in cell.denoiser.net.named_parameters():
            torch.testing.assert_close(stack.params[name].grad[k], p.grad, rtol=5e-2, atol=5e-3, msg=name)


def test_a_sweep_cell_on_two_gpus_trains_data_parallel_over_nccl(tmp_path):
    """--processes-per-cell 2 on two GPUs: one job of two tasks, NCCL between them, each rank on its own GPU;
    the weights of the one-GPU run of the same sweep up to rounding (summation order; the jobs run with
    PyTorch's default TF32 convolutions): their difference is under 5% of what the last ten steps moved."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two GPUs; {torch.cuda.device_count()} visible (NCCL refuses two ranks on one GPU)")
    base = {**TINY_SPEC["base"], "train": {**TINY_SPEC["base"]["train"], "keep_all_checkpoints": True}}
    spec = load_spec(write_spec(tmp_path / "s.yaml", grid={"data.n_train": [16]}, base=base))
    one = run_sweep(spec, tmp_path / "one", "local", parallel=1, progress=False)
    two = run_sweep(spec, tmp_path / "two", "local", processes=2, progress=False)
    assert one["failed"] == two["failed"] == 0 and two["launched"] == 1
    (cell,) = (tmp_path / "two" / "cells").iterdir()

    def weights(run: str, step: int) -> torch.Tensor:
        state = torch.load(tmp_path / run / "cells" / cell.name / "checkpoints" / f"step-{step:07d}.pt",
                           weights_only=False)["model"]
        return torch.cat([t.flatten().float() for t in state.values()])

    moved = (weights("one", 20) - weights("one", 10)).norm()
    assert (weights("two", 20) - weights("one", 20)).norm() < 0.05 * moved


@pytest.mark.parametrize("labels", ["none", "true"])
def test_a_cell_trains_in_a_cuda_graph_to_the_eager_runs_weights(tiny_cfg, tmp_path, full_float32_convolutions,
                                                                 deterministic_cudnn, labels):
    """train.cuda_graph auto: three eager warm-up steps, then every step one replay of the captured step; the
    weights, EMA and AdamW moments end where train.cuda_graph off ends them (capturable AdamW's arithmetic on
    device tensors differs from the eager one in rounding only), and the checkpoint resumes eagerly."""
    from memorize.cell import CellPaths
    from tests.conftest import same_weights

    cfg = _tiny_cuda_cfg(tiny_cfg, False)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, labels=labels),
                              train=dataclasses.replace(cfg.train, steps=60, checkpoint_every=30, eval_every=30,
                                                        label_dropout=0.2 if labels == "true" else 0.0))
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cuda_graph="off"))
    assert train(cfg, tmp_path / "graph", progress=False)["step_mode"] == "captured"
    assert train(off, tmp_path / "eager", progress=False)["step_mode"] == "eager (train.cuda_graph: off)"
    same_weights(*(torch.load(CellPaths(tmp_path / d).checkpoint(60), weights_only=False, map_location="cpu")
                   for d in ("graph", "eager")), atol=1e-4)
    longer = dataclasses.replace(off, train=dataclasses.replace(off.train, steps=70))
    train(longer, tmp_path / "graph", progress=False)  # a graph run's checkpoint resumed without graphs
    assert CellPaths(tmp_path / "graph").checkpoint_steps()[-1] == 70


def test_a_pack_trains_in_a_cuda_graph_to_the_eager_packs_weights(tiny_cfg, tmp_path, full_float32_convolutions,
                                                                 deterministic_cudnn):
    from memorize.cell import CellPaths
    from memorize.pack import train_packed
    from tests.conftest import pack_variants, same_weights

    cfgs = [dataclasses.replace(c, train=dataclasses.replace(c.train, device="cuda", amp=False))
            for c in pack_variants(tiny_cfg)]
    graph = train_packed(cfgs, [tmp_path / f"graph{i}" for i in range(3)])
    assert [s["step_mode"] for s in graph] == ["captured"] * 3
    off = [dataclasses.replace(c, train=dataclasses.replace(c.train, cuda_graph="off")) for c in cfgs]
    train_packed(off, [tmp_path / f"eager{i}" for i in range(3)])
    for i in range(3):
        same_weights(*(torch.load(CellPaths(tmp_path / f"{d}{i}").latest_checkpoint(), weights_only=False,
                                  map_location="cpu") for d in ("graph", "eager")), atol=1e-4)


def test_a_failed_capture_on_the_gpu_says_why_and_trains_eagerly(tiny_cfg, tmp_path, monkeypatch, capsys):
    import memorize.graphs as graphs

    class Refusing(torch.cuda.CUDAGraph):
        def capture_begin(self, *args, **kwargs):
            raise RuntimeError("refused for the test")

    monkeypatch.setattr(graphs.torch.cuda, "CUDAGraph", Refusing)
    cfg = _tiny_cuda_cfg(tiny_cfg, False)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=20, checkpoint_every=10, eval_every=10))
    summary = train(cfg, tmp_path / "cell", progress=False)
    assert summary["step_mode"].startswith("eager (capture failed: RuntimeError: refused for the test")
    assert capsys.readouterr().err.count("was not captured in a CUDA graph") == 1
    assert summary["steps"] == 20 and np.isfinite(summary["train_loss"])


@pytest.mark.parametrize("sampler", ["heun", "dpm_solver_2m"])
def test_a_trained_networks_samples_with_captured_denoiser_calls_are_the_eager_ones(tiny_cfg, sampler,
                                                                                     full_float32_convolutions,
                                                                                     deterministic_cudnn):
    """generate(cuda_graph="auto") on the GPU: every batch shape captured after three eager calls, replayed after;
    the samples are the eager run's (the same kernels on the same inputs)."""
    from memorize.cell import build_denoiser
    from memorize.config import SampleConfig
    from memorize.sampling import generate, sample_seeds

    torch.manual_seed(0)
    net = build_denoiser(tiny_cfg, (1, 8, 8), 0, 0.5).cuda().eval()
    cfg = SampleConfig(sampler=sampler, steps=12, num=40, batch_size=16)
    seeds = sample_seeds(0, range(40))
    eager = generate(net, (1, 8, 8), seeds, cfg, "cuda", progress=False)
    graphed = generate(net, (1, 8, 8), seeds, cfg, "cuda", progress=False, cuda_graph="auto")
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-5)


def test_an_exported_denoiser_loaded_on_cuda_gives_the_cpu_answer(tmp_path):
    """A torch.export file loaded onto the GPU (torch's move_to_device_pass), with a convolution so that
    weights move too, against the same file on the CPU."""
    from memorize.models.external import load_export
    from tests.test_external import export_to

    torch.manual_seed(0)
    export_to(tmp_path / "conv.pt2", ConvDenoiser().eval())
    x, sigma = torch.randn(5, 1, 8, 8), torch.rand(5) + 0.1
    with torch.no_grad():
        expected = load_export(str(tmp_path / "conv.pt2"))(x, sigma)
        got = load_export(str(tmp_path / "conv.pt2"), "cuda")(x.cuda(), sigma.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)


class ConvDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.conv(x) / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

"""Denoisers trained elsewhere: the diffusers, TorchScript and torch.export wrappers against the libraries' own
predictions, and an imported model used as a cell by sample, score and compare."""

import io
import json
import shutil

import numpy as np
import pytest
import torch

from memorize.cli import main
from memorize.generate import read_samples
from memorize.models.external import DiscreteVPDenoiser, discrete_sigmas, sigma_to_timestep

# The TorchScript files people have are what these tests make; torch 2.14 warns that making them is deprecated.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated")  # Deprecation- or FutureWarning


def tiny_pipeline(path, prediction: str = "epsilon", seed: int = 0):
    """A randomly initialised UNet2DModel for 1x8x8 images on a 100-step DDPM schedule, saved as a pipeline
    (skips the test where the diffusers extra is not installed)."""
    diffusers = pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=4)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type=prediction, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return unet.eval(), scheduler


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_the_wrapped_unet_is_the_schedulers_own_x0_prediction_at_its_timesteps(tmp_path, prediction):
    from memorize.models.external import load_diffusers

    unet, scheduler = tiny_pipeline(tmp_path / "pipe", prediction)
    denoiser = load_diffusers(str(tmp_path / "pipe"))
    sigmas = discrete_sigmas(scheduler.alphas_cumprod)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 8, 8, generator=gen) * 2 - 1
    for t in (0, 17, 60, 99):
        noise = torch.randn(x0.shape, generator=gen)
        x_t = scheduler.add_noise(x0, noise, torch.tensor([t]))
        with torch.no_grad():
            expected = scheduler.step(unet(x_t, t).sample, t, x_t).pred_original_sample
            # our convention: x = x_t / sqrt(abar_t) = x0 + sigma_t eps
            got = denoiser(x_t / scheduler.alphas_cumprod[t].sqrt(), float(sigmas[t]))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fractional_timesteps_interpolate_in_log_sigma_and_clamp_at_the_ends():
    abar = torch.tensor([0.99, 0.9, 0.5, 0.1])
    log_sigmas = discrete_sigmas(abar).log()
    sigmas = log_sigmas.exp()
    mid = float((log_sigmas[1] + log_sigmas[2]) / 2)
    t = sigma_to_timestep(torch.tensor([float(sigmas[1]), np.exp(mid), 1e-6, 1e6]), log_sigmas)
    torch.testing.assert_close(t, torch.tensor([1.0, 1.5, 0.0, 3.0], dtype=torch.float64))
    seen = []
    DiscreteVPDenoiser(lambda x, t: seen.append(t) or x, abar, "sample")(torch.zeros(2, 1, 2, 2), np.exp(mid))
    torch.testing.assert_close(seen[0], torch.tensor([1.5, 1.5]))


class HalfwayDenoiser(torch.nn.Module):
    """A TorchScript-able D(x, sigma): the exact denoiser of x0 ~ N(0, 0.05^2 I) (Wiener filter), so its
    samples are draws of that Gaussian."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * 0.0025 / (0.0025 + sigma.reshape(-1, 1, 1, 1) ** 2)


def test_a_torchscript_denoiser_imported_as_a_cell_samples_scores_and_compares(tmp_path, capsys):
    model = tmp_path / "halfway.pt"
    torch.jit.save(torch.jit.script(HalfwayDenoiser()), str(model))
    cell = tmp_path / "cell"
    sets = ["--set", "data.n_train=24", "--set", "data.n_heldout=100", "--set", "sample.num=8",
            "--set", "sample.steps=64"]
    assert main(["import", str(model), "--out", str(cell)] + sets) == 0
    assert "imported as a cell" in capsys.readouterr().out
    assert main(["import", str(model), "--out", str(cell)] + sets) == 0  # the same import again: a no-op
    assert main(["sample", str(cell), "--quiet"]) == 0
    drawn = read_samples(cell / "samples" / "trained.npz")
    assert drawn["samples"].shape == (8, 1, 8, 8) and drawn["settings"]["checkpoint_step"] == 0
    # draws of N(0, 0.05^2): their spread is 0.05 up to Heun's bias and the sampling error
    assert 0.035 < drawn["samples"].std() < 0.07
    assert main(["score", str(cell), "--features", "pixel", "--quiet"]) == 0
    assert json.loads((cell / "scores" / "trained.json").read_text())["nn"]["ratio"] == 0.0
    assert main(["compare", str(cell), "--n-eval", "16", "--quiet"]) == 0
    assert json.loads((cell / "compare" / "compare.json").read_text())["mem_nn_trained"] == 0.0
    # training into it is refused in one line (not a list of every training field an import lacks)
    capsys.readouterr()
    assert main(["train", "--out", str(cell), "--set", "data.n_train=24", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"memorize train: error: {cell} holds a denoiser imported with `memorize import` (torchscript), which "
        f"memorize samples, scores and compares but does not train; train into another --out"]
    assert not (cell / "checkpoints" / "step-0000001.pt").exists()


def export_to(path, module, batch_dynamic: bool = True, batch: int = 4, low: int = 0, high: int | None = None) -> None:
    """``module`` as a torch.export file for 1x8x8 images, its batch dimension dynamic in [low, high] or fixed at
    ``batch``."""
    dim = torch.export.Dim("batch", min=low) if high is None else torch.export.Dim("batch", min=low, max=high)
    shapes = ({0: dim}, {0: dim}) if batch_dynamic else None
    program = torch.export.export(module, (torch.zeros(batch, 1, 8, 8), torch.ones(batch)), dynamic_shapes=shapes)
    buffer = io.BytesIO()  # torch.export.save logs a warning for a file name not ending in .pt2
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


class NoisyHalfway(torch.nn.Module):
    """HalfwayDenoiser behind a dropout layer: exported in eval mode, the dropout is not in the graph."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.drop(HalfwayDenoiser()(x, sigma))


def test_a_torch_export_denoiser_is_the_exported_module_at_any_batch_and_stays_in_its_mode(tmp_path):
    from memorize.external_cell import detect_kind
    from memorize.models.external import load_export

    export_to(tmp_path / "halfway.pt2", NoisyHalfway().eval())
    (tmp_path / "renamed.pt").write_bytes((tmp_path / "halfway.pt2").read_bytes())
    torch.jit.save(torch.jit.script(HalfwayDenoiser()), str(tmp_path / "scripted.pt"))
    assert [detect_kind(tmp_path / n) for n in ("halfway.pt2", "renamed.pt", "scripted.pt")] == \
        ["pt2", "pt2", "torchscript"]
    denoiser = load_export(str(tmp_path / "renamed.pt")).train()  # train() must not reach the graph
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 3, 64):
        x = torch.randn(batch, 1, 8, 8, generator=gen)
        sigma = torch.rand(batch, generator=gen) + 0.01
        expected = x * 0.0025 / (0.0025 + sigma.reshape(-1, 1, 1, 1) ** 2)  # the Wiener filter, no dropout
        torch.testing.assert_close(denoiser(x, sigma), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(denoiser(x, 0.5), x * 0.0025 / 0.2525, rtol=1e-6, atol=0)  # a scalar sigma


@pytest.mark.parametrize("dynamic, low, high, expected", [
    (False, 0, None, (4, 4)), (True, 3, 16, (3, 16)), (True, 0, None, (0, None))])
def test_a_torch_export_denoiser_runs_any_batch_whatever_batch_range_it_was_exported_for(tmp_path, dynamic, low,
                                                                                         high, expected):
    """A batch outside the graph's range is chunked to its max and padded to its min (the graph's guards raise on
    any other batch); the output is the Wiener filter of every image, and a fixed-batch file imports as a cell."""
    from memorize.models.external import batch_range, load_export

    export_to(tmp_path / "halfway.pt2", HalfwayDenoiser(), batch_dynamic=dynamic, low=low, high=high)
    denoiser = load_export(str(tmp_path / "halfway.pt2"))
    assert denoiser.batches == expected == batch_range(torch.export.load(str(tmp_path / "halfway.pt2")))
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 2, 4, 17, 64):
        x = torch.randn(batch, 1, 8, 8, generator=gen)
        sigma = torch.rand(batch, generator=gen) + 0.01
        expected_x0 = x * 0.0025 / (0.0025 + sigma.reshape(-1, 1, 1, 1) ** 2)
        torch.testing.assert_close(denoiser(x, sigma), expected_x0, rtol=1e-6, atol=0)
    assert denoiser(torch.zeros(0, 1, 8, 8), torch.ones(0)).shape == (0, 1, 8, 8)
    assert main(["import", str(tmp_path / "halfway.pt2"), "--out", str(tmp_path / "cell"), "--set",
                 "data.n_train=8", "--set", "data.n_heldout=50"]) == 0


def test_a_torch_export_denoiser_moves_to_the_device_it_is_loaded_for(tmp_path):
    """Weights and the graph's own constants move (torch's move_to_device_pass): the meta device stands in for
    a GPU here; tests/test_gpu.py checks the numbers on CUDA."""
    from memorize.models.external import load_export

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * torch.ones(1) / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    export_to(tmp_path / "scaled.pt2", Scaled().eval())
    denoiser = load_export(str(tmp_path / "scaled.pt2"), "meta")
    assert {p.device.type for p in denoiser.parameters()} == {"meta"}
    assert denoiser(torch.zeros(3, 1, 8, 8, device="meta"), torch.ones(3, device="meta")).device.type == "meta"


def test_a_torch_export_denoiser_imported_as_a_cell_samples_and_compares(tmp_path):
    export_to(tmp_path / "halfway.pt2", HalfwayDenoiser())
    cell = tmp_path / "cell"
    assert main(["import", str(tmp_path / "halfway.pt2"), "--out", str(cell), "--set", "data.n_train=24",
                 "--set", "data.n_heldout=100", "--set", "sample.num=8", "--set", "sample.steps=64"]) == 0
    assert torch.load(cell / "checkpoints" / "step-0000000.pt")["external"]["kind"] == "pt2"
    assert main(["sample", str(cell), "--quiet"]) == 0
    samples = read_samples(cell / "samples" / "trained.npz")["samples"]
    assert samples.shape == (8, 1, 8, 8) and 0.035 < samples.std() < 0.07  # draws of N(0, 0.05^2), as above
    assert main(["compare", str(cell), "--n-eval", "16", "--quiet"]) == 0
    assert json.loads((cell / "compare" / "compare.json").read_text())["mem_nn_trained"] == 0.0


def test_a_cell_exported_with_torch_export_and_imported_draws_the_same_samples(tmp_path):
    """A network trained elsewhere, made here: a tiny cell's EMA denoiser, exported and imported with the cell's
    own training set and sampling settings, draws the cell's samples from the same seeds."""
    from memorize.cell import load_trained_denoiser
    from tests.conftest import TINY_CELL, trained_tiny_cell

    trained_tiny_cell(tmp_path / "cell", steps=10)
    denoiser, _ = load_trained_denoiser(tmp_path / "cell")

    class Unconditional(torch.nn.Module):  # forward(x, sigma), the interface an imported file has
        def __init__(self):
            super().__init__()
            self.denoiser = denoiser

        def forward(self, x, sigma):
            return self.denoiser(x, sigma)

    export_to(tmp_path / "cell.pt2", Unconditional())
    sets = [f"--set=sample.{key}={value}" for key, value in TINY_CELL["sample"].items()]
    sets += ["--set=data.n_train=32", "--set=data.n_heldout=100"]
    assert main(["import", str(tmp_path / "cell.pt2"), "--out", str(tmp_path / "imported"), *sets]) == 0
    assert main(["sample", str(tmp_path / "imported"), "--quiet"]) == 0
    original = read_samples(tmp_path / "cell" / "samples" / "trained.npz")
    imported = read_samples(tmp_path / "imported" / "samples" / "trained.npz")
    np.testing.assert_array_equal(imported["seeds"], original["seeds"])
    np.testing.assert_allclose(imported["samples"], original["samples"], rtol=0, atol=1e-5)


def test_an_imported_model_takes_the_index_file_of_the_images_it_saw(tmp_path):
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.config import DataConfig
    from memorize.data import load_dataset

    model = tmp_path / "halfway.pt"
    torch.jit.save(torch.jit.script(HalfwayDenoiser()), str(model))
    seen = [5, 900, 17, 1200, 333, 42, 8, 1000]
    np.save(tmp_path / "seen.npy", np.array(seen))
    assert main(["import", str(model), "--out", str(tmp_path / "cell"), "--set", "data.n_train=8", "--set",
                 f"data.train_indices={tmp_path / 'seen.npy'}", "--set", "data.n_heldout=50"]) == 0
    data = load_cell_data(read_config(tmp_path / "cell"), CellPaths(tmp_path / "cell"))
    digits = load_dataset(DataConfig()).data
    torch.testing.assert_close(data.train, digits[seen], rtol=0, atol=0)
    assert len(data.heldout) == 50 and not set(data.split.heldout) & set(seen)


class PairDenoiser(torch.nn.Module):
    """A model that returns its prediction with something else (a tuple), as many training codes do."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, sigma


class NaNDenoiser(torch.nn.Module):
    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


@pytest.mark.parametrize("name, setup, expected", [
    ("a tuple output", lambda t: torch.jit.save(torch.jit.script(PairDenoiser()), str(t / "m.pt")),
     r"m\.pt: on training images of shape \(1, 8, 8\) the denoiser returned a tuple; expected x0_hat, a tensor "
     r"of the input's shape"),
    ("a non-finite output", lambda t: torch.jit.save(torch.jit.script(NaNDenoiser()), str(t / "m.pt")),
     r"m\.pt: on training images of shape \(1, 8, 8\) the denoiser returned \(1, 8, 8\) with non-finite values"),
    ("wrong output shape", lambda t: torch.jit.save(torch.jit.script(torch.nn.Flatten()), str(t / "m.pt")),
     r"could not be run as a torchscript denoiser|returned"),
    ("not a model", lambda t: (t / "m.pt").write_text("hello"),
     r"m\.pt: not a TorchScript file \(torch\.jit\.save\): not an archive that any of PyTorch's savers writes"),
    ("weights saved with torch.save", lambda t: torch.save(torch.nn.Linear(2, 2).state_dict(), t / "m.pt"),
     r"m\.pt: not a TorchScript file \(torch\.jit\.save\): a torch\.save file \(weights, a checkpoint or a "
     r"pickled module\), which holds no code to run: save the model with torch\.jit\.save"),
    ("a TorchScript file as pt2", lambda t: torch.jit.save(torch.jit.script(HalfwayDenoiser()), str(t / "m.pt")),
     r"m\.pt: not a torch\.export program \(torch\.export\.save\): a TorchScript file \(import it with --kind "
     r"torchscript\)"),
    ("a training-section override", None, r"--set train\.steps: an imported cell takes data\.\* and sample\.\*"),
])
def test_a_model_that_cannot_be_a_denoiser_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, name,
                                                                                          setup, expected):
    import re

    if setup is not None:
        setup(tmp_path)
    else:
        torch.jit.save(torch.jit.script(HalfwayDenoiser()), str(tmp_path / "m.pt"))
    extra = ["--set", "train.steps=5"] if setup is None else ["--kind", "pt2"] if "as pt2" in name else []
    assert main(["import", str(tmp_path / "m.pt"), "--out", str(tmp_path / "cell")] + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err), err
    assert not (tmp_path / "cell" / "checkpoints").exists() and not (tmp_path / "cell" / "cell.json").exists()


def test_an_imported_diffusers_pipeline_samples_with_our_samplers(tmp_path):
    tiny_pipeline(tmp_path / "pipe", "epsilon")
    cell = tmp_path / "cell"
    assert main(["import", str(tmp_path / "pipe"), "--out", str(cell), "--set", "data.n_train=16",
                 "--set", "data.n_heldout=100", "--set", "sample.num=4", "--set", "sample.steps=5"]) == 0
    assert (cell / "model" / "pipe" / "unet").is_dir()
    for sampler in ("heun", "ddim"):
        assert main(["sample", str(cell), "--sampler", sampler, "--name", sampler, "--quiet"]) == 0
        samples = read_samples(cell / "samples" / f"{sampler}.npz")["samples"]
        assert samples.shape == (4, 1, 8, 8) and np.isfinite(samples).all()


def _random_fid_inception_file(path):
    """A randomly initialised state dict of the FID Inception architecture, built from pytorch-fid's own
    blocks the way pytorch-fid builds it (only the weights differ from the published file)."""
    import torchvision
    from pytorch_fid import inception as fi

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=True)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = fi.FIDInceptionA(192, 32), fi.FIDInceptionA(256, 64), fi.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = fi.FIDInceptionC(768, 128), fi.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = fi.FIDInceptionC(768, 160), fi.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = fi.FIDInceptionE_1(1280), fi.FIDInceptionE_2(2048)
    torch.save(net.state_dict(), path)
    return net.state_dict()


def test_the_fid_inception_embedder_loads_a_local_weights_file_through_pytorch_fid(tmp_path):
    pytest.importorskip("pytorch_fid", reason="the fid extra is not installed")
    from memorize.metrics.embedders import load_embedder

    state = _random_fid_inception_file(tmp_path / "inception.pth")
    embed = load_embedder(f"inception:{tmp_path / 'inception.pth'}")
    loaded = dict(embed.network.__closure__[0].cell_contents.named_parameters())
    torch.testing.assert_close(loaded["blocks.0.0.conv.weight"], state["Conv2d_1a_3x3.conv.weight"])
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    features = embed(images)
    assert features.shape == (3, 2048) and np.isfinite(features).all()
    from memorize.metrics.embedders import EmbedderError

    with pytest.raises(EmbedderError, match="missing.pth"):
        load_embedder(f"inception:{tmp_path / 'missing.pth'}")
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    for name in ("empty.pth", "other.pth"):
        with pytest.raises(EmbedderError, match=f"{name}': not the FID Inception weights"):
            load_embedder(f"inception:{tmp_path / name}")


# pytorch-fid passes SciPy's deprecated `disp` to sqrtm: its warning, not ours, so that one of ours stands out
@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_our_fid_equals_pytorch_fids_on_the_same_features():
    fid_score = pytest.importorskip("pytorch_fid.fid_score", reason="the fid extra is not installed")
    from memorize.metrics.quality import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 64)), rng.normal(0.3, 1.2, size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.2
    theirs = fid_score.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b, "cpu") == pytest.approx(theirs, rel=1e-3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch 2.11's compiler, inside aoti_compile
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="AOTInductor needs a C++ compiler")
def test_an_aotinductor_package_is_refused_in_one_line_naming_the_program_to_import(tmp_path, capsys):
    """torch's own AOTInductor package of a torch.export program (compiled here, about 15 s): also a .pt2
    archive, but compiled code that does not check its inputs, so import refuses it and writes nothing."""
    from torch._inductor import aoti_compile_and_package

    from memorize.models.external import load_export

    dim = torch.export.Dim("batch")
    program = torch.export.export(HalfwayDenoiser(), (torch.zeros(4, 1, 8, 8), torch.ones(4)),
                                  dynamic_shapes=({0: dim}, {0: dim}))
    package = aoti_compile_and_package(program, package_path=str(tmp_path / "halfway.pt2"))
    capsys.readouterr()  # the compiler's own log
    assert main(["import", package, "--out", str(tmp_path / "cell"), "--set", "data.n_train=8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "halfway.pt2: an AOTInductor package, not a torch.export program" in err, err
    assert not (tmp_path / "cell" / "cell.json").exists()
    with pytest.raises(ValueError, match="an AOTInductor package"):  # --kind pt2 skips the detection
        load_export(package)

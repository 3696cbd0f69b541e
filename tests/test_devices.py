"""Device choices, checked on the CPU with the GPU count injected."""

import pytest
import torch

from memorize.cell import resolve_device
from memorize.config import ConfigError
from memorize.train import training_device_rng


def test_a_gpu_that_is_not_there_is_refused_with_the_count_seen():
    assert resolve_device("cuda:1", gpus=2) == torch.device("cuda:1")
    assert resolve_device("auto", gpus=0) == torch.device("cpu")
    assert resolve_device("auto", gpus=3) == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"--device: 'cuda:2' requested but this process sees 2 GPUs "
                                          r"\(cuda:0 to cuda:1"):
        resolve_device("cuda:2", gpus=2)
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but no CUDA GPU"):
        resolve_device("cuda", "train.device", gpus=0)


def test_a_checkpoints_cuda_generator_state_restores_with_fewer_gpus():
    one, other = torch.arange(4, dtype=torch.uint8), torch.arange(4, 8, dtype=torch.uint8)
    assert training_device_rng(one) is one  # what checkpoints hold: the training device's own state
    assert training_device_rng([one, other]) is one  # older ones: a state per visible GPU, the trained one's
    assert training_device_rng([one, other], 1) is other
    assert training_device_rng([one], 1) is one  # resumed where fewer GPUs are visible
    assert training_device_rng(None) is None and training_device_rng([]) is None


def test_the_search_follows_the_device_asked_for(monkeypatch):
    from memorize.metrics.search import check_backend, search_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert search_backend("cpu") == "faiss-cpu"
    assert search_backend("cuda:1") == "torch-cuda:1" == check_backend("torch-cuda:1")
    assert search_backend(None) in ("torch-cuda", "faiss-gpu")
    with pytest.raises(ValueError, match="torch-cuda:N"):
        check_backend("cuda")


def test_scoring_on_the_cpu_searches_on_the_cpu_where_a_gpu_is_seen(tmp_path, monkeypatch):
    """--device cpu on a GPU machine: every search of scoring and comparing runs on the CPU (a search on
    the GPU would fail here: there is none behind the faked answer)."""
    from memorize.compare import compare_cell
    from memorize.score import score_cell
    from tests.conftest import trained_tiny_cell

    root = trained_tiny_cell(tmp_path / "cell")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    summary = score_cell(root, "trained", device="cpu", progress=False, features="pixel")
    assert summary["nn"]["backend"] == summary["cos"]["backend"] == "faiss-cpu"
    compare_cell(root, "trained", n_eval=8, device="cpu", progress=False)


@pytest.mark.parametrize("cells", [1, 3])
def test_attention_reaches_sdpa_in_four_dimensions_and_computes_softmax_attention(monkeypatch, cells):
    """The fused SDPA kernels on CUDA take 4-D inputs; 5-D ones fall back to the math kernel. One cell and a
    pack of three both reach it 4-D, and the result is per-head softmax attention within each cell."""
    import torch.nn.functional as F

    from memorize.models import unet as unet_module

    shapes, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(unet_module.F, "scaled_dot_product_attention",
                        lambda q, k, v: shapes.append(q.shape) or real(q, k, v))
    torch.manual_seed(0)
    block = unet_module.AttentionBlock(8 * cells, heads=2)
    block.cells = cells
    torch.nn.init.normal_(block.proj.weight)
    x = torch.randn(2, 8 * cells, 4, 4)
    out = block(x)
    assert shapes == [torch.Size([2, 2 * cells, 16, 4])]
    qkv = block.qkv(block.norm(x)).reshape(2, cells, 3, 2, 4, 16)
    heads = []
    for cell in range(cells):
        for head in range(2):
            q, k, v = (qkv[:, cell, j, head].transpose(-1, -2) for j in range(3))  # (B, HW, d)
            heads.append(torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v)  # scale 1/sqrt(d), d = 4
    expected = x + block.proj(torch.stack(heads, 1).transpose(-1, -2).reshape(2, 8 * cells, 4, 4))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_the_feature_classifier_is_trained_on_the_cpu_whatever_the_runs_device(tmp_path, monkeypatch):
    """Its cache is keyed by recipe and pool only, so it must not depend on the device of the run that
    fills it (a GPU trains with TF32 and non-deterministic backward passes)."""
    from memorize.data import load_dataset
    from memorize.config import DataConfig
    from memorize.metrics import classifier

    asked = []

    def record(images, labels, num_classes, device="cpu", progress=False):
        asked.append(device)
        raise RuntimeError("stop here")

    monkeypatch.setattr(classifier, "train_classifier", record)
    ds = load_dataset(DataConfig(name="digits"))
    with pytest.raises(RuntimeError, match="stop here"):
        classifier.classifier_embedder(ds, __import__("numpy").arange(100), tmp_path, device="cuda:1")
    assert asked == ["cpu"]


@pytest.mark.parametrize("api", ["legacy", "new"])
def test_quality_products_run_in_full_float32_and_the_callers_tf32_setting_comes_back(monkeypatch, api):
    """A caller that enabled TF32 (either API) gets full float32 in the metrics' products, and its own
    setting back after; reading the legacy flag inside never raises (torch refuses it after mixed use)."""
    import numpy as np

    from memorize.metrics import quality

    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    seen = []
    real_addmm = torch.addmm

    def recording_addmm(*args, **kwargs):
        seen.append((matmul.fp32_precision, matmul.allow_tf32))
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(quality.torch, "addmm", recording_addmm)
    try:
        if api == "legacy":
            matmul.allow_tf32 = True
        else:
            matmul.fp32_precision = "tf32"
        x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
        quality.kernel_distance(x, x + 1)
        quality.precision_recall(x, x + 0.1, 3)
        assert seen and set(seen) == {("ieee", False)}
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved

import pytest
import torch

from memorize.config import ConfigError, ModelConfig
from memorize.diffusion import Denoiser
from memorize.models import build_network, count_parameters

CASES = [(ModelConfig(arch="unet", channels=8, attention_resolutions=(4,)), (1, 8, 8)),
         (ModelConfig(arch="unet", channels=8, channel_mult=(1, 2, 2)), (3, 16, 16)),
         (ModelConfig(arch="dit", width=32, depth=2, heads=2, patch_size=2), (3, 8, 8)),
         (ModelConfig(arch="mlp", width=32, depth=2), (5,))]


@pytest.mark.parametrize("cfg, shape", CASES)
def test_shapes_and_per_sample_independence(cfg, shape):
    net = build_network(cfg, shape, num_classes=3)
    for p in net.parameters():  # zero-initialised heads would make outputs trivially 0
        torch.nn.init.normal_(p, std=0.05)
    net.eval()
    x, c, y = torch.randn(4, *shape), torch.randn(4), torch.tensor([0, 1, 2, 0])
    out = net(x, c, y)
    assert out.shape == x.shape
    torch.testing.assert_close(net(x[1:2], c[1:2], y[1:2]), out[1:2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(net(x, c, torch.tensor([1, 2, 0, 1])), out)  # labels matter


def test_parameter_count_grows_with_the_size_knobs():
    counts = [count_parameters(build_network(ModelConfig(channels=c), (1, 8, 8))) for c in (8, 16, 32)]
    assert counts[0] < counts[1] < counts[2]
    frozen = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 5))
    frozen[0].weight.requires_grad_(False)
    assert count_parameters(frozen) == 2 + (2 * 5 + 5)  # trainable only: the first bias and the second layer


def test_denoiser_zero_network_gives_c_skip_x():
    net = build_network(ModelConfig(arch="mlp", width=8, depth=1), (3,))
    den = Denoiser(net, "edm", sigma_data=0.5)  # zero-initialised output layer: F = 0
    x = torch.randn(2, 3)
    torch.testing.assert_close(den(x, 1.0), x * 0.25 / 1.25)


def test_incompatible_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="model.arch: 'mlp' takes vector data"):
        build_network(ModelConfig(arch="mlp"), (1, 8, 8))
    with pytest.raises(ConfigError, match="model.arch: 'unet' takes square"):
        build_network(ModelConfig(arch="unet"), (16,))


@pytest.mark.parametrize("cells", [1, 2])
def test_attention_hands_sdpa_tensors_contiguous_in_their_last_dimension_off_the_cpu(monkeypatch, cells):
    """Every fused SDPA kernel on CUDA needs q, k, v with stride 1 in the head dimension. Run on the meta
    device (any device but the CPU takes that path), the U-Net's attention, alone and widened, hands SDPA such
    tensors; on the CPU it keeps the strided views (a copy would change the CPU's rounding)."""
    import torch.nn.functional as F

    from memorize.models.unet import AttentionBlock

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q, k, v))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    block = AttentionBlock(16 * cells, heads=2)
    block.cells = cells
    for device in ("cpu", "meta"):
        seen.clear()
        out = block.to(device)(torch.randn(3, 16 * cells, 4, 4, device=device))
        assert out.shape == (3, 16 * cells, 4, 4) and len(seen) == 1
        for t in seen[0]:
            assert t.shape == (3, 2 * cells, 16, 8)
            assert t.stride(-1) == (1 if device == "meta" else 16), (device, t.stride())

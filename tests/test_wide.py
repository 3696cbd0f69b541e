"""K networks as one wide network with grouped layers (memorize.models.wide), against the K networks."""

import dataclasses

import pytest
import torch
from torch.func import functional_call, stack_module_state

from memorize.config import ModelConfig
from memorize.models import NULL_LABEL, build_network
from memorize.models.wide import wide_parameters, widen
from memorize.pack import StackedCells
from memorize.train import CellTraining

K, B = 3, 5


def _networks(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int = 0) -> list[torch.nn.Module]:
    """K networks with every weight random (the zero-initialised output layers too), so that a mix-up of
    any two networks' channels changes the output."""
    nets = [build_network(cfg, shape, num_classes, null_label=num_classes > 0) for _ in range(K)]
    for net in nets:
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return nets


@pytest.mark.parametrize("cfg,shape,classes", [
    (ModelConfig(arch="unet", channels=8, channel_mult=(1, 2), attention_resolutions=(4,)), (2, 8, 8), 0),
    (ModelConfig(arch="unet", channels=8, channel_mult=(1, 2)), (1, 8, 8), 4),
    (ModelConfig(arch="mlp", width=16, depth=2), (6,), 4),
])
def test_the_wide_network_computes_each_network_on_its_own_channels(cfg, shape, classes):
    nets = _networks(cfg, shape, classes)
    x = torch.randn(K, B, *shape)
    c_noise = torch.randn(K, B)
    labels = torch.randint(0, classes, (K, B)) if classes else None
    if classes:
        labels[1, 0] = NULL_LABEL  # the null label of classifier-free guidance, in one network only
    params, _ = stack_module_state(nets)
    wide = widen(nets[0], K)
    assert wide is not None and {n for n, _ in wide.named_parameters()} == set(params)
    out = functional_call(wide, wide_parameters(params),
                          (x.transpose(0, 1).flatten(1, 2), c_noise.T, None if labels is None else labels.T))
    assert out.shape == (B, K * shape[0], *shape[1:])
    for k, net in enumerate(nets):
        alone = net(x[k], c_noise[k], None if labels is None else labels[k])
        torch.testing.assert_close(out.unflatten(1, (K, -1))[:, k], alone, atol=1e-5, rtol=1e-5)


def test_a_transformer_is_not_widened():
    net = build_network(ModelConfig(arch="dit", patch_size=2, width=16, depth=1, heads=2), (1, 8, 8))
    assert widen(net, K) is None


def test_wide_and_vmapped_losses_and_gradients_agree(tiny_cfg, tmp_path):
    cfgs = [dataclasses.replace(tiny_cfg, seed=s, data=dataclasses.replace(tiny_cfg.data, n_train=n))
            for s, n in ((0, 8), (1, 16), (2, 24))]
    cells = [CellTraining(c, tmp_path / str(i)) for i, c in enumerate(cfgs)]
    for cell in cells:  # random output layers: a zero-initialised one would hide most of the network
        for p in cell.denoiser.net.parameters():
            torch.nn.init.normal_(p, std=0.1)
    batches = [c.draw() for c in cells]
    results = []
    for wide in (None, False):  # None: built at the first step; False: vmap
        stack = StackedCells(cells)
        stack.wide = wide
        loss = stack.losses(batches, cells[0].denoiser.net)
        loss.sum().backward()
        results.append((loss.detach(), {n: p.grad for n, p in stack.params.items()}))
        assert (stack.wide is not False) == (wide is None)
    (wide_loss, wide_grads), (vmap_loss, vmap_grads) = results
    torch.testing.assert_close(wide_loss, vmap_loss, atol=1e-6, rtol=1e-5)
    assert not torch.equal(wide_loss[0], wide_loss[1])
    for name, grad in vmap_grads.items():
        torch.testing.assert_close(wide_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("parameterization", ["edm", "v"])
def test_the_wide_denoiser_is_each_cells_denoiser_on_its_own_rows(parameterization):
    """WideDenoiser against the K Denoisers, with sigma and the class varying item by item and each cell's
    own sigma_data."""
    from memorize.diffusion import Denoiser
    from memorize.pack import widen_denoisers

    nets = _networks(ModelConfig(arch="unet", channels=8, channel_mult=(1, 2)), (1, 8, 8), 4)
    denoisers = [Denoiser(net, parameterization, sigma_data=sd) for net, sd in zip(nets, (0.5, 0.3, 0.8))]
    wide = widen_denoisers(denoisers)
    x = torch.randn(K * B, 1, 8, 8)
    sigma = torch.rand(K * B) * 3 + 0.01
    labels = torch.randint(0, 4, (K * B,))
    labels[B] = NULL_LABEL
    out = wide(x, sigma, labels)
    torch.testing.assert_close(wide(x, sigma.reshape(-1, 1, 1, 1), labels), out)  # sigma shaped like x: the same
    for k, denoiser in enumerate(denoisers):
        rows = slice(k * B, (k + 1) * B)
        torch.testing.assert_close(out[rows], denoiser(x[rows], sigma[rows], labels[rows]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg,shape,classes", [
    (ModelConfig(arch="unet", channels=8, channel_mult=(1, 2), attention_resolutions=(4,)), (2, 8, 8), 4),
    (ModelConfig(arch="mlp", width=16, depth=2), (6,), 0),
])
def test_under_bf16_autocast_every_wide_layer_runs_in_the_dtype_of_the_networks_alone(cfg, shape, classes):
    """train.amp: each grouped layer's output has the dtype of the same layer of a network alone (a float32
    bias once lifted every activation after a linear layer to float32), and the outputs agree to bf16's
    precision. On the CPU's autocast; the GPU test trains packed and alone under amp."""
    nets = _networks(cfg, shape, classes)
    x, c_noise = torch.randn(K, B, *shape), torch.randn(K, B)
    labels = torch.randint(0, classes, (K, B)) if classes else None
    params, _ = stack_module_state(nets)
    wide = widen(nets[0], K)

    def dtypes(net, run) -> dict[str, torch.dtype]:
        seen = {}

        def record(name):
            def hook(module, inputs, output) -> None:
                seen.setdefault(name, output.dtype)
            return hook

        hooks = [m.register_forward_hook(record(name)) for name, m in net.named_modules() if not list(m.children())]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
        for h in hooks:
            h.remove()
        return seen, out

    wide_types, out = dtypes(wide, lambda: functional_call(
        wide, wide_parameters(params), (x.transpose(0, 1).flatten(1, 2), c_noise.T, None if labels is None else labels.T)))
    alone_types, alone = dtypes(nets[1], lambda: nets[1](x[1], c_noise[1], None if labels is None else labels[1]))
    assert wide_types == alone_types and torch.bfloat16 in set(alone_types.values())
    assert out.dtype == alone.dtype
    got = out.unflatten(1, (K, -1))[:, 1].float()
    scale = alone.float().abs().max()
    assert (got - alone.float()).abs().max() <= 0.05 * scale  # bf16 keeps 8 bits: activations differ by rounding

"""Cells trained together: several cells of one architecture as one batched computation.

Memorization studies train many small models, and a small model's training step is mostly
overhead (Python, dispatch, kernel launches). Cells whose networks have the same shape (the same
``model`` config, image shape and classes; N, subset, seed, budget, learning rate and
``sigma_data`` may differ) train in one process, each step:

1. every cell draws its own minibatch, noise levels and noise from its own generator
   (:meth:`memorize.train.CellTraining.draw`, the stream it draws alone);
2. the cells' parameters are stacked (``torch.func.stack_module_state``) and one ``vmap`` over
   ``functional_call`` gives every cell's loss, ``lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2``
   (EDM eq. 2 and 8, as :meth:`memorize.diffusion.Denoiser.loss`);
3. one backward pass of the summed losses gives each cell its own gradient (no parameter is
   shared, so d(sum)/d(theta_k) = d(loss_k)/d(theta_k));
4. each cell clips, steps its own AdamW, updates its own EMA, logs and checkpoints exactly as
   alone (:meth:`memorize.train.CellTraining.finish_step`).

The cell directories are those of separate runs: any cell resumes alone or in another pack, and
its weights equal a separate run's to float tolerance (the batched kernels add in another
order). A cell whose loss or gradient turns non-finite leaves the pack with its error; the others
go on. Cells with ``model.dropout > 0`` are not packed (dropout draws from the one global
generator, which separate runs each have to themselves).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state, vmap

from memorize.config import CellConfig, to_dict
from memorize.diffusion.precond import coefficients, network_target
from memorize.train import CellTraining, CheckpointRequested, NonFiniteLossError, checkpoint_requested, training_loop


def pack_key(cfg: CellConfig) -> str | None:
    """Cells with equal keys can train together (None: this cell trains alone). The key holds what fixes
    the network's shape and the loss's form: the model, the dataset (image shape, classes), the label
    mode, the batch size, the parameterization, the device and mixed precision."""
    if cfg.model.dropout > 0 or cfg.train.stop_when != "budget":
        return None
    return json.dumps({"model": to_dict(cfg.model), "dataset": [cfg.data.name, cfg.data.root, cfg.data.labels],
                       "batch": cfg.train.batch_size, "null_label": cfg.train.label_dropout > 0,
                       "parameterization": cfg.diffusion.parameterization, "device": cfg.train.device,
                       "amp": cfg.train.amp}, sort_keys=True)


def _cell_loss(net: torch.nn.Module, parameterization: str):
    """One cell's mean loss as a function of its parameters, buffers, ``sigma_data`` and batch (for vmap)."""

    def loss(params: dict, buffers: dict, sigma_data: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        x = x0 + s * noise
        c = coefficients(parameterization, s, sigma_data)
        output = functional_call(net, (params, buffers), (c.c_in * x, c.c_noise.reshape(-1), labels)).to(x.dtype)
        return (output - network_target(parameterization, x0, x, s, sigma_data)).square().flatten(1).mean(1).mean()

    return loss


def packed_losses(cells: list[CellTraining], batches: list, base: torch.nn.Module) -> tuple[torch.Tensor, dict]:
    """Every cell's loss on its batch from one vmapped call over ``base`` (a network of the cells' shape
    whose own weights are not used); returns the losses (K,) and the stacked parameters (leaves: after
    backward their ``.grad`` holds each cell's gradient, stacked)."""
    params, buffers = stack_module_state([c.denoiser.net for c in cells])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    sigma_data = torch.tensor([c.sigma_data for c in cells], dtype=torch.float32, device=cells[0].device)
    x0, sigma, noise = (torch.stack([getattr(b, f) for b in batches]) for f in ("x0", "sigma", "noise"))
    labels = None if batches[0].labels is None else torch.stack([b.labels for b in batches])
    fn = vmap(_cell_loss(base, cells[0].denoiser.parameterization),
              in_dims=(0, 0, 0, 0, 0, 0, None if labels is None else 0))
    with torch.autocast(cells[0].device.type, dtype=torch.bfloat16, enabled=cells[0].use_amp):
        losses = fn(params, buffers, sigma_data, x0, sigma, noise, labels)
    return losses, params


def train_packed(cfgs: list[CellConfig], roots: list[str | Path],
                 keep_steps: tuple[int, ...] | list[tuple[int, ...]] = ()) -> list:
    """Train the cells ``cfgs`` (directories ``roots``) together to their budgets, each resuming from its
    own last checkpoint. ``keep_steps``: as for :func:`memorize.train.train`, for all cells or one tuple
    per cell. Returns, per cell, its training summary or the exception that stopped it (the others go
    on). All keys (:func:`pack_key`) must be equal and not None."""
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_packed: the cells differ in what a pack must share (memorize.pack.pack_key)")
    results: list = [None] * len(cfgs)
    cells: dict[int, CellTraining] = {}
    per_cell = keep_steps if isinstance(keep_steps, list) else [tuple(keep_steps)] * len(cfgs)
    for i, (cfg, root) in enumerate(zip(cfgs, roots)):
        try:
            cells[i] = CellTraining(cfg, root, per_cell[i])
        except Exception as err:  # this cell's inputs are bad: the others go on
            results[i] = err
    if not cells:
        return results
    base = copy.deepcopy(next(iter(cells.values())).denoiser.net)  # the structure; its weights are not used
    with training_loop():
        active = [i for i, c in cells.items() if not c.done]
        while active:
            batches = {i: cells[i].draw() for i in active}
            while active:  # a cell with a non-finite loss leaves; the rest are computed again on their batches
                losses, params = packed_losses([cells[i] for i in active], [batches[i] for i in active], base)
                bad = [i for i, loss in zip(active, losses) if not torch.isfinite(loss)]
                for i, loss in zip(active, losses):
                    if i in bad:
                        try:
                            cells[i].check_loss(loss)
                        except NonFiniteLossError as err:
                            results[i] = err
                active = [i for i in active if i not in bad]
                if not bad:
                    break
            if not active:
                break
            losses.sum().backward()
            asked = checkpoint_requested()
            values = losses.detach().tolist()
            for k, i in enumerate(list(active)):
                cell = cells[i]
                for name, p in cell.denoiser.net.named_parameters():
                    grad = params[name].grad
                    p.grad = None if grad is None else grad[k]
                try:
                    cell.finish_step(values[k], asked)
                except NonFiniteLossError as err:
                    results[i] = err
                    active.remove(i)
            if asked:
                raise CheckpointRequested(min(cells[i].step for i in active) if active else 0)
            active = [i for i in active if not cells[i].done]
    if checkpoint_requested():  # asked for as the loop ended: every cell's budget checkpoint is written
        raise CheckpointRequested(max(c.step for c in cells.values()))
    for i, cell in cells.items():
        if results[i] is None:
            results[i] = cell.summary()
    return results

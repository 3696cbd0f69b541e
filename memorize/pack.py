"""Cells trained together: several cells of one architecture as one batched computation.

Memorization studies train many small models, and a small model's training step is mostly
overhead (Python, dispatch, kernel launches). Cells whose networks have the same shape (the same
``model`` config, image shape and classes; N, subset, seed, budget, learning rate and
``sigma_data`` may differ) train in one process, each step:

1. every cell draws its own minibatch, noise levels and noise from its own generator
   (:meth:`memorize.train.CellTraining.draw`, the stream it draws alone);
2. the cells' parameters are stacked (``torch.func.stack_module_state``) and one call gives every
   cell's loss, ``lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2`` (EDM eq. 2 and 8, as
   :meth:`memorize.diffusion.Denoiser.loss`): of the wide network whose layers are grouped by cell
   (:mod:`memorize.models.wide`: U-Nets and MLPs), or else of ``vmap`` over ``functional_call``;
3. one backward pass of the summed losses gives each cell its own gradient (no parameter is
   shared, so d(sum)/d(theta_k) = d(loss_k)/d(theta_k));
4. every cell's gradient is clipped to its own norm, and its AdamW step and EMA update are taken,
   on the stacked state (:class:`StackedCells`: a dozen operations on (K, P) buffers for all cells
   and parameters, each cell with its own learning rate, weight decay, clip and EMA decay, by the
   formulas of ``clip_grad_norm_``, ``torch.optim.AdamW`` and :func:`memorize.train.ema_step`);
5. each cell logs, evaluates and checkpoints exactly as alone (:meth:`memorize.train.CellTraining.record`),
   its slices of the stacks copied into its own modules and optimizer first where it reads them.

Steps 2-4 are device work only (:meth:`StackedCells.step`): on a CUDA device they are captured once
in a CUDA graph and replayed (:mod:`memorize.graphs`), the cells' draws and learning rates copied
into static inputs each step; every cell's loss and gradient norm are read once after it.

Trained, the cells of a pack are also sampled together (:func:`sample_packed`, called by
:func:`memorize.sweep.job.sample_together` before each cell's evaluation): their EMA denoisers
become one :class:`WideDenoiser` and one sampling run draws every cell's samples, each sample from
its own noise stream, so each cell's file equals the one it would draw alone to float tolerance.
Scoring and comparing then run cell by cell.

The cell directories are those of separate runs: any cell resumes alone or in another pack, and
its weights equal a separate run's to float tolerance (the batched kernels add in another
order). A cell whose loss or gradient turns non-finite leaves the pack with its error; the others
go on (no layer of the wide network mixes cells, so their steps are their own). Cells with ``model.dropout > 0`` are not packed (dropout draws from the one global
generator, which separate runs each have to themselves).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from memorize import distributed
from memorize.config import CellConfig, ConfigError, SampleConfig, to_dict
from memorize.diffusion.precond import coefficients, denoised_from_output, network_target
from memorize.graphs import Inputs, StepRunner
from memorize.models.wide import wide_parameters, widen
from memorize.train import CellTraining, CheckpointRequested, NonFiniteLossError, checkpoint_requested, training_loop


def pack_key(cfg: CellConfig) -> str | None:
    """Cells with equal keys can train together (None: this cell trains alone). The key holds what fixes
    the network's shape and the loss's form: the model, the dataset (image shape, classes), the label
    mode and the size of the label table (with ``unique`` labels, one class per training image: N), the
    batch size, the parameterization, the device and mixed precision. Cells with dropout, a convergence
    stop or ``train.compile`` train alone."""
    if cfg.model.dropout > 0 or cfg.train.stop_when != "budget" or cfg.train.compile:
        return None
    classes = cfg.data.n_train if cfg.data.labels == "unique" else None  # else the dataset's own classes
    return json.dumps({"model": to_dict(cfg.model), "dataset": [cfg.data.name, cfg.data.root, cfg.data.labels],
                       "label_table": classes,
                       "batch": cfg.train.batch_size, "null_label": cfg.train.label_dropout > 0,
                       "parameterization": cfg.diffusion.parameterization, "device": cfg.train.device,
                       "amp": cfg.train.amp, "cuda_graph": cfg.train.cuda_graph}, sort_keys=True)


def _squared_error(parameterization: str, x0: torch.Tensor, s: torch.Tensor, noise: torch.Tensor,
                   sigma_data: torch.Tensor, network) -> torch.Tensor:
    """``(F(c_in x, c_noise) - target)^2`` elementwise at ``x = x0 + s n``: the loss of
    :meth:`memorize.diffusion.Denoiser.loss` before its mean, in the network's output space
    (``lambda(sigma) = 1 / c_out^2``, EDM eq. 8); ``network(x_in, c_noise)`` gives F."""
    x = x0 + s * noise
    c = coefficients(parameterization, s, sigma_data)
    output = network(c.c_in * x, c.c_noise).to(x.dtype)
    return (output - network_target(parameterization, x0, x, s, sigma_data)).square()


def _cell_loss(net: torch.nn.Module, parameterization: str):
    """One cell's mean loss as a function of its parameters, buffers, ``sigma_data`` and batch (for vmap)."""

    def loss(params: dict, buffers: dict, sigma_data: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))

        def network(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return functional_call(net, (params, buffers), (x_in, c_noise.reshape(-1), labels))

        return _squared_error(parameterization, x0, s, noise, sigma_data, network).flatten(1).mean(1).mean()

    return loss


def _wide_losses(wide: torch.nn.Module, params: dict, parameterization: str, sigma_data: torch.Tensor,
                 x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """K cells' mean losses, (K,), from one pass of their wide network (:func:`memorize.models.wide.widen`):
    ``x0`` and ``noise`` (K, B, C, ...), ``sigma`` and ``labels`` (K, B), ``params`` stacked (K, ...); the
    loss of :func:`_cell_loss`, each cell's images side by side along the channels."""
    k = x0.shape[0]

    def network(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:  # (K, B, C, ...) in and out
        wide_in = (x_in.transpose(0, 1).flatten(1, 2), c_noise.reshape(k, -1).T, None if labels is None else labels.T)
        return functional_call(wide, wide_parameters(params), wide_in).unflatten(1, (k, -1)).transpose(0, 1)

    s = sigma.reshape(*sigma.shape, *([1] * (x0.ndim - 2)))
    sd = sigma_data.reshape(k, *([1] * (x0.ndim - 1)))
    return _squared_error(parameterization, x0, s, noise, sd, network).flatten(2).mean(2).mean(1)


class StackedCells:
    """The trainable state of K cells held stacked along a new first dimension, updated for all at once.

    ``params``, ``ema``, ``exp_avg`` and ``exp_avg_sq`` map each parameter name of the network to a
    (K, ...) tensor, a view of one (K, P) buffer (``flat``: all P parameters of each cell in a row);
    ``adam_steps`` and ``ema_counts`` are (K,) float64. Each step, one batched loss (:meth:`losses`)
    and one backward pass give the stacked gradients; :meth:`update` clips each cell's gradient to its
    own norm, takes each cell's AdamW step and EMA update with its own learning rate, weight decay,
    clip and decay, every formula as ``torch.nn.utils.clip_grad_norm_``, ``torch.optim.AdamW`` and
    :func:`memorize.train.ema_step` compute it, in a dozen operations on the (K, P) buffers for all
    cells and tensors at once. :meth:`write_back` copies cell k's slices into its own modules and
    optimizer state, where they are read (evaluation, checkpoints); a stack is built afresh from the
    cells whenever the set of cells changes.
    """

    def __init__(self, cells: list[CellTraining]):
        self.cells = cells
        nets, emas = [c.denoiser.net for c in cells], [c.ema.module.net for c in cells]
        self.names = [n for n, _ in nets[0].named_parameters()]
        params, self.buffers = stack_module_state(nets)
        ema_params = [dict(e.named_parameters()) for e in emas]
        states = [[c.optimizer.state[p] for p in c.denoiser.net.parameters()] for c in cells]
        moments = {key: {n: torch.stack([st[j][key] if st[j] else torch.zeros_like(params[n][0]) for st in states])
                         for j, n in enumerate(self.names)} for key in ("exp_avg", "exp_avg_sq")}
        self.flat = {"params": self._flatten(params), "ema": self._flatten(
                     {n: torch.stack([p[n] for p in ema_params]) for n in self.names}),
                     "exp_avg": self._flatten(moments["exp_avg"]), "exp_avg_sq": self._flatten(moments["exp_avg_sq"])}
        shapes = {n: params[n].shape for n in self.names}
        self.params, self.ema, self.exp_avg, self.exp_avg_sq = (self._views(self.flat[key], shapes)
                                                                for key in ("params", "ema", "exp_avg", "exp_avg_sq"))
        for p in self.params.values():
            p.requires_grad_()  # each a leaf: its gradient lands in p.grad, (K, ...)
        device = self.device = cells[0].device
        # per-cell counts and settings on the device, so that a step reads nothing on the host (memorize.graphs)
        self.adam_steps = torch.tensor([float(st[0]["step"]) if st[0] else 0.0 for st in states], dtype=torch.float64,
                                       device=device)
        self.ema_counts = torch.tensor([float(c.ema.n_averaged) for c in cells], dtype=torch.float64, device=device)
        group = cells[0].optimizer.param_groups[0]
        self.beta1, self.beta2 = group["betas"]
        self.eps = group["eps"]
        self.weight_decay = torch.tensor([c.optimizer.param_groups[0]["weight_decay"] for c in cells],
                                         dtype=torch.float64, device=device)
        self.max_norm = torch.tensor([c.cfg.train.grad_clip or math.inf for c in cells], dtype=torch.float32,
                                     device=device)
        self.decay = torch.tensor([c.cfg.train.ema_decay for c in cells], dtype=torch.float64, device=device)
        self.sigma_data = torch.tensor([c.sigma_data for c in cells], dtype=torch.float32, device=device)
        self.wide: torch.nn.Module | None | bool = None  # the cells' wide network, built at the first step (False: none)

    def _flatten(self, stacked: dict[str, torch.Tensor]) -> torch.Tensor:
        """(K, ...) tensors, in parameter order, side by side as one (K, P) buffer."""
        return torch.cat([stacked[n].detach().flatten(1) for n in self.names], dim=1)

    def _views(self, flat: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
        """The (K, ...) tensors of a (K, P) buffer as views of it, by parameter name."""
        views, start = {}, 0
        for n in self.names:
            size = math.prod(shapes[n][1:])
            views[n] = flat[:, start:start + size].view(shapes[n])
            start += size
        return views

    def _per_cell(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(K,) values as a tensor that broadcasts over ``like``'s (K, ...) slices, in its dtype and device."""
        return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def losses(self, batches: list, base: torch.nn.Module) -> torch.Tensor:
        """Every cell's loss on its batch (:class:`memorize.train.Batch`, one per cell), (K,):
        :meth:`stacked_losses` of the batches stacked."""
        return self.stacked_losses(stack_batches(batches), base)

    def stacked_losses(self, inputs: Inputs, base: torch.nn.Module) -> torch.Tensor:
        """Every cell's loss on its batch, (K,), the batches stacked (``x0`` and ``noise`` (K, B, ...), ``sigma``
        and ``labels`` (K, B)), from one pass of the wide network built from ``base`` (a network of the cells'
        shape whose own weights are not used), or one vmapped call over ``base``."""
        cells = self.cells
        x0, sigma, noise, labels = inputs["x0"], inputs["sigma"], inputs["noise"], inputs["labels"]
        parameterization = cells[0].denoiser.parameterization
        if self.wide is None:
            wide = widen(base, len(cells))
            self.wide = False if wide is None else wide
        with torch.autocast(cells[0].device.type, dtype=torch.bfloat16, enabled=cells[0].use_amp, cache_enabled=False):
            if self.wide is not False:
                return _wide_losses(self.wide, self.params, parameterization, self.sigma_data, x0, sigma, noise,
                                    labels)
            fn = vmap(_cell_loss(base, parameterization), in_dims=(0, 0, 0, 0, 0, 0, None if labels is None else 0))
            return fn(self.params, self.buffers, self.sigma_data, x0, sigma, noise, labels)

    def step(self, inputs: Inputs, base: torch.nn.Module) -> torch.Tensor:
        """One training step of every cell as device work only (what a CUDA graph captures): the losses, one
        backward pass, :meth:`update` at the learning rates ``inputs["lr"]``. Returns the K losses, then the K
        gradient norms (a non-finite value: that cell must leave)."""
        for p in self.params.values():
            p.grad = None
        losses = self.stacked_losses(inputs, base)
        losses.sum().backward()
        norms = self.update(inputs["lr"])
        return torch.cat([losses.detach().float(), norms.float()])

    @torch.no_grad()
    def update(self, lr: torch.Tensor | None = None) -> torch.Tensor:
        """With the stacked gradients in place: clip, AdamW and EMA for every cell at its learning rate ``lr``
        (K,) float64 (default: each cell's ``lr`` of this step). Returns each cell's total gradient norm before
        clipping, (K,) on the device (a non-finite one: that cell's slices are garbage from here on and it
        must leave)."""
        params = [self.params[n] for n in self.names]
        # torch's AdamW leaves a parameter without a gradient untouched (no decay, no moment update)
        unused = {n: (self.params[n].clone(), self.exp_avg[n].clone(), self.exp_avg_sq[n].clone())
                  for n in self.names if self.params[n].grad is None}
        g = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten(1) for p in params], dim=1)
        for p in params:
            p.grad = None
        # clip_grad_norm_: every gradient times min(1, max / (norm + 1e-6)), the norm over all the cell's tensors
        norms = g.norm(dim=1)
        clip = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)
        lr = (self.learning_rates() if lr is None else lr).to(self.device)
        self.adam_steps += 1
        # AdamW (Loshchilov & Hutter 2019) as torch computes it: decoupled decay, then the moments, then
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        shrink = 1 - lr * self.weight_decay
        step_size = lr / (1 - self.beta1 ** self.adam_steps)
        root_correction = (1 - self.beta2 ** self.adam_steps).sqrt()
        p, m, v, ema = (self.flat[key] for key in ("params", "exp_avg", "exp_avg_sq", "ema"))
        g.mul_(self._per_cell(clip, g))
        p.mul_(self._per_cell(shrink, p))
        m.lerp_(g, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        denom = (v.sqrt() / self._per_cell(root_correction, v)).add_(self.eps)
        p.sub_(self._per_cell(step_size, p) * m / denom)
        for name, (p_old, m_old, v_old) in unused.items():
            self.params[name].copy_(p_old)
            self.exp_avg[name].copy_(m_old)
            self.exp_avg_sq[name].copy_(v_old)
        # the EMA's decay after n updates, min(decay, (1 + n) / (10 + n)); its first update copies
        n = self.ema_counts
        ema.lerp_(p, self._per_cell(torch.where(n == 0, 1.0, 1 - torch.minimum(self.decay, (1 + n) / (10 + n))), p))
        self.ema_counts += 1
        return norms

    def learning_rates(self) -> torch.Tensor:
        """Each cell's learning rate of this step (set by its draw), (K,) float64."""
        return torch.tensor([c.lr for c in self.cells], dtype=torch.float64)

    @torch.no_grad()
    def write_back(self, k: int) -> None:
        """Cell k's weights, EMA, EMA count, AdamW state and learning rate into its own modules and optimizer."""
        cell = self.cells[k]
        ema_params = dict(cell.ema.module.net.named_parameters())
        for name, p in cell.denoiser.net.named_parameters():
            p.copy_(self.params[name][k])
            ema_params[name].copy_(self.ema[name][k])
            cell.optimizer.state[p] = {"step": torch.tensor(float(self.adam_steps[k])),
                                       "exp_avg": self.exp_avg[name][k].clone(),
                                       "exp_avg_sq": self.exp_avg_sq[name][k].clone()}
        cell.ema.n_averaged.fill_(int(self.ema_counts[k]))
        for group in cell.optimizer.param_groups:  # as a cell alone holds it: this step's rate
            group["lr"] = cell.lr


def stack_batches(batches: list) -> Inputs:
    """Cells' batches (:class:`memorize.train.Batch`, one per cell) stacked along a new first dimension."""
    stacked: Inputs = {f: torch.stack([getattr(b, f) for b in batches]) for f in ("x0", "sigma", "noise")}
    stacked["labels"] = None if batches[0].labels is None else torch.stack([b.labels for b in batches])
    return stacked


def stack_runner(stack: StackedCells, base: torch.nn.Module) -> StepRunner:
    """What runs ``stack``'s steps (:meth:`StackedCells.step`): captured in a CUDA graph where its first cell's
    would be (:attr:`memorize.train.CellTraining.eager_because`; the cells of a pack share what decides it)."""
    first = stack.cells[0]
    label = f"pack of {len(stack.cells)} cells ({first.paths.root.name}, ...)"
    return StepRunner(lambda inputs: stack.step(inputs, base), stack.device, first.eager_because, label)


def train_packed(cfgs: list[CellConfig], roots: list[str | Path],
                 keep_steps: tuple[int, ...] | list[tuple[int, ...]] = ()) -> list:
    """Train the cells ``cfgs`` (directories ``roots``) together to their budgets, each resuming from its
    own last checkpoint. ``keep_steps``: as for :func:`memorize.train.train`, for all cells or one tuple
    per cell. Returns, per cell, its training summary or the exception that stopped it (the others go
    on). All keys (:func:`pack_key`) must be equal and not None."""
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_packed: the cells differ in what a pack must share (memorize.pack.pack_key)")
    if distributed.ranks().world > 1:  # a pack fills one device; data parallelism splits one cell over several
        raise ConfigError("packed cells train in one process: run them without torchrun, or train each cell "
                          "data-parallel on its own")
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
    active = [i for i, c in cells.items() if not c.done]
    stack = StackedCells([cells[i] for i in active]) if active else None
    for i in active:
        cells[i].packed = len(active)

    def regroup(keep: list[int]) -> StackedCells | None:
        """Every remaining cell's state back into its modules, and a new stack of the cells in ``keep``."""
        for k, i in enumerate(active):
            if i in keep:
                stack.write_back(k)
        return StackedCells([cells[i] for i in keep]) if keep else None

    runner = stack_runner(stack, base) if stack else None
    with training_loop():
        while active:
            inputs = stack_batches([cells[i].draw_host() for i in active])
            inputs["lr"] = stack.learning_rates()
            values = runner(inputs)  # every cell's loss and gradient norm: one read per step
            asked = checkpoint_requested()
            leaving = []
            for k, i in enumerate(active):
                cell = cells[i]
                try:
                    cell.check_loss(values[k])
                    cell.check_grad_norm(values[len(active) + k])
                    if cell.reads_state(asked):
                        stack.write_back(k)
                    cell.record(values[k], asked)
                except NonFiniteLossError as err:  # its slices are garbage now; the others' are their own
                    results[i] = err
                    leaving.append(i)
            if asked:
                raise CheckpointRequested(min((cells[i].step for i in active if i not in leaving), default=0))
            keep = [i for i in active if i not in leaving and not cells[i].done]
            for i in active:
                cells[i].step_mode = runner.mode
            if keep != active:
                stack = regroup(keep)
                runner = stack_runner(stack, base) if stack else None
                active = keep
    if checkpoint_requested():  # asked for as the loop ended: every cell's budget checkpoint is written
        raise CheckpointRequested(max(c.step for c in cells.values()))
    for i, cell in cells.items():
        if results[i] is None:
            results[i] = cell.summary()
    return results


class WideDenoiser:
    """K trained denoisers of one architecture (:func:`pack_key`) as one denoiser over K batches side by side:
    ``D(x, sigma, labels)`` with ``x`` ``(K * b, ...)`` holding cell k's b items at rows ``[k b, (k + 1) b)``,
    each cell's items denoised by its own weights, ``sigma_data`` and preconditioning (EDM eq. 7, as
    :class:`memorize.diffusion.Denoiser`) in one pass of the wide network (:mod:`memorize.models.wide`).
    :func:`widen_denoisers` builds one, or returns None where the network cannot be widened."""

    def __init__(self, wide: torch.nn.Module, params: dict[str, torch.Tensor], parameterization: str,
                 sigma_data: torch.Tensor):
        self.wide, self.params, self.parameterization, self.sigma_data = wide, params, parameterization, sigma_data
        self.cells = len(sigma_data)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, labels: torch.Tensor | None = None) -> torch.Tensor:
        k = self.cells
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(x.shape[0])  # one per item
        xk = x.unflatten(0, (k, -1))  # (K, b, C, ...)
        s = s.reshape(k, -1, *([1] * (x.ndim - 1)))
        sigma_data = self.sigma_data.to(x).reshape(k, *([1] * x.ndim))
        c = coefficients(self.parameterization, s, sigma_data)
        wide_in = ((c.c_in * xk).transpose(0, 1).flatten(1, 2), c.c_noise.reshape(k, -1).T,
                   None if labels is None else labels.reshape(k, -1).T)
        output = functional_call(self.wide, self.params, wide_in).unflatten(1, (k, -1)).transpose(0, 1).to(x.dtype)
        return denoised_from_output(self.parameterization, output, xk, s, sigma_data).flatten(0, 1)


def widen_denoisers(denoisers: list) -> WideDenoiser | None:
    """The :class:`WideDenoiser` of ``denoisers`` (:class:`memorize.diffusion.Denoiser` of one architecture and
    parameterization, on one device), or None where their network is not widened (a DiT)."""
    wide = widen(denoisers[0].net, len(denoisers))
    if wide is None:
        return None
    stacked, _ = stack_module_state([d.net for d in denoisers])
    params = wide_parameters({name: p.detach() for name, p in stacked.items()})
    sigma_data = torch.tensor([float(d.sigma_data) for d in denoisers], dtype=torch.float32)
    return WideDenoiser(wide.eval(), params, denoisers[0].parameterization, sigma_data)


def sample_packed(roots: list[str | Path], cfg: SampleConfig, step: int | None = None, name: str | None = None,
                  device: str = "auto") -> list[Path | BaseException | None]:
    """Draw the trained samples ``cfg`` of several cells that trained together (equal :func:`pack_key`) in
    one sampling run of their :class:`WideDenoiser`, each written as :func:`memorize.generate.sample_cell`
    writes it (same file, settings and seeds: sample i of a cell has its own noise stream whatever the
    batch, so it equals the one drawn alone to float tolerance). Each batch holds ``cfg.batch_size`` items
    of every cell, so it takes K times the memory of one cell's batch. Returns, per cell, the samples'
    path (drawn now or found on disk), the error that keeps the cell from being sampled (it is left to
    be sampled alone, where the error is raised again), or None where its network is not widened."""
    from memorize.cell import load_trained_denoiser, resolve_device
    from memorize.generate import SamplePlan, generate, plan_samples, save_samples

    results: list[Path | BaseException | None] = [None] * len(roots)
    plans: dict[int, SamplePlan] = {}
    for i, root in enumerate(roots):
        try:
            plan = plan_samples(root, cfg, "trained", "ema", name, step=step)
        except Exception as err:
            results[i] = err
            continue
        if isinstance(plan, Path):
            results[i] = plan
        else:
            plans[i] = plan
    if not plans:
        return results
    keys = {pack_key(p.cell_cfg) for p in plans.values()}
    if len(keys) != 1 or None in keys:
        raise ValueError("sample_packed: the cells differ in what a pack must share (memorize.pack.pack_key)")
    start = time.perf_counter()
    dev = resolve_device(device)
    denoisers = {i: load_trained_denoiser(p.root, "ema", dev, p.checkpoint)[0] for i, p in plans.items()}
    wide = widen_denoisers(list(denoisers.values()))
    if wide is None:
        return results
    order = list(plans)
    k, b = len(order), cfg.batch_size
    # batch after batch, b items of every cell side by side (cell-major), as WideDenoiser takes them
    index = [(i, j) for start in range(0, cfg.num, b) for i in order for j in range(start, min(start + b, cfg.num))]
    seeds = np.asarray([plans[i].seeds[j] for i, j in index], dtype=np.int64)
    conditional = plans[order[0]].labels is not None
    labels = torch.stack([plans[i].labels[j] for i, j in index]) if conditional else None
    shape = tuple(plans[order[0]].data.train.shape[1:])
    drawn = generate(wide, shape, seeds, dataclasses.replace(cfg, batch_size=k * b), dev, labels, progress=False,
                     cuda_graph=plans[order[0]].cell_cfg.train.cuda_graph)
    share = (time.perf_counter() - start) / k
    rows: dict[int, list[int]] = {i: [] for i in order}  # cell i's rows, in the order of its samples
    for row, (cell, _) in enumerate(index):
        rows[cell].append(row)
    for i in order:
        results[i] = save_samples(plans[i], drawn[rows[i]], share)
    return results

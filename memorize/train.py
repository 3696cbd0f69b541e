"""The training loop: AdamW, EMA, gradient clipping, autocast on GPU, atomic resumable checkpoints.

Determinism: all randomness of a step (minibatch indices, noise levels, noise)
comes from one ``torch.Generator`` seeded by ``cfg.seed``; dropout uses the
global generators (CPU and CUDA). All their states go into every checkpoint with
the model, EMA, optimizer and the log, so a run killed at any point and resumed
from its last checkpoint ends bit-for-bit where an uninterrupted run ends (on the
CPU; on a GPU up to non-deterministic kernels).

Budgets: ``train.steps`` is how far to train, not part of the cell. The learning rate
does not depend on it, so training to S and then to S' > S gives the weights of one run
to S'; the checkpoint at every budget trained to is kept (``checkpoints/keep.json``),
periodic ones are rotated unless ``train.keep_all_checkpoints``.

Checkpoints asked for from outside (:func:`request_checkpoint`, e.g. from the handler of
SLURM's time-limit signal) are written at the next step boundary, where the state is whole,
and training then raises :class:`CheckpointRequested`; a run resumed from there ends where an
uninterrupted run ends, as from any checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from memorize import distributed
from memorize.cell import CellPaths, build_denoiser, init_cell, load_checkpoint, resolve_device, resolve_sigma_data
from memorize.config import CellConfig, ConfigError, absolute_root, save_config, to_dict
from memorize.diffusion import Denoiser, sample_training_sigma
from memorize.graphs import Inputs, StepRunner, capturable_optimizer, graph_refusal, portable_optimizer_state
from memorize.io import atomic_torch_save, atomic_write_json, atomic_write_text, progress_note
from memorize.models import NULL_LABEL, count_architecture_parameters, count_parameters
from memorize.progress import progress_bar

# running_loss: mean minibatch loss of the raw weights since the previous row (random noise levels).
# train_loss / heldout_loss: the EMA weights' loss on fixed noise (fixed_noise_loss), on as many training
# items as there are held-out ones, at evaluation rows: the two are comparable, their gap is a generalization gap.
LOG_FIELDS = ("step", "lr", "running_loss", "train_loss", "heldout_loss", "seconds")
# The held-out / fixed-noise evaluation draws its noise from this seed offset, apart from training's stream.
EVAL_SEED_OFFSET = 1_000_003


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; the last good checkpoint is kept."""


class CheckpointRequested(Exception):
    """Training stopped at a step boundary, its checkpoint at ``step`` written, as :func:`request_checkpoint`
    asked."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped at step {step} with a checkpoint, as asked")
        self.step = step


_checkpoint_request = threading.Event()
_loops_running = 0


@contextmanager
def training_loop() -> Iterator[None]:
    """Marks a training loop as running in this process (:func:`request_checkpoint` asks it), with no
    request left over from before."""
    global _loops_running
    _checkpoint_request.clear()
    _loops_running += 1
    try:
        yield
    finally:
        _loops_running -= 1


def checkpoint_requested() -> bool:
    """Whether a checkpoint was asked for since the last call (the request is taken: read once per step)."""
    if not _checkpoint_request.is_set():
        return False
    _checkpoint_request.clear()
    return True


def request_checkpoint() -> bool:
    """Ask the training loop running in this process to write a checkpoint at its next step boundary and
    raise :class:`CheckpointRequested`. Safe to call from a signal handler. Returns False, asking nothing,
    where no training loop is running (the caller then acts at once)."""
    if _loops_running == 0:
        return False
    _checkpoint_request.set()
    return True


def learning_rate(cfg_lr: float, warmup_steps: int, step: int) -> float:
    """Linear warm-up to ``cfg_lr`` over ``warmup_steps``, then constant (as in EDM's training)."""
    return cfg_lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else cfg_lr


@torch.no_grad()
def ema_step(ema: AveragedModel, params: list[torch.Tensor], decay: float) -> None:
    """EMA with the usual warm-up: ``ema <- d ema + (1 - d) param``, ``d = min(decay, (1 + n) / (10 + n))``
    after n updates, so short runs are not dominated by the initial weights; the first update (n = 0)
    copies the weights, as ``AveragedModel`` does.

    The weight ``1 - d`` is computed on the device from ``ema.n_averaged`` (no host read: a CUDA graph
    can capture it) and applied by one ``torch._foreach_lerp_``; on the CPU each value equals that of a
    lerp by the same weight given as a number."""
    n = ema.n_averaged
    count = n.to(torch.float64)
    weight = torch.where(n == 0, 1.0, 1 - torch.clamp((1 + count) / (10 + count), max=decay)).to(params[0].dtype)
    torch._foreach_lerp_(list(ema.module.parameters()), params, [weight] * len(params))
    n.add_(1)


@torch.no_grad()
def fixed_noise_loss(denoiser: Denoiser, data: torch.Tensor, labels: torch.Tensor | None, cfg: CellConfig,
                     device: torch.device) -> float:
    """Mean denoising loss of ``denoiser`` on ``data`` with noise levels and noise fixed by ``cfg.seed``,
    so values at different steps (and on train vs held-out data) are comparable. The batches' sums are read
    on the host once, at the end (not a wait for the device per batch), and added there in batch order."""
    if len(data) == 0:
        return math.nan
    gen = torch.Generator().manual_seed(cfg.seed + EVAL_SEED_OFFSET)
    sums = []
    for start in range(0, len(data), cfg.train.batch_size):
        x0 = data[start:start + cfg.train.batch_size]
        sigma = sample_training_sigma(cfg.diffusion.noise, len(x0), gen, p_mean=cfg.diffusion.p_mean,
                                      p_std=cfg.diffusion.p_std, sigma_max=cfg.diffusion.sigma_max)
        noise = torch.randn(x0.shape, generator=gen)
        lab = None if labels is None else labels[start:start + len(x0)].to(device)
        sums.append(denoiser.loss(x0.to(device), sigma.to(device), noise.to(device), lab).sum())
    total = 0.0
    for value in torch.stack(sums).tolist():  # a float64 running sum, as Python adds (not builtin sum's)
        total += value
    return total / len(data)


def losses_at(rows: list[dict], step: int) -> dict:
    """The logged losses of a run at ``step``: the last running loss and the last evaluation (train and
    held-out loss on fixed noise, and the step it was taken at) up to ``step``."""
    rows = [r for r in rows if r["step"] <= step]
    last_eval = next((r for r in reversed(rows) if r["heldout_loss"] != ""), {})
    return {"running_loss": rows[-1]["running_loss"] if rows else math.nan,
            "train_loss": last_eval.get("train_loss", math.nan),
            "heldout_loss": last_eval.get("heldout_loss", math.nan), "loss_step": last_eval.get("step")}


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def resume_point(paths: CellPaths, budget: int) -> int | None:
    """The checkpoint step to start from for a run to ``budget`` steps: ``budget`` itself when it was
    reached before, else the latest step below it (None: from scratch). A later checkpoint without one at
    ``budget`` is an error: the weights at ``budget`` were not kept."""
    steps = paths.checkpoint_steps()
    if budget in steps:
        return budget
    later = [s for s in steps if s > budget]
    if later:
        raise ConfigError(f"{paths.root} is trained to step {later[-1]} and kept no checkpoint at step {budget} "
                          f"(kept: {', '.join(map(str, steps))}); ask for a kept budget or a longer one, or set "
                          f"train.keep_all_checkpoints to keep every checkpoint of future runs")
    earlier = [s for s in steps if s < budget]
    return earlier[-1] if earlier else None


def log_spaced_steps(first: int, per_decade: int, budget: int) -> list[int]:
    """Training steps ``round(first * 10^(i / per_decade))``, i = 0, 1, ..., up to ``budget``, and ``budget``.

    The grid does not depend on the budget (only its end does), so a cell trained further later
    continues the same grid: 10, 18, 32, 56, 100, 178, 316, 562, 1000, ... for ``first = 10``, 4 per decade."""
    steps, i = [], 0
    while (step := round(first * 10 ** (i / per_decade))) < budget:
        if not steps or step > steps[-1]:
            steps.append(step)
        i += 1
    return steps + [budget]


def _keep_steps(paths: CellPaths, steps: set[int], write: bool = True) -> set[int]:
    """Record ``steps`` among the steps whose checkpoints are never rotated away (where ``write``); returns
    them all. A damaged record is made again from the checkpoints on disk (each of them kept: none is lost)."""
    kept, damaged = set(), False
    if paths.kept_budgets.is_file():
        try:
            kept = {int(s) for s in json.loads(paths.kept_budgets.read_text())}
        except (ValueError, TypeError, UnicodeDecodeError) as err:
            kept, damaged = set(paths.checkpoint_steps()), True
            print(f"memorize: {paths.kept_budgets} was damaged ({type(err).__name__}); every checkpoint on disk is "
                  f"kept ({', '.join(map(str, sorted(kept))) or 'none'})", file=sys.stderr)
    every = kept | steps
    if write and (every != kept or damaged):
        atomic_write_json(paths.kept_budgets, sorted(every))
    return every


def _all_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point tensor of the module's state is finite: one read on the host, not one per
    tensor (each a wait for the device on a GPU)."""
    flags = [torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


@dataclass
class Batch:
    """One training step's draw for one cell: images, noise levels, noise and labels (on the device)."""

    x0: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    labels: torch.Tensor | None


def training_device_rng(saved: torch.Tensor | list | None, index: int = 0) -> torch.Tensor | None:
    """The CUDA generator state to restore on the training device (``cuda:index``) from a checkpoint's
    ``cuda_rng``: the training device's own state (what checkpoints hold), or from a list of one state
    per GPU visible when it was written, that device's entry (the first where the list is shorter).
    Only the training device's generator draws (dropout), so a resume that sees fewer GPUs than the
    run that wrote the checkpoint restores it all the same."""
    if isinstance(saved, (list, tuple)):
        return (saved[index] if index < len(saved) else saved[0]) if saved else None
    return saved


class CellTraining:
    """One cell's training state, built and resumed as :func:`train` runs it: the denoiser, its EMA,
    AdamW, the cell's own generator (minibatches, noise levels, noise, label dropout), the loss log
    and the checkpoint files. A step is :meth:`draw_host`, then :meth:`device_step` (run by
    :meth:`step_runner`, captured in a CUDA graph on a GPU; for several cells at once,
    :mod:`memorize.pack`), then the checks of what it returns and :meth:`record`."""

    def __init__(self, cfg: CellConfig, out: str | Path, keep_steps: tuple[int, ...] = (),
                 ranks: distributed.Ranks | None = None):
        self.cfg = cfg = absolute_root(cfg)
        self.paths = paths = CellPaths(Path(out))
        self.ranks = ranks = ranks or distributed.ranks()
        self.device = resolve_device(cfg.train.device, "train.device")
        if ranks.world > 1:  # data parallel (memorize.distributed): each process its share of every minibatch
            if cfg.train.batch_size % ranks.world:
                raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not divide among {ranks.world} "
                                  f"processes")
            if self.device.type == "cuda":
                self.device = distributed.rank_device(ranks, torch.cuda.device_count())
            distributed.start(ranks, self.device)
        if not ranks.main:  # the cell's files are written by rank 0 first, then read
            distributed.barrier(ranks)
        self.data = data = init_cell(cfg, paths.root)
        if ranks.main:
            distributed.barrier(ranks)
        self.shape = tuple(data.train.shape[1:])
        self.budget = cfg.train.steps
        resume = resume_point(paths, self.budget)

        torch.manual_seed(cfg.seed)
        self.sigma_data = resolve_sigma_data(cfg, data.train)
        self.denoiser = build_denoiser(cfg, self.shape, data.split.num_classes, self.sigma_data).to(self.device)
        self.ema = AveragedModel(self.denoiser, device=self.device)  # its update count on the device too
        self.optimizer = torch.optim.AdamW(self.denoiser.parameters(), lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.rows, self.elapsed = 0, [], 0.0
        self.losses: list[float] = []  # minibatch losses since the last log row (saved with checkpoints)
        self.torch_rng = torch.get_rng_state()  # the global stream (dropout) as of this cell's start
        if resume is not None:
            state = load_checkpoint(paths.checkpoint(resume))
            self.denoiser.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.gen.set_state(state["generator"])
            self.torch_rng = state["torch_rng"]
            torch.set_rng_state(self.torch_rng)
            saved = training_device_rng(state.get("cuda_rng"), self.device.index or 0)
            if saved is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(saved, self.device)
            self.step, self.rows, self.elapsed = state["step"], state["log"], state["seconds"]
            self.losses = state["pending_losses"]
        # Written only now that the inputs are known good: a refused run changes nothing on disk.
        if ranks.main:
            save_config(cfg, paths.config)
        self.kept = _keep_steps(paths, {self.budget, *(s for s in keep_steps if s <= self.budget)}, ranks.main)
        self.weights = list(self.denoiser.parameters())
        self.params = count_architecture_parameters(self.denoiser)
        self.params_total = count_parameters(self.denoiser)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        # The minibatch loss, compiled where train.compile asks (the module and its state dict stay the eager ones).
        loss = distributed.parallel_loss(self.denoiser, ranks, self.device)
        self.loss = torch.compile(loss) if cfg.train.compile else loss
        self.start_time = time.perf_counter() - self.elapsed
        self.lr = cfg.train.lr
        self.denoiser.train()
        # Why the steps run eagerly rather than as a CUDA graph (memorize.graphs); None: they are captured.
        self.eager_because = graph_refusal(cfg.train.cuda_graph, self.device, ranks.world, cfg.train.compile)
        self.step_mode: str | None = None  # how this run's steps ran (StepRunner.mode), for train.json
        self.packed = 1  # cells that began this run's training together (memorize.pack), for train.json

    @property
    def done(self) -> bool:
        return self.step >= self.budget

    def last_good(self) -> str:
        return f"last good checkpoint kept: {self.paths.latest_checkpoint() or 'none yet'}"

    def draw_host(self) -> Batch:
        """This step's learning rate (``self.lr``) and its minibatch, noise levels, noise and labels drawn
        from the cell's generator in a fixed order (the stream a resumed run continues), on the CPU."""
        cfg, data, gen = self.cfg, self.data, self.gen
        self.lr = learning_rate(cfg.train.lr, cfg.train.warmup_steps, self.step)
        idx = torch.randint(len(data.train), (cfg.train.batch_size,), generator=gen)
        sigma = sample_training_sigma(cfg.diffusion.noise, cfg.train.batch_size, gen, p_mean=cfg.diffusion.p_mean,
                                      p_std=cfg.diffusion.p_std, sigma_max=cfg.diffusion.sigma_max)
        noise = torch.randn((cfg.train.batch_size, *self.shape), generator=gen)
        labels = None if data.train_labels is None else data.train_labels[idx]
        if labels is not None and cfg.train.label_dropout > 0:  # classifier-free guidance: some labels -> null
            labels = torch.where(torch.rand(len(idx), generator=gen) < cfg.train.label_dropout, NULL_LABEL, labels)
        x0, sigma, noise, labels = (distributed.shard(t, self.ranks) for t in (data.train[idx], sigma, noise, labels))
        return Batch(x0, sigma, noise, labels)

    def draw(self) -> Batch:
        """:meth:`draw_host`, with this step's learning rate set in the optimizer and the draws on the device."""
        b = self.draw_host()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return Batch(b.x0.to(self.device), b.sigma.to(self.device), b.noise.to(self.device),
                     b.labels if b.labels is None else b.labels.to(self.device))

    def step_runner(self) -> StepRunner:
        """What runs :meth:`device_step` each step: captured in a CUDA graph unless :attr:`eager_because`
        says why not; then the optimizer steps on the device, its learning rate an input of the step."""
        if self.eager_because is not None and self.device.type == "cuda" and self.cfg.train.cuda_graph != "off":
            print(f"memorize: {self.paths.root.name}: training steps run eagerly ({self.eager_because})",
                  file=sys.stderr, flush=True)
        return StepRunner(self.device_step, self.device, self.eager_because, self.paths.root.name,
                          on_static=lambda static: capturable_optimizer(self.optimizer, static["lr"]),
                          before_capture=lambda: self.optimizer.zero_grad(set_to_none=True))

    def step_inputs(self, batch: Batch, runner: StepRunner) -> Inputs:
        """A step's inputs for ``runner``: the draws and, where the step is captured, the learning rate (a
        device input); an eager step takes the rate from the optimizer, set here as a number."""
        inputs: Inputs = {"x0": batch.x0, "sigma": batch.sigma, "noise": batch.noise, "labels": batch.labels}
        if runner.capture:
            inputs["lr"] = torch.tensor(self.lr, dtype=torch.float32)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
        return inputs

    def device_step(self, inputs: Inputs) -> torch.Tensor:
        """One training step as device work only (what a CUDA graph captures): the minibatch loss and its
        backward pass, the gradient clipped to ``train.grad_clip`` (``clip_grad_norm_``), the AdamW step and
        the EMA update (:func:`ema_step`). Returns (minibatch loss, total gradient norm before clipping),
        which the host checks after the step (:meth:`check_loss`, :meth:`check_grad_norm`)."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            loss = self.loss(inputs["x0"], inputs["sigma"], inputs["noise"], inputs["labels"]).mean()
        minibatch_loss = distributed.mean(loss, self.ranks)  # over every rank's share: the whole minibatch's
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.weights, self.cfg.train.grad_clip or math.inf)
        self.optimizer.step()
        ema_step(self.ema, self.weights, self.cfg.train.ema_decay)
        return torch.stack([minibatch_loss.detach().float(), grad_norm.float()])

    def take_step(self, runner: StepRunner) -> bool:
        """One training step: draw, :meth:`device_step` through ``runner``, check what it returns, record. Returns
        whether a checkpoint was asked for from outside (:func:`request_checkpoint`; then written)."""
        loss, grad_norm = runner(self.step_inputs(self.draw_host(), runner))
        self.check_loss(loss)
        self.check_grad_norm(grad_norm)
        # read once: a request arriving later is honoured next step (on every rank, if any received one)
        asked = distributed.any_rank(checkpoint_requested(), self.ranks, self.device)
        self.record(loss, asked)
        return asked

    def check_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss ({loss}) at step {self.step + 1}; "
                                     f"{self.last_good()}. Try a lower train.lr or a train.grad_clip.")

    def check_grad_norm(self, grad_norm: float) -> None:
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm ({grad_norm}) at step {self.step + 1} with a "
                                     f"finite loss; {self.last_good()}. Try a lower train.lr or a train.grad_clip.")

    def _evaluates_at(self, step: int) -> bool:
        return step % self.cfg.train.eval_every == 0 or step == self.budget or step in self.kept

    def _checkpoints_at(self, step: int) -> bool:
        return step % self.cfg.train.checkpoint_every == 0 or step == self.budget or step in self.kept

    def reads_state(self, asked: bool = False) -> bool:
        """Whether :meth:`record` of the coming step evaluates or checkpoints, so reads the weights, the EMA
        and the optimizer state."""
        return asked or self._evaluates_at(self.step + 1) or self._checkpoints_at(self.step + 1)

    def record(self, loss: float, asked: bool = False) -> bool:
        """The step is taken: count it, log, evaluate and checkpoint on schedule (and, where ``asked``, off
        it). Returns whether a checkpoint was written."""
        cfg, data = self.cfg, self.data
        self.step += 1
        step = self.step
        self.losses.append(loss)
        evaluates = self._evaluates_at(step)
        if step % cfg.train.log_every == 0 or evaluates:
            row = {"step": step, "lr": self.lr,
                   "running_loss": sum(self.losses) / len(self.losses) if self.losses else math.nan,
                   "train_loss": "", "heldout_loss": "", "seconds": round(time.perf_counter() - self.start_time, 3)}
            self.losses = []
            if evaluates and self.ranks.main:  # the other ranks' rows are never written
                ema = self.ema.module
                ema.eval()
                # The same number of training items as held-out ones, so the two losses compare.
                n_eval = max(len(data.heldout), 1)
                train_eval_labels = None if data.train_labels is None else data.train_labels[:n_eval]
                row["heldout_loss"] = fixed_noise_loss(ema, data.heldout, data.heldout_labels, cfg, self.device)
                row["train_loss"] = fixed_noise_loss(ema, data.train[:n_eval], train_eval_labels, cfg, self.device)
            self.rows.append(row)
        scheduled = self._checkpoints_at(step)
        if scheduled or asked:
            self.elapsed = time.perf_counter() - self.start_time
            self.save_checkpoint(interim=not scheduled)
        if self.ranks.main:
            progress_note(self.paths.root, "training", step, self.budget)
        return scheduled or asked

    def save_checkpoint(self, interim: bool = False) -> Path:
        paths, step = self.paths, self.step
        if not (_all_finite(self.denoiser) and _all_finite(self.ema)):  # never write one that cannot be resumed
            raise NonFiniteLossError(f"non-finite weights at step {step}; {self.last_good()}")
        if not self.ranks.main:  # every rank holds the same weights: rank 0 writes them
            return paths.checkpoint(step)
        newest = paths.checkpoint_steps()[-1:] or [0]
        rng = torch.get_rng_state() if self.cfg.model.dropout > 0 else self.torch_rng
        path = atomic_torch_save(paths.checkpoint(step), {
            "step": step, "model": self.denoiser.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": portable_optimizer_state(self.optimizer), "generator": self.gen.get_state(), "torch_rng": rng,
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "log": self.rows, "pending_losses": self.losses, "seconds": self.elapsed, "shape": self.shape,
            "num_classes": self.data.split.num_classes, "params": self.params, "params_total": self.params_total,
            "sigma_data": self.sigma_data, "config": to_dict(self.cfg)})
        if step >= newest[0]:  # a shorter budget trained after a longer one leaves the longer log in place
            _write_log(paths.loss_log, self.rows)
        if not self.cfg.train.keep_all_checkpoints:
            for old in paths.checkpoint_steps():
                if old not in self.kept and old != step and old < step:
                    paths.checkpoint(old).unlink()
        interims = json.loads(paths.interim_checkpoints.read_text()) if paths.interim_checkpoints.is_file() else []
        if interim:
            atomic_write_json(paths.interim_checkpoints, sorted({*interims, step}))
        elif interims:  # superseded by this scheduled checkpoint
            for old in interims:
                if old < step and old not in self.kept:
                    paths.checkpoint(old).unlink(missing_ok=True)
            atomic_write_json(paths.interim_checkpoints, [s for s in interims if s > step])
        return path

    def resume_hint(self) -> str:
        below = [s for s in self.paths.checkpoint_steps() if s <= self.budget]
        return (f"training stopped at step {self.step} of {self.budget}; re-running the same command resumes "
                f"from step {below[-1] if below else 0} (its last checkpoint)")

    def summary(self) -> dict:
        """The training summary at the budget, also written to ``train.json``."""
        summary = {"steps": self.step, "params": self.params, "params_total": self.params_total,
                   "sigma_data": self.sigma_data, "device": str(self.device), "seconds": round(self.elapsed, 2),
                   **losses_at(self.rows, self.budget), "n_train": len(self.data.train),
                   "n_duplicates_removed": self.data.split.n_duplicates}
        if self.data.split.n_near_duplicates:
            summary["n_near_duplicates_removed"] = self.data.split.n_near_duplicates
        if self.step_mode is not None:
            summary["step_mode"] = self.step_mode
        if self.packed > 1:  # ``seconds`` is then the pack's wall time, shared with the others
            summary["packed"] = self.packed
        if self.ranks.main:
            atomic_write_json(self.paths.train_summary, summary)
        return summary


def train(cfg: CellConfig, out: str | Path, progress: bool = True, keep_steps: tuple[int, ...] = (),
          ranks: distributed.Ranks | None = None) -> dict:
    """Train the cell ``cfg`` in directory ``out`` to ``cfg.train.steps``, resuming from its latest
    checkpoint below that budget if any; a budget reached before returns at once.

    ``keep_steps``: further steps at which to write a checkpoint that is never rotated away and to
    evaluate the losses (the training-time view, e.g. :func:`log_spaced_steps`). ``ranks``: this
    process's place among the processes training the cell together (default: the launcher's
    environment, :func:`memorize.distributed.ranks`); every rank calls ``train`` alike.

    Returns the training summary at the budget (also written to ``out/train.json``).
    """
    cell = CellTraining(cfg, out, keep_steps, ranks)
    bar = progress_bar(total=cell.budget, initial=cell.step, disable=not progress or not cell.ranks.main,
                       desc="training", unit="step")
    runner = cell.step_runner()
    try:
        with training_loop():
            while not cell.done:
                asked = cell.take_step(runner)
                bar.update(1)
                if cell.rows and cell.rows[-1]["step"] == cell.step:  # shown at the bar's next redraw
                    bar.set_postfix(loss=f"{cell.rows[-1]['running_loss']:.4f}", refresh=False)
                if asked:
                    raise CheckpointRequested(cell.step)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (memorize.cli): say where a re-run resumes
        err.resume_hint = cell.resume_hint()
        raise
    finally:
        bar.close()
    if checkpoint_requested():  # asked for as the loop ended: the budget's checkpoint is written
        raise CheckpointRequested(cell.step)
    cell.step_mode = runner.mode if runner.calls else None
    summary = cell.summary()
    distributed.barrier(cell.ranks)  # rank 0's files are written before any rank returns
    return summary

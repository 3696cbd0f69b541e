"""Data parallelism for one cell: k processes (one per GPU; on the CPU, processes with the gloo backend)
train the same cell, each the loss of its share of every minibatch, and PyTorch's
``DistributedDataParallel`` averages their gradients.

Every process draws the whole minibatch of a step from the cell's generator, as one process would, and
takes rows ``[r B / k, (r + 1) B / k)`` of it (rank r of k; ``train.batch_size`` must divide by k). The
mean of the k shard losses is then the one-process minibatch loss and the averaged gradient its
gradient, so a run on k processes follows the one-process run to float rounding (summation order).
Rank 0 alone writes checkpoints, logs and results; every rank resumes from the same checkpoint.

Processes are started by torch's own launcher (``torchrun --nproc-per-node K -m memorize.cli train
...``), which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`ranks` reads them, and without them a process is rank 0 of 1 and nothing here does anything.
A sweep's cell job started as K Submitit tasks (SLURM tasks, or the local executor's) takes its ranks
from Submitit's job environment instead (:func:`job_ranks`), and hands them to each training it runs.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes training one cell."""

    rank: int = 0
    world: int = 1
    local: int = 0  # its index on this machine: the GPU it uses
    address: str | None = None  # rank 0's tcp://HOST:PORT; None: the launcher's environment (env://)

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.rank == 0


def ranks(env: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torch's launcher put in the environment (rank 0 of 1 where it put none)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", 1))
    if world <= 1:
        return Ranks()
    rank = int(env["RANK"])
    return Ranks(rank, world, int(env.get("LOCAL_RANK", rank)))


def job_ranks() -> Ranks:
    """The ranks of a Submitit job's task (rank 0 of 1 outside Submitit, or in a job of one task): the task's
    global and local rank among the job's tasks, and rank 0's address from Submitit's
    ``TorchDistributedEnvironment`` (the job's first host, a port drawn from the job id)."""
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    try:
        if JobEnvironment().num_tasks <= 1:
            return Ranks()
    except RuntimeError:  # not in a Submitit job
        return Ranks()
    env = TorchDistributedEnvironment()
    return Ranks(env.rank, env.world_size, env.local_rank, f"tcp://{env.master_addr}:{env.master_port}")


def rank_device(r: Ranks, visible: int) -> torch.device:
    """The GPU of rank ``r`` among the ``visible`` GPUs its process sees: its local rank where it sees its
    node's GPUs, GPU 0 where the cluster shows each task only its own."""
    return torch.device("cuda", r.local if visible > r.local else 0)


# How long a rank waits for rank 0's next message (from_main): the other ranks of a sweep's cell wait
# while rank 0 samples and scores (hours, for large cells); a rank that died closes its connections,
# which ends the wait at once. Training's own collectives keep torch's default timeout.
WAIT = datetime.timedelta(days=7)
_control: Any = None  # the gloo group of from_main, made by start with the process group


def start(r: Ranks, device: torch.device) -> None:
    """Join the process group (NCCL between GPUs, gloo between CPU processes) where there is more than one
    process and it is not joined yet, with the gloo group of :func:`from_main`."""
    global _control
    if r.world > 1 and not dist.is_initialized():
        if device.type == "cuda":  # NCCL's collectives run on the current device
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=r.address or "env://",
                                rank=r.rank, world_size=r.world)
        _control = dist.new_group(backend="gloo", timeout=WAIT)  # from_main's messages


def stop(r: Ranks) -> None:
    """Leave the process group (where this process joined one)."""
    global _control
    if r.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
        _control = None


def from_main(message: Any, r: Ranks) -> Any:
    """``message`` of rank 0, on every rank (each other rank waits for it). Sent through a gloo group of its
    own, on the CPU, whatever the training's backend: a rank may wait here for hours."""
    if r.world == 1:
        return message
    box = [message if r.main else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def shard(rows: torch.Tensor | None, r: Ranks) -> torch.Tensor | None:
    """Rank ``r``'s rows of a minibatch tensor (its share of the first dimension)."""
    if rows is None or r.world == 1:
        return rows
    size = len(rows) // r.world
    return rows[r.rank * size:(r.rank + 1) * size]


def mean(value: torch.Tensor, r: Ranks) -> torch.Tensor:
    """The mean of a scalar over the ranks (itself for one process)."""
    if r.world == 1:
        return value
    total = value.detach().clone().float()
    dist.all_reduce(total)
    return total / r.world


def any_rank(flag: bool, r: Ranks, device: torch.device) -> bool:
    """Whether ``flag`` holds on some rank (a checkpoint asked for by a signal one process received)."""
    if r.world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(r: Ranks) -> None:
    """Wait until every rank is here."""
    if r.world > 1:
        dist.barrier()


class LossModule(torch.nn.Module):
    """The denoiser's per-item loss as a module's forward pass, so that ``DistributedDataParallel`` wraps
    it (it hooks the gradient averaging onto a module's forward)."""

    def __init__(self, denoiser: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser.loss(x0, sigma, noise, labels)


def parallel_loss(denoiser: torch.nn.Module, r: Ranks, device: torch.device):
    """The loss to call in training: the denoiser's own for one process, else through
    ``DistributedDataParallel`` (gradients averaged over the ranks in the backward pass)."""
    if r.world == 1:
        return denoiser.loss
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(LossModule(denoiser), device_ids=[device.index] if device.type == "cuda" else None)

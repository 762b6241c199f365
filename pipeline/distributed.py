"""Data parallelism on ``torch.distributed``: one process per device, launched by torchrun.

Every rank draws the same epoch plan and the same index batches from the seed
(``pipeline.schedule``, ``pipeline.batching``) and trains on its own contiguous shard of each
global batch B (``shard``). A shard of n_r examples scales its mean loss by n_r / B and the ranks'
gradients are summed (one all-reduce of one flat buffer per step, ``GradientSync``), so the
update is that of the mean loss over the global batch, as one process with batch B computes it:
Σ_r (n_r/B)·∇(1/n_r Σ_{i∈r} ℓ_i) = ∇(1/B Σ_i ℓ_i). Unequal shards (a batch of 5 on 2 ranks) and
empty ones (a batch of 1) stay exact; an empty shard contributes zeros to the all-reduce.

The gradients are reduced after the step's backward passes rather than overlapped with them (as
``DistributedDataParallel`` does), because a step here may run several forward passes (SMART's
perturbed ones, the contrastive loss's single sentences) through heads that differ per step, and
PCGrad needs each task's gradient reduced on its own (``PCGrad.reduce``) before its projection.

Evaluation is sharded the same way and gathered in rank order, which is the original row order.
Only rank 0 writes (checkpoints, the best snapshot, the stage's outputs); the others wait at a
barrier, so every rank then reads the same files (the checkpoint dir must be one all nodes see).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from pipeline.device import resolve_device

# torchrun's environment (torch.distributed.run): present in every process it launches.
WORLD_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in WORLD_ENV)


def torchrun_command(processes: int, script: str, argv: list[str]) -> list[str]:
    """``script`` on ``processes`` local processes under torchrun (``--standalone``: a
    rendezvous on this node at a free port). torchrun sets OMP_NUM_THREADS=1 per process
    unless it is set: ``train.num_threads`` sets torch's threads itself."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", script, *argv]


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel ranks (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = World()


def init_world(device: str, backend: str = "auto", timeout_minutes: float = 30.0) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU unless ``backend``
    names one); a process not launched by torchrun is the single rank of its own run.
    ``device`` is ``train.device``: a rank binds the GPU ``resolve_device`` gives its local
    rank (``cuda:N`` → ``cuda:N+r``), the one its trainer then runs on."""
    if not launched_by_torchrun():
        return SINGLE
    local_rank = int(os.environ["LOCAL_RANK"])
    rank_device = resolve_device(device, local_rank)
    device_id = None
    if rank_device.type == "cuda":
        # NCCL's object collectives run on the current device: this rank's own GPU (an index:
        # set_device and init_process_group refuse a bare `cuda`).
        index = rank_device.index
        device_id = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        torch.cuda.set_device(device_id)
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if rank_device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes),
                                device_id=device_id)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def shard(index: np.ndarray, world: World) -> np.ndarray:
    """This rank's contiguous part of ``index`` (sizes differ by at most one)."""
    if not world.distributed:
        return index
    return np.array_split(index, world.size)[world.rank]


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place; returns it."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


class GradientSync:
    """Sum the gradients of ``params`` over the ranks with one all-reduce per call.

    The grads go into one persistent flat buffer, followed by one flag per parameter (1 where
    this rank has a grad), reduced together: a parameter no rank touched this step (another
    task's head, an unused pooler) keeps no grad, so AdamW skips it as it would in one process;
    one that only some ranks touched (an empty shard) gets the others' sum."""

    def __init__(self, params: list[torch.nn.Parameter], world: World):
        self.params = [p for p in params if p.requires_grad]
        self.world = world
        self.buffer: torch.Tensor | None = None

    def __call__(self) -> None:
        if not self.world.distributed or not self.params:
            return
        sizes = [p.numel() for p in self.params]
        total = sum(sizes)
        if self.buffer is None:
            first = self.params[0]
            self.buffer = torch.empty(total + len(sizes),
                                      dtype=torch.promote_types(first.dtype, torch.float32),
                                      device=first.device)
        offset = 0
        for p, size in zip(self.params, sizes, strict=True):
            part = self.buffer[offset:offset + size]
            offset += size
            if p.grad is None:
                part.zero_()
            else:
                part.copy_(p.grad.reshape(-1))
        flags = self.buffer[total:]
        flags.copy_(torch.tensor([float(p.grad is not None) for p in self.params]))
        dist.all_reduce(self.buffer, op=dist.ReduceOp.SUM)
        touched = (flags > 0).tolist()  # one host sync, the all-reduce's own
        offset = 0
        for p, size, used in zip(self.params, sizes, touched, strict=True):
            part = self.buffer[offset:offset + size].view_as(p)
            offset += size
            if not used:
                continue
            if p.grad is None:
                p.grad = part.to(p.dtype, copy=True)
            else:
                p.grad.copy_(part)

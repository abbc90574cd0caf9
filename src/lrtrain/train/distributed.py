"""Multi-process training under ``torchrun``: process group set-up and keeping ranks identical.

``torchrun --nproc-per-node N -m lrtrain train RECIPE`` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK in their environment; `init_from_env` joins them into one process group (NCCL on GPUs,
gloo on CPUs) and each process trains a DistributedDataParallel replica on its share of every batch.

Methods must take identical decisions on every rank. Gradients are averaged by DDP, so the weights are
equal on all ranks and a deterministic method (SVD of equal weights, same step counter) computes the
same projection everywhere; but an SVD on different GPUs may still differ in the last bits, so after a
step where the method projected (it logged ranks) or changed layers, the trainer calls
`broadcast_module_` to copy rank 0's weights to all ranks. A user's own DDP loop should do the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(use_cuda: bool) -> World:
    """Join the process group torchrun described in the environment; a single process needs none.

    ``use_cuda`` picks NCCL (and the GPU of this process's local rank) over gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return World()
    world = World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world


def shutdown(wait: bool = True) -> None:
    """Leave the process group, if this process joined one.

    ``wait``: once every process is there, so none tears its connections down while another still talks
    through them (gloo then aborts a process now and then: "terminate called without an active
    exception"). A process leaving on an error must not wait: the others may never get there."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_module_(model: nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``model`` with rank ``src``'s, in place.

    One flattened broadcast per dtype, not one per tensor. No-op without a process group.
    """
    broadcast_tensors_([t.data for t in (*model.parameters(), *model.buffers())], src)


def broadcast_tensors_(tensors: list[Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s, in place: one flattened broadcast per dtype. No-op
    without a process group."""
    _flat_per_dtype(tensors, lambda flat: dist.broadcast(flat, src))


def average_tensors_(tensors: list[Tensor]) -> None:
    """Replace each floating-point tensor by its mean over all ranks, in place: one flattened all-reduce
    per dtype. No-op without a process group."""
    def mean(flat: Tensor) -> None:
        dist.all_reduce(flat)
        flat /= dist.get_world_size()

    _flat_per_dtype(tensors, mean)


def _flat_per_dtype(tensors: list[Tensor], collective) -> None:
    """`collective(flat)` on the tensors of each dtype flattened into one, then each written back."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        for t, part in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(part.view_as(t))


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks in place (no-op without a process group); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor

"""Data-parallel training with torchrun: set-up, this rank's device, and reductions.

`torchrun --nproc-per-node N -m bertkit finetune|squad|pretrain ...` sets RANK / WORLD_SIZE /
LOCAL_RANK; a plain command is world size 1 and never touches torch.distributed. Gloo on the CPU,
NCCL on CUDA (each rank on GPU LOCAL_RANK). The process group is joined once per process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import resolve_device


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def launch_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) for a plain command."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def rank_device(device: str | None, local_rank: int, world_size: int) -> torch.device:
    """This rank's device: under torchrun with CUDA, GPU LOCAL_RANK (made current); otherwise
    `device` as `--device` gives it. Needs no process group (`bertkit embed` joins none)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and world_size > 1:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str | None = "auto") -> DistributedContext:
    """Join the process group torchrun describes (if any) and pick this rank's device: under
    torchrun with CUDA, GPU LOCAL_RANK; otherwise `device` as `--device` gives it."""
    rank, world_size, local_rank = launch_env()
    dev = rank_device(device, local_rank, world_size)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, dev)


@contextlib.contextmanager
def session(device: str | None = "auto"):
    """`setup` for the length of one training command, leaving the process group afterwards."""
    ctx = setup(device)
    try:
        yield ctx
        # on a normal end every rank leaves together: a rank that tore gloo down while another still
        # used it (rank 0 scoring and writing) aborted now and then ("terminate called without an
        # active exception", about 1 run in 5 of the two-process test); after an error, no barrier
        ctx.barrier()
    finally:
        ctx.close()

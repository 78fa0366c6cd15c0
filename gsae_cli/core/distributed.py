"""Data-parallel training across processes with torch.distributed (gloo on CPUs, NCCL on GPUs),
launched by torchrun (or srun running torchrun): the world comes from its environment variables.

The design keeps a run's result independent of the number of ranks. The data order is fixed by
`train.data_streams` S (not by the rank count): the store's chunks are split into S contiguous
streams, each shuffled on its own, and global batch k is stream 0's k-th sub-batch, then stream
1's, ... With N ranks (N dividing S) rank r reads only streams r, r+N, ..., so reads are disjoint,
and one process with the same S sees exactly the same global batches. Gradients are averaged
over ranks before the (identical) Adam step, so every rank holds the same weights.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Set by a sweep launched under torchrun (`torchrun ... -m gsae_cli train -m ...`): its members are
# spread over the ranks (sparsify's "distribute modules"), so each member runs as one process.
SPREAD_MEMBERS = "GSAE_SPREAD_MEMBERS"


def world_from_env() -> World:
    """torchrun's world (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    if os.environ.get(SPREAD_MEMBERS) == "1":
        return World()
    size = int(os.environ.get("WORLD_SIZE", 1))
    return World(int(os.environ.get("RANK", 0)), size, int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(name: str) -> torch.device:
    """The device config names, made this process's own GPU under torchrun (cuda:LOCAL_RANK):
    also for a sweep's members spread over ranks, which run as single processes."""
    from gsae_cli.lm.models import resolve_device

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


# A rank may wait at a barrier while another finishes its part of a long harvest.
TIMEOUT = timedelta(hours=float(os.environ.get("GSAE_DIST_TIMEOUT_HOURS", 24)))


def init(world: World, device: torch.device) -> None:
    """Join the process group (once per process) when there is more than one rank."""
    if world.size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        if device.type != "cuda":
            # Leave a gloo group before the interpreter tears down: left to its destructor it can
            # abort a rank that exits while the other still holds the connection (SIGABRT,
            # "terminate called without an active exception", seen after a resumed two-rank
            # run). Not NCCL's: its destroy waits on peers, so a failed rank could hang there.
            atexit.register(_leave_gloo)


def _leave_gloo() -> None:
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 — at exit a failure to leave changes nothing; never a traceback
        pass


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def average_(tensors: list[torch.Tensor], world: World) -> None:
    """In place: each tensor becomes its mean over ranks (one flattened all-reduce)."""
    if world.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def broadcast_(tensors: list[torch.Tensor], world: World) -> None:
    """In place: rank 0's values everywhere (insurance that every rank starts from the same weights)."""
    if world.size > 1:
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t, src=0)


def any_(mask: torch.Tensor, world: World) -> torch.Tensor:
    """Elementwise OR of a bool tensor over ranks."""
    if world.size == 1:
        return mask
    m = mask.to(torch.int32)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m.bool()


def gather(part: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `part` (all the same shape) concatenated along dim 0, in rank order."""
    if world.size == 1:
        return part
    parts = [torch.empty_like(part) for _ in range(world.size)]
    dist.all_gather(parts, part.contiguous())
    return torch.cat(parts)


def gather_streams(part: torch.Tensor, world: World, n_streams: int) -> torch.Tensor:
    """The global batch, in stream order, from each rank's part (its streams r, r+N, ...)."""
    if world.size == 1:
        return part
    parts = [torch.empty_like(part) for _ in range(world.size)]
    dist.all_gather(parts, part.contiguous())
    per = part.shape[0] // (n_streams // world.size)
    return torch.cat(
        [parts[s % world.size][(s // world.size) * per : (s // world.size + 1) * per] for s in range(n_streams)]
    )


def stream_ranges(n_chunks: int, chunk_rows: int, n_rows: int, n_streams: int) -> list[tuple[int, int]]:
    """S contiguous, chunk-aligned row ranges covering the store (as equal as chunks allow)."""
    bounds = [round(i * n_chunks / n_streams) for i in range(n_streams + 1)]
    return [(bounds[i] * chunk_rows, min(bounds[i + 1] * chunk_rows, n_rows)) for i in range(n_streams)]

"""Data parallelism over ``torch.distributed`` (launched by ``torchrun``), world-size independent.

The rule that makes N ranks equal one process: every rank sees the *global* batch (same data
order, same augmentation, same random draws, because every generator is advanced for the
whole batch on every rank) and trains on its contiguous slice of it. Gradients are averaged
by ``DistributedDataParallel``; the batch statistics that are sums over the batch (RAT's
per-class head-gradient sums, AWP's weight gradient) are all-reduced here. The random state
is therefore the same on every rank and for every world size, which is also why a checkpoint
written by 2 ranks resumes on 1 and the reverse.

Without a process group every function here is the single-process identity, so library code
calls them unconditionally.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Rank:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def current() -> Rank:
    if not active():
        return Rank()
    return Rank(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_environment(device_type: str) -> Rank:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not active():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return current()


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """Under torchrun each rank uses its own GPU, cuda:LOCAL_RANK; CPU ranks share the CPU."""
    if device.type == "cuda" and rank.distributed:
        device = torch.device("cuda", rank.local_rank)
        torch.cuda.set_device(device)
    return device


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (attacks and checkpoints use it)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks (a new tensor; the identity without a process group)."""
    if not active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def average(t: Tensor) -> Tensor:
    """Mean over ranks of equally sized shards' means = the mean over the global batch."""
    if not active():
        return t
    return all_reduce_sum(t) / dist.get_world_size()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if it is true on any: ranks stop together (non-finite loss, Ctrl-C)."""
    if not active():
        return flag
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0], device=device)).item() > 0)


def max_over_ranks(value: int, device: torch.device | str = "cpu") -> int:
    """The largest of the ranks' values, on every rank: the strongest stop request wins."""
    if not active():
        return value
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def shard(batch_size: int, rank: Rank | None = None) -> slice:
    """This rank's contiguous part of a global batch; the batch must divide evenly.

    Example::

        x_local, y_local = x[shard(len(x))], y[shard(len(y))]   # under torchrun: 1/world_size each
    """
    rank = rank or current()
    if batch_size % rank.world_size:
        raise ValueError(f"the global batch size {batch_size} does not divide among {rank.world_size} ranks")
    n = batch_size // rank.world_size
    return slice(rank.rank * n, (rank.rank + 1) * n)


def exit_cleanly(code: int) -> None:
    """End a torchrun worker: all ranks meet, then the process exits without interpreter teardown.

    Gloo's worker threads can still hold work objects with tensors when Python finalises, and
    destroying them then aborts the process (SIGABRT, "terminate called without an active
    exception"; seen here in about one run in five, with or without destroy_process_group;
    discussed in pytorch/pytorch PR 179291). Training and its files are complete by then, so
    the worker flushes its output and leaves with ``os._exit``. Without a process group this is
    ``sys.exit(code)``.
    """
    if not active():
        sys.exit(code)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

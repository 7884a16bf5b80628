"""Data-parallel helpers for `torchrun`: process-group set-up from the environment, rank-0-only
I/O, gradient averaging and deterministic data sharding.

Gradients are averaged with one all-reduce over a flat buffer after every backward
(`average_gradients`), which is what DistributedDataParallel does, done by hand: the GAN
steps alternate between sub-networks (image vs patch heads, regularisation passes with
double backward), which DDP's reducer handles poorly, and the trainable set changes per task.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: Optional[str], local_rank: int = 0) -> torch.device:
    """"auto": the local CUDA device when there is one, else the CPU."""
    if requested in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for but CUDA is not available")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1 in the environment):
    nccl on CUDA, gloo on the CPU. A plain launch gives a single-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                timeout=datetime.timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def average_gradients(params: Iterable[Tensor], info: DistInfo) -> None:
    """Average .grad over ranks with one all-reduce. Tensors without a grad are skipped: the step
    structure (which sub-network runs) is the same on every rank, so all ranks reduce the same set."""
    if not info.enabled:
        return
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_mean(x: Tensor, info: DistInfo) -> Tensor:
    """Mean of a tensor over ranks (a copy)."""
    if not info.enabled:
        return x.clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / info.world_size


@torch.no_grad()
def broadcast_tensors(tensors: Iterable[Tensor], info: DistInfo, src: int = 0) -> None:
    """Make every rank's tensors equal to rank `src`'s (start of training)."""
    if not info.enabled:
        return
    for t in tensors:
        dist.broadcast(t.data, src)


def gather_objects(obj: Any, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_indices(indices: Tensor, info: DistInfo) -> Tensor:
    """This rank's share of a global index order: positions rank, rank + world, ..."""
    return indices[info.rank::info.world_size]

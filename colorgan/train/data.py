"""Deterministic, resumable batches from an image folder: an endless stream of per-epoch
permutations (epoch e's order is drawn from a generator seeded by (seed, e)), sharded by rank."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from colorgan.data.folder import ImageFolder
from colorgan.train.distributed import DistInfo

CACHE_LIMIT_BYTES = 1 << 30


class BatchStream:
    """`next_batch()` → [batch, 3, S, S] in [-1, 1]; the global stream of batch·world indices per
    step is the same on every rank and each rank takes positions rank, rank+world, ...
    State: (epoch, position) — `state_dict` / `load_state_dict`."""

    def __init__(self, dataset: ImageFolder, batch: int, seed: int, info: Optional[DistInfo] = None,
                 cache: Optional[bool] = None) -> None:
        if batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        self.dataset, self.batch, self.seed = dataset, batch, int(seed)
        self.info = info or DistInfo()
        self.epoch, self.pos = 0, 0
        self._perm: Optional[Tensor] = None
        size = dataset.size or 256
        self.cache = (len(dataset) * size * size * 3 <= CACHE_LIMIT_BYTES) if cache is None else cache
        self._cached: dict[int, Tensor] = {}

    def _order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=g)

    def _next_index(self) -> int:
        if self._perm is None:
            self._perm = self._order(self.epoch)
        if self.pos >= len(self._perm):
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._order(self.epoch)
        i = int(self._perm[self.pos])
        self.pos += 1
        return i

    def _load(self, i: int) -> Tensor:
        if not self.cache:
            return self.dataset[i]
        if i not in self._cached:
            self._cached[i] = (self.dataset[i].add(1).mul(127.5).round().to(torch.uint8))
        return self._cached[i].float().div(127.5).sub(1.0)

    def next_indices(self) -> list[int]:
        glob = [self._next_index() for _ in range(self.batch * self.info.world_size)]
        return glob[self.info.rank::self.info.world_size]

    def next_batch(self, device: torch.device = torch.device("cpu")) -> Tensor:
        return torch.stack([self._load(i) for i in self.next_indices()]).to(device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != len(self.dataset):
            raise ValueError(f"the data folder now holds {len(self.dataset)} images but the run was trained on "
                             f"{state['n']}; resume needs the same data")
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._perm = None

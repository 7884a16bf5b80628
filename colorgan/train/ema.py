"""Exponential moving averages of trained tensors."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn


@torch.no_grad()
def ema_update(target: Sequence[Tensor], source: Sequence[Tensor], decay: float) -> None:
    """target ← decay·target + (1−decay)·source, pairwise (float tensors); equal lists required."""
    target, source = list(target), list(source)
    if len(target) != len(source):
        raise ValueError(f"EMA: {len(target)} target tensors but {len(source)} source tensors")
    floats = [(t, s) for t, s in zip(target, source) if t.is_floating_point()]
    if floats:
        tt = [t for t, _ in floats]
        torch._foreach_lerp_(tt, [s.detach() for _, s in floats], 1.0 - decay)
    for t, s in zip(target, source):
        if not t.is_floating_point():
            t.copy_(s)


@torch.no_grad()
def copy_tensors(target: Iterable[Tensor], source: Iterable[Tensor]) -> None:
    for t, s in zip(target, source, strict=True):
        t.copy_(s.detach())


def module_tensors(model: nn.Module) -> list[Tensor]:
    """The parameters of a model (what rosinality's `accumulate` averages; buffers are constants)."""
    return list(model.parameters())


def warmup_decay(step: int, decay: float) -> float:
    """The EMA decay after `step` updates with warm-up: min(decay, (1 + step) / (10 + step)), so a short run's
    average is not held back by its starting point (a fixed 0.995 gives it 29 % of the weight after 250 steps)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_decay_for(batch: int, ema_kimg: float) -> float:
    """Decay giving a half-life of `ema_kimg` thousand images (rosinality: 0.5**(32/10000))."""
    return 0.5 ** (batch / max(ema_kimg * 1000.0, 1e-8))

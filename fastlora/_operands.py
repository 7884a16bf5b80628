"""Adapters as the fused kernels' operands: the kind code and factor tensors of a conv adapter for the weight
prologue, and the general linear form Ŵ = W ⊙ (uo·uiᵀ) + α·ao·aiᵀ (with the adapted biases) for the fused linear.
Used by the fused forward and by its backward alike."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastlora.adapters import LeFT, LLoRA, LoRA
from kernels.common import KIND_LEFT, KIND_LLORA, KIND_LORA
from kernels.prologue import Operands


def conv_operands(adapter):
    """One conv adapter (or None: the base weight) as the weight prologue's operands (`kernels.prologue.Operands`):
    the kind code, fp32 factor tensors in the kernel's order, rank, activation flags and alpha."""
    def f32(*ts: Tensor) -> tuple:
        return tuple(t.detach().float().contiguous() for t in ts)

    if adapter is None:
        return Operands()
    if isinstance(adapter, LoRA):
        return Operands(KIND_LORA, f32(adapter.A, adapter.B), adapter.rank, alpha=float(adapter.alpha))
    if isinstance(adapter, LLoRA):
        return Operands(KIND_LLORA, f32(adapter.A, adapter.B, adapter.B_inst), adapter.rank,
                        adapter.act in ("both", "inner"), adapter.act == "both", float(adapter.alpha))
    if isinstance(adapter, LeFT) and adapter.is_conv:
        a = adapter
        return Operands(KIND_LEFT, f32(a.U, a.T, a.P, a.Q, a.V, a.R, a.S), a.rank, a.act == "inner", False, 0.0)
    raise ValueError(f"backend='triton': a {type(adapter).__name__} adapter does not apply to a conv weight")


def _pad_stack(mats: Sequence[Optional[Tensor]], rows: int, device, fill_first: float = 0.0) -> Tensor:
    """[T, rows, R] fp32, zero-padded to the largest rank; a None entry becomes a rank-1 column of fill_first."""
    r = max([m.shape[1] for m in mats if m is not None] + [1])
    out = torch.zeros((len(mats), rows, r), device=device, dtype=torch.float32)
    for i, m in enumerate(mats):
        if m is None:
            out[i, :, 0] = fill_first
        else:
            out[i, :, : m.shape[1]] = m
    return out


def linear_operands(adapters: Sequence, d_out: int, d_in: int, device):
    """The linear adapters as the fused linear's operands in the general form Ŵ = W ⊙ (uo·uiᵀ) + α·ao·aiᵀ:
    (ui, uo, ai, ao, alpha), None for absent terms; stacked [T, ...] (ranks zero-padded) for several tasks."""
    if len(adapters) == 1:
        a = adapters[0]
        if a is None:
            return None, None, None, None, 1.0
        if isinstance(a, LoRA):
            return None, None, a.A.contiguous(), a.B.contiguous(), float(a.alpha)
        return a.U_in.contiguous(), a.U_out.contiguous(), a.A_in.contiguous(), a.A_out.contiguous(), 1.0
    mul = any(isinstance(a, LeFT) for a in adapters)
    low = any(a is not None for a in adapters)
    ui = uo = ai = ao = None
    if mul:
        ui = _pad_stack([a.U_in if isinstance(a, LeFT) else None for a in adapters], d_in, device, 1.0)
        uo = _pad_stack([a.U_out if isinstance(a, LeFT) else None for a in adapters], d_out, device, 1.0)
    if low:
        ai = _pad_stack([None if a is None else (a.A if isinstance(a, LoRA) else a.A_in) for a in adapters],
                        d_in, device)
        ao = _pad_stack([None if a is None else (a.alpha * a.B if isinstance(a, LoRA) else a.A_out)
                         for a in adapters], d_out, device)
    return ui, uo, ai, ao, 1.0


def linear_biases(bias: Optional[Tensor], adapters: Sequence, d_out: int) -> Optional[Tensor]:
    """Adapted bias, [T, d_out] (the reference's semantics: None entries keep the base bias)."""
    bs = [bias if a is None else a.adapted_bias(bias) for a in adapters]
    if all(b is None for b in bs):
        return None
    ref = next(b for b in bs if b is not None)
    return torch.stack([b if b is not None else torch.zeros_like(ref) for b in bs]).contiguous()

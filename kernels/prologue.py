"""Prologue: build the adapted conv kernel scale·Ŵ for one task and, in the same pass,
the per-(C_in, C_out) sums of squares over taps that demodulation needs.

Output layout (what the implicit-GEMM conv reads): w_out[tap·C_in + c, o] (K-major, C_out
contiguous) and sq_out[c, o] = Σ_taps (scale·Ŵ[o, c, tap])², both for one task slice.
Adapter kinds (constexpr KIND): 0 none, 1 LoRA (A spans C_in·k·k), 2 LLoRA, 3 LeFT conv.
Everything is computed in fp32; w_out is stored in its own dtype (the conv's operand dtype).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common, tiles

KIND_NONE, KIND_LORA, KIND_LLORA, KIND_LEFT = 0, 1, 2, 3


@triton.jit
def _prologue_kernel(
    w_ptr, w_out_ptr, sq_out_ptr,
    f0, f1, f2, f3, f4, f5, f6,  # adapter factors, meaning depends on KIND (unused ones: any pointer)
    C_OUT, C_IN, R, scale, alpha,
    KK: tl.constexpr, KIND: tl.constexpr, ACT_IN: tl.constexpr, ACT_OUT: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, R_PAD: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, R_PAD)
    mo = offs_o < C_OUT
    mc = offs_c < C_IN
    mr = offs_r < R
    m2 = mo[:, None] & mc[None, :]
    # base weight [C_out, C_in, k, k] contiguous
    w_base = w_ptr + (offs_o[:, None] * C_IN + offs_c[None, :]) * KK
    if KIND == 2:  # LLoRA: f0 = A [C_in, r], f1 = B [C_out, r], f2 = B_inst [r, r, kk]
        b_tile = tl.load(f1 + offs_o[:, None] * R + offs_r[None, :], mask=mo[:, None] & mr[None, :],
                         other=0.0).to(tl.float32)
    if KIND == 3:  # LeFT: f0 U [C_out,r], f1 T [r,r,kk], f2 P [C_out,r], f3 Q [kk,r], f4 V [C_in,r], f5 R, f6 S [kk,r]
        u_tile = tl.load(f0 + offs_o[:, None] * R + offs_r[None, :], mask=mo[:, None] & mr[None, :],
                         other=0.0).to(tl.float32)
        p_tile = tl.load(f2 + offs_o[:, None] * R + offs_r[None, :], mask=mo[:, None] & mr[None, :],
                         other=0.0).to(tl.float32)
        r_tile = tl.load(f5 + offs_c[:, None] * R + offs_r[None, :], mask=mc[:, None] & mr[None, :],
                         other=0.0).to(tl.float32)
    sq = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for t in tl.static_range(KK):
        w = tl.load(w_base + t, mask=m2, other=0.0).to(tl.float32)
        if KIND == 1:
            delta = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
            for m in range(R):
                bm = tl.load(f1 + offs_o * R + m, mask=mo, other=0.0).to(tl.float32)
                am = tl.load(f0 + (offs_c * KK + t) * R + m, mask=mc, other=0.0).to(tl.float32)
                delta += bm[:, None] * am[None, :]
            w = w + alpha * delta
        if KIND == 2:
            p = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
            for j in range(R):
                bi = tl.load(f2 + (j * R + offs_r) * KK + t, mask=mr, other=0.0).to(tl.float32)
                nj = tl.sum(b_tile * bi[None, :], axis=1)  # M[j, o, t]
                if ACT_IN:
                    nj = tl.maximum(nj, 0.0)
                aj = tl.load(f0 + offs_c * R + j, mask=mc, other=0.0).to(tl.float32)
                p += nj[:, None] * aj[None, :]
            if ACT_OUT:
                p = tl.maximum(p, 0.0)
            w = w + alpha * p
        if KIND == 3:
            qt = tl.load(f3 + t * R + offs_r, mask=mr, other=0.0).to(tl.float32)
            pq = tl.sum(p_tile * qt[None, :], axis=1)  # Σ_m P[o,m]·Q[t,m]
            st = tl.load(f6 + t * R + offs_r, mask=mr, other=0.0).to(tl.float32)
            add = tl.sum(r_tile * st[None, :], axis=1)  # Σ_j R[c,j]·S[t,j]
            g = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
            for j in range(R):
                tj = tl.load(f1 + (j * R + offs_r) * KK + t, mask=mr, other=0.0).to(tl.float32)
                mul = tl.sum(u_tile * tj[None, :], axis=1) + pq
                if ACT_IN:
                    mul = tl.maximum(mul, 0.0)
                vj = tl.load(f4 + offs_c * R + j, mask=mc, other=0.0).to(tl.float32)
                g += mul[:, None] * vj[None, :]
            w = w * g + add[None, :]
        w = w * scale
        sq += w * w
        tl.store(w_out_ptr + (t * C_IN + offs_c[None, :]) * C_OUT + offs_o[:, None],
                 w.to(w_out_ptr.dtype.element_ty), mask=m2)
    tl.store(sq_out_ptr + offs_c[None, :] * C_OUT + offs_o[:, None], sq, mask=m2)


def adapter_args(adapter, weight: torch.Tensor) -> tuple[int, list, int, bool, bool, float]:
    """(KIND, factor tensors (contiguous), rank, act_in, act_out, alpha) for a conv adapter."""
    from fastlora.adapters import LeFT, LLoRA, LoRA

    if adapter is None:
        return KIND_NONE, [], 1, False, False, 0.0
    if isinstance(adapter, LoRA):
        return KIND_LORA, [adapter.A.contiguous(), adapter.B.contiguous()], adapter.rank, False, False, float(adapter.alpha)
    if isinstance(adapter, LLoRA):
        f = [adapter.A.contiguous(), adapter.B.contiguous(), adapter.B_inst.contiguous()]
        return (KIND_LLORA, f, adapter.rank, adapter.act in ("both", "inner"), adapter.act == "both",
                float(adapter.alpha))
    if isinstance(adapter, LeFT) and adapter.is_conv:
        f = [t.contiguous() for t in (adapter.U, adapter.T, adapter.P, adapter.Q, adapter.V, adapter.R, adapter.S)]
        return KIND_LEFT, f, adapter.rank, adapter.act == "inner", False, 0.0
    raise ValueError(f"backend='triton': a {type(adapter).__name__} adapter does not apply to a conv weight")


def build_weight(weight: torch.Tensor, adapter, scale: float, w_out: torch.Tensor, sq_out: torch.Tensor,
                 config: Optional[tiles.Config] = None) -> None:
    """Write scale·Ŵ (K-major [k·k·C_in, C_out]) into w_out and Σ_taps (scale·Ŵ)² ([C_in, C_out], fp32)
    into sq_out, for one adapter (or None: the base weight)."""
    c_out, c_in, k, _ = weight.shape
    kind, factors, r, act_in, act_out, alpha = adapter_args(adapter, weight)
    weight = weight.contiguous()
    ptrs = factors + [weight] * (7 - len(factors))
    key = (c_out, c_in, k)
    cfg = config or tiles.choose(
        "prologue", key, tiles.PROLOGUE_CONFIGS,
        lambda c: triton.cdiv(c_out, c.block_m) * triton.cdiv(c_in, c.block_n), c_out, c_in, weight.device)
    grid = (triton.cdiv(c_out, cfg.block_m), triton.cdiv(c_in, cfg.block_n))
    common.launch(_prologue_kernel, grid, (
        weight, w_out, sq_out, *ptrs, c_out, c_in, r, float(scale), alpha), dict(
        KK=k * k, KIND=kind, ACT_IN=act_in, ACT_OUT=act_out,
        BLOCK_O=cfg.block_m, BLOCK_C=cfg.block_n, R_PAD=max(2, triton.next_power_of_2(r))),
        num_warps=cfg.num_warps, num_stages=1, tag="prologue", config=cfg.name)

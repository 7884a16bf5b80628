"""Prologue of the modulated conv: the adapted kernel scale·Ŵ per task with, in the same pass, the
per-(C_in, C_out) sums of squares over taps that demodulation needs; and the demodulation factors
d[b, o] = rsqrt(Σ_c s[b, c]²·Q[c, o] + eps), computed once per call for every sample.

Output layout (what the implicit-GEMM conv reads): w_out[tap·C_in + c, o] (K-major, C_out contiguous, rows
zero-padded to LDW = C_out rounded up to 16 so weight loads stay 16-byte vectors) and sq_out[c, o] =
Σ_taps (scale·Ŵ[o, c, tap])², per task. Adapter kinds (integer codes, `common.KIND_*`): none, LoRA (A spans
C_in·k·k), LLoRA, LeFT conv; the factor tensors are fp32 and their meaning depends on the kind (see
`Operands`). Everything is computed in fp32; w_out is stored in the conv's operand dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from kernels import common, tiles
from kernels.common import KIND_LEFT, KIND_LLORA, KIND_LORA, KIND_NONE  # noqa: F401  (re-exported)


@triton.jit
def _prologue_kernel(
    w_ptr, w_out_ptr, sq_out_ptr,
    f0, f1, f2, f3, f4, f5, f6,  # adapter factors (fp32), meaning depends on KIND (unused ones: any pointer)
    C_OUT, C_IN, LDW, R, scale, alpha,
    KK: tl.constexpr, KIND: tl.constexpr, ACT_IN: tl.constexpr, ACT_OUT: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """One tile: BLOCK_O output channels × BLOCK_C input channels with all their taps, read from the base
    weight [C_out, C_in·KK] as one contiguous run j = c_local·KK + tap (16-byte loads)."""
    pid_o = tl.program_id(0)
    c0 = tl.program_id(1) * BLOCK_C
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    j = tl.arange(0, BLOCK_J)
    cl = j // KK
    t = j - cl * KK
    c = c0 + cl
    mo = offs_o < C_OUT
    mj = (j < BLOCK_C * KK) & (c0 * KK + j < C_IN * KK)  # c < C_IN, written on the flat index (vectorisable)
    m2 = mo[:, None] & mj[None, :]
    w = tl.load(w_ptr + offs_o[:, None] * (C_IN * KK) + (c0 * KK + j)[None, :], mask=m2, other=0.0).to(tl.float32)
    if KIND == 1:  # LoRA: f0 = A [C_in·kk, r], f1 = B [C_out, r]; ΔW[o, c·kk + t] = Σ_m B[o, m]·A[c·kk + t, m]
        delta = tl.zeros((BLOCK_O, BLOCK_J), dtype=tl.float32)
        for m in range(R):
            bm = tl.load(f1 + offs_o * R + m, mask=mo, other=0.0)
            am = tl.load(f0 + (c0 * KK + j) * R + m, mask=mj, other=0.0)
            delta += bm[:, None] * am[None, :]
        w = w + alpha * delta
    if KIND == 2:  # LLoRA: f0 = A [C_in, r], f1 = B [C_out, r], f2 = B_inst [r, r, kk]
        p = tl.zeros((BLOCK_O, BLOCK_J), dtype=tl.float32)
        for jj in range(R):
            mt = tl.zeros((BLOCK_O, BLOCK_J), dtype=tl.float32)  # M[jj, o, t] = Σ_m B[o, m]·B_inst[jj, m, t]
            for m in range(R):
                bm = tl.load(f1 + offs_o * R + m, mask=mo, other=0.0)
                bi = tl.load(f2 + (jj * R + m) * KK + t, mask=mj, other=0.0)
                mt += bm[:, None] * bi[None, :]
            if ACT_IN:
                mt = tl.maximum(mt, 0.0)
            aj = tl.load(f0 + c * R + jj, mask=mj, other=0.0)
            p += mt * aj[None, :]
        if ACT_OUT:
            p = tl.maximum(p, 0.0)
        w = w + alpha * p
    if KIND == 3:  # LeFT: f0 U [C_out,r], f1 T [r,r,kk], f2 P [C_out,r], f3 Q [kk,r], f4 V [C_in,r], f5 R, f6 S [kk,r]
        pq = tl.zeros((BLOCK_O, BLOCK_J), dtype=tl.float32)  # Σ_m P[o,m]·Q[t,m]
        add = tl.zeros((BLOCK_J,), dtype=tl.float32)  # Σ_m R[c,m]·S[t,m]
        for m in range(R):
            pm = tl.load(f2 + offs_o * R + m, mask=mo, other=0.0)
            qm = tl.load(f3 + t * R + m, mask=mj, other=0.0)
            pq += pm[:, None] * qm[None, :]
            add += tl.load(f5 + c * R + m, mask=mj, other=0.0) * tl.load(f6 + t * R + m, mask=mj, other=0.0)
        g = tl.zeros((BLOCK_O, BLOCK_J), dtype=tl.float32)
        for jj in range(R):
            mul = pq
            for m in range(R):
                um = tl.load(f0 + offs_o * R + m, mask=mo, other=0.0)
                tm = tl.load(f1 + (jj * R + m) * KK + t, mask=mj, other=0.0)
                mul += um[:, None] * tm[None, :]
            if ACT_IN:
                mul = tl.maximum(mul, 0.0)
            g += mul * tl.load(f4 + c * R + jj, mask=mj, other=0.0)[None, :]
        w = w * g + add[None, :]
    w = tl.where(m2, w * scale, 0.0)
    tl.store(w_out_ptr + (t * C_IN + c)[None, :] * LDW + offs_o[:, None], w.to(w_out_ptr.dtype.element_ty),
             mask=m2)
    # sq[c, o] = Σ_t w[o, (c, t)]²: the tap groups summed by a one-hot product (exact in fp32)
    cc = tl.arange(0, BLOCK_C)
    sel = tl.where((cl[:, None] == cc[None, :]) & mj[:, None], 1.0, 0.0)
    sq = tl.dot(w * w, sel, input_precision="ieee")
    tl.store(sq_out_ptr + (c0 + cc)[None, :] * C_OUT + offs_o[:, None], sq,
             mask=mo[:, None] & ((c0 + cc) < C_IN)[None, :])


@dataclass(frozen=True)
class Operands:
    """One task's conv adapter as kernel operands: the kind code, its factor tensors (fp32, contiguous) in
    the kernel's order, the rank, the LLoRA/LeFT activation flags and alpha.
    LoRA: (A [C_in·k·k, r], B [C_out, r]); LLoRA: (A [C_in, r], B [C_out, r], B_inst [r, r, k·k]);
    LeFT conv: (U, T, P, Q, V, R, S)."""

    kind: int = KIND_NONE
    factors: Tuple[torch.Tensor, ...] = ()
    rank: int = 1
    act_in: bool = False
    act_out: bool = False
    alpha: float = 0.0


def padded_width(c_out: int) -> int:
    """The row stride LDW of the K-major weight: C_out rounded up to a multiple of 16."""
    return -(-c_out // 16) * 16


def build_weight(weight: torch.Tensor, ops: Operands, scale: float, w_out: torch.Tensor, sq_out: torch.Tensor,
                 config: Optional[tiles.Config] = None) -> None:
    """Write scale·Ŵ (K-major [k·k·C_in, LDW], only the first C_out columns) into w_out and
    Σ_taps (scale·Ŵ)² ([C_in, C_out], fp32) into sq_out, for one task."""
    c_out, c_in, k, _ = weight.shape
    weight = weight.contiguous()
    ptrs = list(ops.factors) + [weight] * (7 - len(ops.factors))
    key = (c_out, c_in, k)
    cfg = config or tiles.choose(
        "prologue", key, tiles.PROLOGUE_CONFIGS,
        lambda c: triton.cdiv(c_out, c.block_m) * triton.cdiv(c_in, c.block_n), c_out, c_in, weight.device)
    grid = (triton.cdiv(c_out, cfg.block_m), triton.cdiv(c_in, cfg.block_n))
    common.launch(_prologue_kernel, grid, (
        weight, w_out, sq_out, *ptrs, c_out, c_in, w_out.shape[-1], ops.rank, float(scale), float(ops.alpha)), dict(
        KK=k * k, KIND=ops.kind, ACT_IN=ops.act_in, ACT_OUT=ops.act_out,
        BLOCK_O=cfg.block_m, BLOCK_C=cfg.block_n, BLOCK_J=max(16, triton.next_power_of_2(cfg.block_n * k * k))),
        num_warps=cfg.num_warps, num_stages=1, tag="prologue", config=cfg.name)


def build_weights(weight: torch.Tensor, operands: Sequence[Operands], scale: float,
                  dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w_k [T, k·k·C_in, LDW] in `dtype`, padding columns zero; sq [T, C_in, C_out] fp32) for T tasks."""
    c_out, c_in, k, _ = weight.shape
    ldw = padded_width(c_out)
    w_k = tiles.empty((len(operands), k * k * c_in, ldw), device=weight.device, dtype=dtype)
    if ldw != c_out:
        w_k[..., c_out:].zero_()
    sq = tiles.empty((len(operands), c_in, c_out), device=weight.device, dtype=torch.float32)
    for i, ops in enumerate(operands):
        build_weight(weight, ops, scale, w_k[i], sq[i], config=tiles.forced("prologue"))
    return w_k, sq


@triton.jit
def _demod_kernel(s_ptr, sq_ptr, tid_ptr, d_ptr, C_IN, C_OUT,
                  TASKS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr):
    """d[b, o] = rsqrt(Σ_c s[b, c]²·Q_t[c, o] + eps), t = task of sample b."""
    b = tl.program_id(0).to(tl.int64)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    mo = offs_o < C_OUT
    if TASKS:
        t = tl.load(tid_ptr + b).to(tl.int64)
    else:
        t = 0
    acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for c0 in range(0, C_IN, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C_IN
        sv = tl.load(s_ptr + b * C_IN + offs_c, mask=mc, other=0.0).to(tl.float32)
        qv = tl.load(sq_ptr + t * C_IN * C_OUT + offs_c[:, None] * C_OUT + offs_o[None, :],
                     mask=mc[:, None] & mo[None, :], other=0.0)
        acc += tl.sum((sv * sv)[:, None] * qv, axis=0)
    tl.store(d_ptr + b * C_OUT + offs_o, tl.rsqrt(acc + common.C_EPS), mask=mo)


def demod(style: torch.Tensor, sq: torch.Tensor, task_ids: Optional[torch.Tensor]) -> torch.Tensor:
    """d [N, C_out] fp32 from the style [N, C_in] and the prologue's sq [T, C_in, C_out]."""
    style = style.float().contiguous()  # N·C_in values: read as fp32
    n, c_in = style.shape
    c_out = sq.shape[2]
    d = tiles.empty((n, c_out), device=style.device, dtype=torch.float32)
    bo = 128 if c_out >= 128 else max(16, triton.next_power_of_2(c_out))
    common.launch(_demod_kernel, (n, triton.cdiv(c_out, bo)),
                  (style, sq, task_ids if task_ids is not None else style, d, c_in, c_out),
                  dict(TASKS=task_ids is not None, BLOCK_C=32, BLOCK_O=bo), num_warps=4, num_stages=1, tag="demod")
    return d

"""Fused equalised-LR linear + low-rank adapter (mapping network, style affines).

y = scale·x·Ŵᵀ + bias_scale·b̂ [then leaky-ReLU·√2], with the adapter in the general form
Ŵ = W ⊙ (U_o·U_iᵀ) [LeFT only] + α·A_o·A_iᵀ (LoRA: A_o = B, A_i = A; LeFT: A_out, A_in).
The multiplicative factor is rebuilt per weight tile inside the K loop (a rank-r dot), the
additive term follows the LoRAFusion pattern: xa = x·A_i accumulated alongside the main GEMM,
then acc += α·xa·A_oᵀ before the epilogue; ranks are zero-padded to >= 16 for the dots.
With task_ids, grid axis 2 runs over tasks and each program keeps only the rows of its task
(programs without such rows do nothing): one launch renders several tasks.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common, tiles


@triton.jit
def _linear_kernel(
    x_ptr, w_ptr, ui_ptr, uo_ptr, ai_ptr, ao_ptr, b_ptr, tid_ptr, out_ptr,
    N, D_IN, D_OUT, R1, R2, st_ui, st_uo, st_ai, st_ao, st_b,
    scale, alpha, bias_scale,
    TASKS: tl.constexpr, MUL: tl.constexpr, LOW: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr,
    PREC: tl.constexpr, R1P: tl.constexpr, R2P: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < N
    mn = offs_n < D_OUT
    if TASKS:
        tids = tl.load(tid_ptr + offs_m, mask=mm, other=-1)
        mm = mm & (tids == t)
    if tl.sum(mm.to(tl.int32), axis=0) > 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        r1 = tl.arange(0, R1P)
        r2 = tl.arange(0, R2P)
        if MUL:
            uo = tl.load(uo_ptr + t * st_uo + offs_n[None, :] * R1 + r1[:, None],
                         mask=mn[None, :] & (r1[:, None] < R1), other=0.0).to(tl.float32)  # [R1P, BN]
        if LOW:
            xa = tl.zeros((BLOCK_M, R2P), dtype=tl.float32)
        for k0 in range(0, D_IN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mk = offs_k < D_IN
            a = tl.load(x_ptr + offs_m[:, None] * D_IN + offs_k[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
            w = tl.load(w_ptr + offs_n[None, :] * D_IN + offs_k[:, None], mask=mk[:, None] & mn[None, :],
                        other=0.0).to(tl.float32)  # [BK, BN] = Wᵀ tile
            if MUL:
                ui = tl.load(ui_ptr + t * st_ui + offs_k[:, None] * R1 + r1[None, :],
                             mask=mk[:, None] & (r1[None, :] < R1), other=0.0).to(tl.float32)
                w = w * common.mma(ui, uo, None, PREC)
            acc = common.mma(a, w.to(a.dtype), acc, PREC)
            if LOW:
                ai = tl.load(ai_ptr + t * st_ai + offs_k[:, None] * R2 + r2[None, :],
                             mask=mk[:, None] & (r2[None, :] < R2), other=0.0)
                xa = common.mma(a, ai.to(a.dtype), xa, PREC)
        if LOW:
            ao = tl.load(ao_ptr + t * st_ao + offs_n[None, :] * R2 + r2[:, None],
                         mask=mn[None, :] & (r2[:, None] < R2), other=0.0).to(tl.float32)  # [R2P, BN]
            acc += alpha * common.mma(xa, ao, None, PREC)
        acc = acc * scale
        if HAS_BIAS:
            acc += bias_scale * tl.load(b_ptr + t * st_b + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
        if LRELU:
            acc = common.lrelu(acc)
        tl.store(out_ptr + offs_m[:, None] * D_OUT + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=mm[:, None] & mn[None, :])


def linear(x: torch.Tensor, weight: torch.Tensor, b: Optional[torch.Tensor], ui: Optional[torch.Tensor],
           uo: Optional[torch.Tensor], ai: Optional[torch.Tensor], ao: Optional[torch.Tensor], alpha: float,
           task_ids: Optional[torch.Tensor], n_tasks: int, scale: float, bias_scale: float, lrelu: bool,
           config: Optional[tiles.Config] = None) -> torch.Tensor:
    """Launch the fused linear. Factors in the general form (None: the term is absent): ui [d_in, R1] and
    uo [d_out, R1] (the multiplicative factor), ai [d_in, R2] and ao [d_out, R2] (the additive term, times
    alpha), per task [T, ...] stacked when task_ids picks one of `n_tasks` per row; b the adapted bias [d_out]
    or [T, d_out]."""
    n, d_in = x.shape
    d_out = weight.shape[0]
    x = x.contiguous()
    weight = weight.contiguous()
    n_t = n_tasks if task_ids is not None else 1
    out = tiles.empty((n, d_out), device=x.device, dtype=x.dtype)
    r1 = ui.shape[-1] if ui is not None else 1
    r2 = ai.shape[-1] if ai is not None else 1
    st = lambda v: (v.shape[-2] * v.shape[-1]) if (v is not None and v.dim() == 3) else 0  # noqa: E731
    prec = common.dot_precision(x.dtype, x.device)

    def grid_of(cf):
        return (triton.cdiv(n, cf.block_m), triton.cdiv(d_out, cf.block_n), n_t)

    def launch(cf):
        common.launch(_linear_kernel, grid_of(cf), (
            x, weight, ui if ui is not None else x, uo if uo is not None else x,
            ai if ai is not None else x, ao if ao is not None else x, b if b is not None else x,
            task_ids if task_ids is not None else x, out,
            n, d_in, d_out, r1, r2, st(ui), st(uo), st(ai), st(ao), d_out if (b is not None and n_t > 1) else 0,
            float(scale), alpha, float(bias_scale)), dict(
            TASKS=task_ids is not None, MUL=ui is not None, LOW=ai is not None, HAS_BIAS=b is not None,
            LRELU=lrelu, PREC=prec,
            R1P=max(16, triton.next_power_of_2(r1)), R2P=max(16, triton.next_power_of_2(r2)),
            BLOCK_M=cf.block_m, BLOCK_N=cf.block_n, BLOCK_K=cf.block_k), tag="linear", config=cf.name,
            **cf.launch_kwargs())

    key = (n, d_in, d_out, n_t, str(x.dtype))
    cfg = config or tiles.choose("linear", key, tiles.LINEAR_CONFIGS,
                                 lambda cf: grid_of(cf)[0] * grid_of(cf)[1] * grid_of(cf)[2], n, d_out, x.device,
                                 bench=launch)
    launch(cfg)
    return out

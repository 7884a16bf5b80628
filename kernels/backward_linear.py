"""Fused backward of the linear + low-rank adapter (`kernels/linear.py`).

y = act(scale·x·Ŵ_tᵀ + bias_scale·b̂_t), Ŵ = W ⊙ (U_o·U_iᵀ) [LeFT] + α·A_o·A_iᵀ, t = task of the row.

`_linear_dx_kernel` (one launch): gz = gy·act′ (the leaky-ReLU mask is read from the saved output:
sign(y) = sign(z), derivative at 0 = slope like torch), then dx = scale·gz·Ŵ_t with the multiplicative
factor rebuilt per weight tile (rank-r dot) and the additive term factorised (gz·A_o accumulated beside the
main GEMM, then ·A_iᵀ): the mirror of the forward. Programs with pid_n == 0 also store gz (fp32) when
weight, bias or adapter gradients are needed.

The remaining reductions are rank-r or [d_out, d_in] GEMMs over the batch rows of each task
(dA_o = α·scale·gzᵀ(x·A_i), dA_i = α·scale·xᵀ(gz·A_o): factorised, no dŴ; dŴ = scale·gzᵀx only for the
base weight and LeFT's multiplicative factors). At the batch sizes of the mapping network and style affines
(N ≤ 32 rows) these are tiny and run as torch GEMMs in `fastlora._triton_backward.linear_backward`,
grouped per task by row masks.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common, tiles


@triton.jit
def _linear_dx_kernel(
    gy_ptr, y_ptr, w_ptr, ui_ptr, uo_ptr, ai_ptr, ao_ptr, tid_ptr, dx_ptr, gz_ptr,
    N, D_IN, D_OUT, R1, R2, st_ui, st_uo, st_ai, st_ao,
    scale, alpha,
    TASKS: tl.constexpr, MUL: tl.constexpr, LOW: tl.constexpr, LRELU: tl.constexpr, STORE_GZ: tl.constexpr,
    PREC: tl.constexpr, R1P: tl.constexpr, R2P: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[rows, i-block] = scale·Σ_o gz[rows, o]·Ŵ_t[o, i]; K loop over d_out."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    t = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # d_in
    mm = offs_m < N
    mn = offs_n < D_IN
    if TASKS:
        tids = tl.load(tid_ptr + offs_m, mask=mm, other=-1)
        mm = mm & (tids == t)
    if tl.sum(mm.to(tl.int32), axis=0) > 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        r1 = tl.arange(0, R1P)
        r2 = tl.arange(0, R2P)
        if MUL:
            ui = tl.load(ui_ptr + t * st_ui + offs_n[None, :] * R1 + r1[:, None],
                         mask=mn[None, :] & (r1[:, None] < R1), other=0.0).to(tl.float32)  # [R1P, BN]
        if LOW:
            ga = tl.zeros((BLOCK_M, R2P), dtype=tl.float32)
        for k0 in range(0, D_OUT, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mk = offs_k < D_OUT
            m2 = mm[:, None] & mk[None, :]
            g = tl.load(gy_ptr + offs_m[:, None] * D_OUT + offs_k[None, :], mask=m2, other=0.0).to(tl.float32)
            if LRELU:
                yv = tl.load(y_ptr + offs_m[:, None] * D_OUT + offs_k[None, :], mask=m2, other=0.0).to(tl.float32)
                g = common.lrelu_grad(g, yv)
            if STORE_GZ:
                if pid_n == 0:
                    tl.store(gz_ptr + offs_m[:, None] * D_OUT + offs_k[None, :], g, mask=m2)
            w = tl.load(w_ptr + offs_k[:, None] * D_IN + offs_n[None, :], mask=mk[:, None] & mn[None, :],
                        other=0.0).to(tl.float32)  # [BK(o), BN(i)]
            if MUL:
                uo = tl.load(uo_ptr + t * st_uo + offs_k[:, None] * R1 + r1[None, :],
                             mask=mk[:, None] & (r1[None, :] < R1), other=0.0).to(tl.float32)  # [BK, R1P]
                w = w * common.mma(uo, ui, None, PREC)
            acc = common.mma(g, w, acc, PREC)
            if LOW:
                ao = tl.load(ao_ptr + t * st_ao + offs_k[:, None] * R2 + r2[None, :],
                             mask=mk[:, None] & (r2[None, :] < R2), other=0.0).to(tl.float32)
                ga = common.mma(g, ao, ga, PREC)
        if LOW:
            ai = tl.load(ai_ptr + t * st_ai + offs_n[None, :] * R2 + r2[:, None],
                         mask=mn[None, :] & (r2[:, None] < R2), other=0.0).to(tl.float32)  # [R2P, BN]
            acc += alpha * common.mma(ga, ai, None, PREC)
        tl.store(dx_ptr + offs_m[:, None] * D_IN + offs_n[None, :], acc * scale, mask=mm[:, None] & mn[None, :])


def linear_dx(gy: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, ui: Optional[torch.Tensor],
              uo: Optional[torch.Tensor], ai: Optional[torch.Tensor], ao: Optional[torch.Tensor], alpha: float,
              task_ids: Optional[torch.Tensor], n_tasks: int, scale: float, lrelu: bool, need_dx: bool,
              store_gz: bool, config: Optional[tiles.Config] = None):
    """(dx fp32 [N, d_in] or None, gz fp32 [N, d_out] or None); factors as in `kernels.linear.linear`."""
    n, d_out = gy.shape
    d_in = weight.shape[1]
    gy = gy.contiguous()
    weight = weight.contiguous()
    n_t = n_tasks if task_ids is not None else 1
    dx = tiles.empty((n, d_in), device=gy.device, dtype=torch.float32)
    gz = tiles.empty((n, d_out), device=gy.device, dtype=torch.float32) if store_gz else None
    r1 = ui.shape[-1] if ui is not None else 1
    r2 = ai.shape[-1] if ai is not None else 1
    st = lambda v: (v.shape[-2] * v.shape[-1]) if (v is not None and v.dim() == 3) else 0  # noqa: E731
    prec = common.dot_precision(torch.float32, gy.device)
    cfg = config or tiles.choose("linear_bwd", (n, d_in, d_out, n_t), tiles.LINEAR_CONFIGS,
                                 lambda cf: triton.cdiv(n, cf.block_m) * triton.cdiv(d_in, cf.block_n) * n_t,
                                 n, d_in, gy.device)
    grid = (triton.cdiv(n, cfg.block_m), triton.cdiv(d_in, cfg.block_n), n_t)
    common.launch(_linear_dx_kernel, grid, (
        gy, y, weight, ui if ui is not None else gy, uo if uo is not None else gy,
        ai if ai is not None else gy, ao if ao is not None else gy, task_ids if task_ids is not None else gy,
        dx, gz if gz is not None else dx,
        n, d_in, d_out, r1, r2, st(ui), st(uo), st(ai), st(ao), float(scale), alpha), dict(
        TASKS=task_ids is not None, MUL=ui is not None, LOW=ai is not None, LRELU=lrelu, STORE_GZ=store_gz,
        PREC=prec, R1P=max(16, triton.next_power_of_2(r1)), R2P=max(16, triton.next_power_of_2(r2)),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k), tag="linear_dx", config=cfg.name,
        **cfg.launch_kwargs())
    return (dx if need_dx else None), gz

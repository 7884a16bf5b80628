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
(N ≤ 32 rows) these are tiny and run as torch GEMMs in `linear_backward`, grouped per task by row masks.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import triton
import triton.language as tl

from fastlora.adapters import LeFT, LoRA
from kernels import linear as klinear
from kernels import tiles


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
                g = tl.where(yv > 0, g, g * 0.2) * 1.4142135623730951
            if STORE_GZ:
                if pid_n == 0:
                    tl.store(gz_ptr + offs_m[:, None] * D_OUT + offs_k[None, :], g, mask=m2)
            w = tl.load(w_ptr + offs_k[:, None] * D_IN + offs_n[None, :], mask=mk[:, None] & mn[None, :],
                        other=0.0).to(tl.float32)  # [BK(o), BN(i)]
            if MUL:
                uo = tl.load(uo_ptr + t * st_uo + offs_k[:, None] * R1 + r1[None, :],
                             mask=mk[:, None] & (r1[None, :] < R1), other=0.0).to(tl.float32)  # [BK, R1P]
                w = w * tl.dot(uo, ui, input_precision=PREC)
            acc = tl.dot(g, w, acc, input_precision=PREC)
            if LOW:
                ao = tl.load(ao_ptr + t * st_ao + offs_k[:, None] * R2 + r2[None, :],
                             mask=mk[:, None] & (r2[None, :] < R2), other=0.0).to(tl.float32)
                ga = tl.dot(g, ao, ga, input_precision=PREC)
        if LOW:
            ai = tl.load(ai_ptr + t * st_ai + offs_n[None, :] * R2 + r2[:, None],
                         mask=mn[None, :] & (r2[:, None] < R2), other=0.0).to(tl.float32)  # [R2P, BN]
            acc += alpha * tl.dot(ga, ai, input_precision=PREC)
        tl.store(dx_ptr + offs_m[:, None] * D_IN + offs_n[None, :], acc * scale, mask=mm[:, None] & mn[None, :])


def linear_dx(gy: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, adapters: Sequence,
              task_ids: Optional[torch.Tensor], scale: float, lrelu: bool, need_dx: bool, store_gz: bool,
              config: Optional[tiles.Config] = None):
    """(dx fp32 [N, d_in] or None, gz fp32 [N, d_out] or None)."""
    n, d_out = gy.shape
    d_in = weight.shape[1]
    gy = gy.contiguous()
    weight = weight.contiguous()
    ui, uo, ai, ao, alpha = klinear._factors(adapters, d_out, d_in, gy.device)
    n_t = len(adapters) if task_ids is not None else 1
    dx = tiles.empty((n, d_in), device=gy.device, dtype=torch.float32)
    gz = tiles.empty((n, d_out), device=gy.device, dtype=torch.float32) if store_gz else None
    r1 = ui.shape[-1] if ui is not None else 1
    r2 = ai.shape[-1] if ai is not None else 1
    st = lambda v: (v.shape[-2] * v.shape[-1]) if (v is not None and v.dim() == 3) else 0  # noqa: E731
    prec = "ieee" if (gy.device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32) else "tf32"
    cfg = config or tiles.choose("linear_bwd", (n, d_in, d_out, n_t), tiles.LINEAR_CONFIGS,
                                 lambda cf: triton.cdiv(n, cf.block_m) * triton.cdiv(d_in, cf.block_n) * n_t,
                                 n, d_in, gy.device)
    grid = (triton.cdiv(n, cfg.block_m), triton.cdiv(d_in, cfg.block_n), n_t)
    _linear_dx_kernel[grid](
        gy, y, weight, ui if ui is not None else gy, uo if uo is not None else gy,
        ai if ai is not None else gy, ao if ao is not None else gy, task_ids if task_ids is not None else gy,
        dx, gz if gz is not None else dx,
        n, d_in, d_out, r1, r2, st(ui), st(uo), st(ai), st(ao), float(scale), alpha,
        TASKS=task_ids is not None, MUL=ui is not None, LOW=ai is not None, LRELU=lrelu, STORE_GZ=store_gz,
        PREC=prec, R1P=max(16, triton.next_power_of_2(r1)), R2P=max(16, triton.next_power_of_2(r2)),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **cfg.launch_kwargs(),
    )
    return (dx if need_dx else None), gz


def linear_backward(gy: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], adapters: Sequence, task_ids: Optional[torch.Tensor], scale: float,
                    bias_scale: float, activation: Optional[str], need: Dict[str, object],
                    deterministic: bool) -> Dict[str, object]:
    """First-order gradients of `kernels.linear.linear` (y: its saved output). Returns fp32 tensors: keys x,
    weight, bias, adapters (a list of {name: grad} or None per task). Everything is deterministic (no atomics)."""
    need_ad = [bool(v) for v in need.get("adapters", [False] * len(adapters))]
    store_gz = bool(need.get("weight") or need.get("bias") or any(need_ad))
    dx, gz = linear_dx(gy, y, weight, adapters, task_ids, scale, activation == "lrelu", bool(need.get("x")),
                       store_gz)
    out: Dict[str, object] = {"x": dx, "weight": None, "bias": None, "adapters": [None] * len(adapters)}
    if gz is None:
        return out
    xf = x.float()
    wf = weight.float()
    dw = torch.zeros_like(wf) if need.get("weight") else None
    db = torch.zeros(weight.shape[0], device=x.device, dtype=torch.float32) if bias is not None else None
    for t, a in enumerate(adapters):
        if task_ids is None:
            gz_t, x_t = gz, xf
        else:
            rows = (task_ids == t).to(torch.float32)[:, None]  # mask rows (no host sync)
            gz_t, x_t = gz * rows, xf
        dbh = gz_t.sum(0) * bias_scale  # gradient of the adapted bias b̂_t
        need_full = dw is not None or (isinstance(a, LeFT) and need_ad[t])
        dwh = scale * (gz_t.transpose(0, 1) @ x_t) if need_full else None  # dŴ_t [d_out, d_in]
        grads: Dict[str, torch.Tensor] = {}
        if a is None:
            if dw is not None:
                dw += dwh
            if db is not None:
                db += dbh
        elif isinstance(a, LoRA):
            if dw is not None:
                dw += dwh
            if db is not None:
                db += dbh
            if need_ad[t]:
                c = a.alpha * scale
                grads["B"] = c * (gz_t.transpose(0, 1) @ (x_t @ a.A.float()))
                grads["A"] = c * (x_t.transpose(0, 1) @ (gz_t @ a.B.float()))
                if a.bias is not None:
                    grads["bias"] = dbh
        else:  # LeFT linear
            uo, ui = a.U_out.float(), a.U_in.float()
            if dw is not None:
                dw += dwh * (uo @ ui.transpose(0, 1))
            if db is not None:
                db += dbh * a.b_mul.float() if a.b_mul is not None else dbh
            if need_ad[t]:
                dm = dwh * wf
                grads["U_out"] = dm @ ui
                grads["U_in"] = dm.transpose(0, 1) @ uo
                grads["A_out"] = scale * (gz_t.transpose(0, 1) @ (x_t @ a.A_in.float()))
                grads["A_in"] = scale * (x_t.transpose(0, 1) @ (gz_t @ a.A_out.float()))
                if bias is not None:
                    if a.b_mul is not None:
                        grads["b_mul"] = dbh * bias.float()
                    if a.b_add is not None:
                        grads["b_add"] = dbh
        out["adapters"][t] = grads
    out["weight"] = dw
    out["bias"] = db
    return out

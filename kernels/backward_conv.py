"""Fused backward of the modulated conv (frozen or trainable base, adapters trainable).

Forward (per sample b, task t = task_ids[b]): y0 = d ⊙ c, c = conv(x ⊙ s, Ŵ_t) (Ŵ_t = scale·(W ⊕ adapter)),
d = rsqrt(Σ_c s²·Q_t + 1e-8), Q_t[c, o] = Σ_taps Ŵ_t², then the epilogue (+noise, bias [+lrelu·√2], +skip).
The forward saved y0 ("pre", fp32) and, for down, the blurred input xb.

Kernels (none synchronises with the host):

1. `_epi_bwd_kernel`, one program per (sample, C_out) plane: the epilogue backward (lrelu′ from
   z = y0 + noise + bias; ReLU-style derivative at 0 like torch: slope), stores gd = gz·d (the conv-output
   gradient dc at the output resolution) and optionally gz (for the noise gradient), and reduces per plane
   Σ gz (bias gradient) and Σ gz·y0 (so dd = Σ gz·y0 / d, and e = dd·d³ = Σ gz·y0 · d²).
   For up, dc at the transposed-conv resolution is the blur's adjoint of gd (`fir.blur`, mirrored padding).
2. `_dgrad_kernel`: implicit GEMM of the conv's adjoint, M = input pixels of one sample, N = C_in,
   K = C_out per tap: plain → stride-1 conv with mirrored offsets; up (forward stride-2 transposed conv)
   → stride-2 conv; down (forward stride-2 conv) → four polyphase sub-convolutions (one per input parity).
   Epilogue: dx = s ⊙ dxs, and the style gradient ds[b, c] = Σ_pix x·dxs − s·Σ_o e[b,o]·Q_t[c,o]
   reduced in the same pass (per-program partials summed in a fixed order, or atomics).
3. `_wgrad_kernel`: the full kernel gradient per task, G_t[tap, c, o] = Σ_{b∈t, pix} dc·(x⊙s) patches
   − Ŵ_t·Σ_{b∈t} e[b,o]·s[b,c]² (the demodulation term), fp32, layout [T, k·k, C_in, C_out] (like Ŵ).
   Each program owns an output tile and loops over the samples of its task: no atomics.
4. `_factor_reduce_kernel` (LLoRA all acts, LeFT conv): reduces G_t to the factor gradients without writing
   anything else full-size: one program per (C_out block, tap) loops over C_in, rebuilds P = A·N on the fly for
   the outer-ReLU mask (ReLU′(0) := 1 as in the reference), and produces dN[tap, o, :] (complete) and dA / dV
   (per-program partials or atomics), plus for LeFT Σ_o G (the additive term's gradient).
   The remaining chain rule (through the inner ReLU to B, B_inst; LeFT's U, T, P, Q, R, S; LoRA's A, B as
   GEMMs of G with the rank-r factors) is O(r·C·k²·r) and runs as small torch ops in `adapter_grads`.
5. `_demod_factor_kernel`: the factor gradients of the demodulation term −Ŵ⊙M from the prologue's Ŵ without
   writing it full-size (the factorised weight-gradient path).

The adapter chain rule and the choice of the weight-gradient path (full G or factorised rank-r launches) live
in `fastlora._triton_backward`; this file only has kernels and their launchers.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import triton
import triton.language as tl

from kernels import common, tiles
from kernels.common import MODE_DOWN, MODE_UP


# ----------------------------------------------------------------------------- 1. epilogue backward

@triton.jit
def _epi_bwd_kernel(
    gy_ptr, pre_ptr, noise_ptr, bias_ptr, d_ptr, gd_ptr, gz_ptr, sums_ptr,
    C, HW, OW, sn_b, sn_c, sn_y, sn_x,
    HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, DEMOD: tl.constexpr,
    STORE_GZ: tl.constexpr, BLOCK: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    b = plane // C
    c = plane % C
    if DEMOD:
        dval = tl.load(d_ptr + plane)
    else:
        dval = 1.0
    if HAS_BIAS:
        bval = tl.load(bias_ptr + c).to(tl.float32)
    else:
        bval = 0.0
    s_gz = tl.zeros((BLOCK,), dtype=tl.float32)
    s_gy = tl.zeros((BLOCK,), dtype=tl.float32)
    base = plane * HW
    for p0 in range(0, HW, BLOCK):
        offs = p0 + tl.arange(0, BLOCK)
        m = offs < HW
        g = tl.load(gy_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        y0 = tl.load(pre_ptr + base + offs, mask=m, other=0.0)
        if LRELU:
            z = y0 + bval
            if HAS_NOISE:
                oy = offs // OW
                ox = offs % OW
                z += tl.load(noise_ptr + b * sn_b + c * sn_c + oy * sn_y + ox * sn_x, mask=m,
                             other=0.0).to(tl.float32)
            g = common.lrelu_grad(g, z)
        s_gz += g
        s_gy += g * y0
        tl.store(gd_ptr + base + offs, g * dval, mask=m)
        if STORE_GZ:
            tl.store(gz_ptr + base + offs, g, mask=m)
    tl.store(sums_ptr + plane * 2, tl.sum(s_gz, axis=0))
    tl.store(sums_ptr + plane * 2 + 1, tl.sum(s_gy, axis=0))


# ----------------------------------------------------------------------------- 2. dgrad (+ style gradient)

@triton.jit
def _dgrad_tap(acc, g_base, w_tap, sy, sx, mm, offs_n, mn, C_OUT, GH, GW,
               PREC: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[pix, c] += Σ_o dc[o, sy, sx] · Ŵ_tap[c, o] over all C_out blocks."""
    ma = mm & (sy >= 0) & (sy < GH) & (sx >= 0) & (sx < GW)
    pix = sy * GW + sx
    for o0 in range(0, C_OUT, BLOCK_K):
        offs_k = o0 + tl.arange(0, BLOCK_K)
        mk = offs_k < C_OUT
        a = tl.load(g_base + offs_k[None, :] * (GH * GW) + pix[:, None], mask=ma[:, None] & mk[None, :], other=0.0)
        wt = tl.load(w_tap + offs_n[None, :] * C_OUT + offs_k[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
        acc = tl.dot(a.to(wt.dtype), wt, acc, input_precision=PREC)
    return acc


@triton.jit
def _dgrad_kernel(
    g_ptr, w_ptr, x_ptr, s_ptr, sq_ptr, e_ptr, tid_ptr, dx_ptr, ds_ptr,
    C_IN, C_OUT, H, W, GH, GW, N_MB,
    K: tl.constexpr, MODE: tl.constexpr, PHASES: tl.constexpr, TASKS: tl.constexpr, DEMOD: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_DS: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    b = (pid_z // PHASES).to(tl.int64)
    phase = pid_z % PHASES
    py = phase // 2
    px = phase % 2
    if MODE == 1:  # polyphase over the (blurred) input's parities
        qh = (H - py + 1) // 2
        qw = (W - px + 1) // 2
    else:
        qh = H
        qw = W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < qh * qw
    mn = offs_n < C_IN
    q = offs_m // qw
    p = offs_m % qw
    if TASKS:
        t = tl.load(tid_ptr + b).to(tl.int64)
    else:
        t = 0
    KK: tl.constexpr = K * K
    g_base = g_ptr + b * C_OUT * GH * GW
    w_base = w_ptr + t * (KK * C_IN * C_OUT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ky in tl.static_range(K):
        for kx in tl.static_range(K):
            w_tap = w_base + (ky * K + kx) * C_IN * C_OUT
            if MODE == 0:
                acc = _dgrad_tap(acc, g_base, w_tap, q - (ky - K // 2), p - (kx - K // 2), mm, offs_n, mn,
                                 C_OUT, GH, GW, PREC, BLOCK_K)
            elif MODE == 2:  # adjoint of the stride-2 transposed conv: a stride-2 conv
                acc = _dgrad_tap(acc, g_base, w_tap, 2 * q + ky, 2 * p + kx, mm, offs_n, mn,
                                 C_OUT, GH, GW, PREC, BLOCK_K)
            else:  # adjoint of the stride-2 conv: input parity (py, px) only sees taps of that parity
                if (py == (ky % 2)) & (px == (kx % 2)):
                    acc = _dgrad_tap(acc, g_base, w_tap, q - (ky - py) // 2, p - (kx - px) // 2, mm, offs_n, mn,
                                     C_OUT, GH, GW, PREC, BLOCK_K)
    if MODE == 1:
        iy = 2 * q + py
        ix = 2 * p + px
    else:
        iy = q
        ix = p
    m2 = mm[:, None] & mn[None, :]
    s = tl.load(s_ptr + b * C_IN + offs_n, mask=mn, other=0.0).to(tl.float32)
    off = (b * C_IN + offs_n[None, :]) * (H * W) + (iy * W + ix)[:, None]
    if NEED_DX:
        tl.store(dx_ptr + off, acc * s[None, :], mask=m2)
    if NEED_DS:
        xv = tl.load(x_ptr + off, mask=m2, other=0.0).to(tl.float32)
        part = tl.sum(xv * acc, axis=0)
        if DEMOD:
            if (pid_m == 0) & (phase == 0):  # −s·Σ_o e[b, o]·Q_t[c, o], once per (sample, C_in block)
                dm = tl.zeros((BLOCK_N,), dtype=tl.float32)
                sq_base = sq_ptr + t * (C_IN * C_OUT)
                for o0 in range(0, C_OUT, BLOCK_K):
                    offs_k = o0 + tl.arange(0, BLOCK_K)
                    mk = offs_k < C_OUT
                    ev = tl.load(e_ptr + b * C_OUT + offs_k, mask=mk, other=0.0)
                    qv = tl.load(sq_base + offs_n[:, None] * C_OUT + offs_k[None, :],
                                 mask=mn[:, None] & mk[None, :], other=0.0)
                    dm += tl.sum(qv * ev[None, :], axis=1)
                part -= s * dm
        if ATOMIC:
            tl.atomic_add(ds_ptr + b * C_IN + offs_n, part, mask=mn)
        else:  # partial buffer [N, PHASES·N_MB, C_in], summed in a fixed order afterwards
            tl.store(ds_ptr + ((b * PHASES + phase) * N_MB + pid_m) * C_IN + offs_n, part, mask=mn)


# ----------------------------------------------------------------------------- 3. wgrad (full kernel gradient)

@triton.jit
def _wgrad_kernel(
    g_ptr, x_ptr, s_ptr, w_ptr, e_ptr, tid_ptr, out_ptr,
    NB, C_IN, C_OUT, H, W, GH, GW, PH, PW,
    K: tl.constexpr, MODE: tl.constexpr, TASKS: tl.constexpr, DEMOD: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[t, tap, c, o] = Σ_{b∈t} Σ_p (x⊙s)[b, c, src_x(p)]·dc[b, o, src_g(p)] − Ŵ·Σ_{b∈t} e[b,o]·s[b,c]²."""
    pid_c = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_z = tl.program_id(2)
    KK: tl.constexpr = K * K
    tap = pid_z % KK
    task = (pid_z // KK).to(tl.int64)
    ky = tap // K
    kx = tap % K
    offs_c = pid_c * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
    mc = offs_c < C_IN
    mo = offs_o < C_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dm = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_tile = tl.load(w_ptr + (task * KK + tap) * C_IN * C_OUT + offs_c[:, None] * C_OUT + offs_o[None, :],
                     mask=mc[:, None] & mo[None, :], other=0.0)
    for b in range(NB):
        if TASKS:
            own = tl.load(tid_ptr + b).to(tl.int64) == task
        else:
            own = True
        if own:
            bb = (pid_c * 0 + b).to(tl.int64)  # 64-bit sample offsets (b is a plain int in the interpreter)
            s = tl.load(s_ptr + bb * C_IN + offs_c, mask=mc, other=0.0).to(tl.float32)
            x_base = x_ptr + bb * C_IN * H * W
            g_base = g_ptr + bb * C_OUT * GH * GW
            for p0 in range(0, PH * PW, BLOCK_K):
                offs_p = p0 + tl.arange(0, BLOCK_K)
                mp = offs_p < PH * PW
                qy = offs_p // PW
                qx = offs_p % PW
                if MODE == 0:
                    xy = qy + (ky - K // 2)
                    xx = qx + (kx - K // 2)
                    gy = qy
                    gx = qx
                elif MODE == 1:
                    xy = 2 * qy + ky
                    xx = 2 * qx + kx
                    gy = qy
                    gx = qx
                else:
                    xy = qy
                    xx = qx
                    gy = 2 * qy + ky
                    gx = 2 * qx + kx
                mx = mp & (xy >= 0) & (xy < H) & (xx >= 0) & (xx < W)
                mg = mp & (gy >= 0) & (gy < GH) & (gx >= 0) & (gx < GW)
                xt = tl.load(x_base + offs_c[:, None] * (H * W) + (xy * W + xx)[None, :],
                             mask=mc[:, None] & mx[None, :], other=0.0).to(tl.float32)
                xt = (xt * s[:, None]).to(w_tile.dtype)
                gt = tl.load(g_base + offs_o[None, :] * (GH * GW) + (gy * GW + gx)[:, None],
                             mask=mg[:, None] & mo[None, :], other=0.0).to(w_tile.dtype)
                acc = tl.dot(xt, gt, acc, input_precision=PREC)
            if DEMOD:
                ev = tl.load(e_ptr + bb * C_OUT + offs_o, mask=mo, other=0.0)
                dm += (s * s)[:, None] * ev[None, :]
    if DEMOD:
        acc -= w_tile.to(tl.float32) * dm
    tl.store(out_ptr + (task * KK + tap) * C_IN * C_OUT + offs_c[:, None] * C_OUT + offs_o[None, :], acc,
             mask=mc[:, None] & mo[None, :])


# ----------------------------------------------------------------------------- 4. reduction to adapter factors

@triton.jit
def _factor_reduce_kernel(
    g_ptr, a_ptr, n_ptr, w_ptr, dn_ptr, da_ptr, dadd_ptr,
    C_IN, C_OUT, R, N_OB, coef,
    KK: tl.constexpr, KIND: tl.constexpr, OUTER: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
    R_PAD: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """KIND 2 (LLoRA): G′ = coef·G·[P ≥ 0 if OUTER], P[o,c] = Σ_j A[c,j]·N[tap,o,j];
    KIND 3 (LeFT): G′ = coef·G·W (the multiplicative factor's gradient), dadd[tap, c] += coef·Σ_o G.
    dN[tap, o, j] = Σ_c A[c,j]·G′[c,o]; dA[c, j] += Σ_o G′[c,o]·N[tap,o,j] (A = V for LeFT)."""
    pid_o = tl.program_id(0)
    tap = tl.program_id(1)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_r = tl.arange(0, R_PAD)
    mo = offs_o < C_OUT
    mr = offs_r < R
    n_tile = tl.load(n_ptr + (tap * C_OUT + offs_o[:, None]) * R + offs_r[None, :], mask=mo[:, None] & mr[None, :],
                     other=0.0)  # [BO, RP]
    dn = tl.zeros((BLOCK_O, R_PAD), dtype=tl.float32)
    for c0 in range(0, C_IN, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C_IN
        m2 = mc[:, None] & mo[None, :]
        g = tl.load(g_ptr + (tap * C_IN + offs_c[:, None]) * C_OUT + offs_o[None, :], mask=m2, other=0.0)
        a_tile = tl.load(a_ptr + offs_c[:, None] * R + offs_r[None, :], mask=mc[:, None] & mr[None, :], other=0.0)
        if KIND == 2:
            g = g * coef
            if OUTER:
                pv = tl.dot(a_tile, tl.trans(n_tile), input_precision="ieee")  # [BC, BO]
                g = tl.where(pv >= 0, g, 0.0)
        else:
            wv = tl.load(w_ptr + (offs_o[None, :] * C_IN + offs_c[:, None]) * KK + tap, mask=m2, other=0.0)
            part_add = tl.sum(g, axis=1) * coef
            if ATOMIC:
                tl.atomic_add(dadd_ptr + tap * C_IN + offs_c, part_add, mask=mc)
            else:
                tl.store(dadd_ptr + (pid_o * KK + tap) * C_IN + offs_c, part_add, mask=mc)
            g = g * wv.to(tl.float32) * coef
        g = tl.where(m2, g, 0.0)
        dn = tl.dot(tl.trans(g), a_tile, dn, input_precision=PREC)  # [BO, RP]
        da = tl.dot(g, n_tile, input_precision=PREC)  # [BC, RP]
        if ATOMIC:
            tl.atomic_add(da_ptr + offs_c[:, None] * R + offs_r[None, :], da, mask=mc[:, None] & mr[None, :])
        else:
            tl.store(da_ptr + ((pid_o * KK + tap) * C_IN + offs_c[:, None]) * R + offs_r[None, :], da,
                     mask=mc[:, None] & mr[None, :])
    tl.store(dn_ptr + (tap * C_OUT + offs_o[:, None]) * R + offs_r[None, :], dn, mask=mo[:, None] & mr[None, :])


# ----------------------------------------------------------------------------- 5. demodulation term, factorised

@triton.jit
def _demod_factor_kernel(
    w_ptr, m_ptr, a_ptr, n_ptr, dn_ptr, da_ptr,
    C_IN, C_OUT, R, coef,
    KK: tl.constexpr, A_TAP: tl.constexpr, N_TAP: tl.constexpr, ATOMIC: tl.constexpr, PREC: tl.constexpr,
    R_PAD: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Factor gradients of the demodulation term G_d[tap, c, o] = −coef·Ŵs[tap, c, o]·M[c, o] without writing
    G_d (Ŵs = scale·Ŵ K-major, M[c, o] = Σ_{b∈task} e[b,o]·s[b,c]²): dn[tap, o, j] = Σ_c A_tap[c, j]·G_d and
    da[(tap,) c, j] += Σ_o G_d·N_tap[o, j]. LLoRA: A [C_in, r], N[tap, o, j]; LoRA (A_TAP, not N_TAP):
    A[c·KK + tap, j], N = B [C_out, r] and da keeps its tap index."""
    pid_o = tl.program_id(0)
    tap = tl.program_id(1)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_r = tl.arange(0, R_PAD)
    mo = offs_o < C_OUT
    mr = offs_r < R
    if N_TAP:
        n_off = (tap * C_OUT + offs_o[:, None]) * R + offs_r[None, :]
    else:
        n_off = offs_o[:, None] * R + offs_r[None, :]
    n_tile = tl.load(n_ptr + n_off, mask=mo[:, None] & mr[None, :], other=0.0)  # [BO, RP]
    dn = tl.zeros((BLOCK_O, R_PAD), dtype=tl.float32)
    for c0 in range(0, C_IN, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C_IN
        m2 = mc[:, None] & mo[None, :]
        wv = tl.load(w_ptr + (tap * C_IN + offs_c[:, None]) * C_OUT + offs_o[None, :], mask=m2, other=0.0)
        mv = tl.load(m_ptr + offs_c[:, None] * C_OUT + offs_o[None, :], mask=m2, other=0.0)
        g = tl.where(m2, -coef * wv.to(tl.float32) * mv, 0.0)  # [BC, BO]
        if A_TAP:
            a_off = (offs_c[:, None] * KK + tap) * R + offs_r[None, :]
        else:
            a_off = offs_c[:, None] * R + offs_r[None, :]
        a_tile = tl.load(a_ptr + a_off, mask=mc[:, None] & mr[None, :], other=0.0)  # [BC, RP]
        dn = tl.dot(tl.trans(g), a_tile, dn, input_precision=PREC)  # [BO, RP]
        da = tl.dot(g, n_tile, input_precision=PREC)  # [BC, RP]
        mda = mc[:, None] & mr[None, :]
        if ATOMIC:
            if A_TAP:
                tl.atomic_add(da_ptr + (tap * C_IN + offs_c[:, None]) * R + offs_r[None, :], da, mask=mda)
            else:
                tl.atomic_add(da_ptr + offs_c[:, None] * R + offs_r[None, :], da, mask=mda)
        else:
            tl.store(da_ptr + ((pid_o * KK + tap) * C_IN + offs_c[:, None]) * R + offs_r[None, :], da, mask=mda)
    tl.store(dn_ptr + (tap * C_OUT + offs_o[:, None]) * R + offs_r[None, :], dn, mask=mo[:, None] & mr[None, :])


# ----------------------------------------------------------------------------- launchers

def _note(path: str) -> None:
    tiles.COUNTERS[path] = tiles.COUNTERS.get(path, 0) + 1


def epilogue_backward(gy: torch.Tensor, pre: torch.Tensor, noise: Optional[torch.Tensor],
                      bias: Optional[torch.Tensor], d: Optional[torch.Tensor], lrelu: bool, store_gz: bool):
    """(gd = gz·d fp32, gz or None, sums [N, C_out, 2] = (Σ gz, Σ gz·y0)) at the output resolution."""
    n, c, oh, ow = pre.shape
    gy = gy.contiguous()
    gd = tiles.empty(pre.shape, device=pre.device, dtype=torch.float32)
    gz = tiles.empty(pre.shape, device=pre.device, dtype=torch.float32) if store_gz else None
    sums = tiles.empty((n, c, 2), device=pre.device, dtype=torch.float32)
    sn = noise.expand(n, c, oh, ow).stride() if noise is not None else (0, 0, 0, 0)
    block = min(1024, max(16, triton.next_power_of_2(oh * ow)))
    common.launch(_epi_bwd_kernel, (n * c,), (
        gy, pre, noise if noise is not None else pre, bias if bias is not None else pre,
        d if d is not None else pre, gd, gz if gz is not None else gd, sums,
        c, oh * ow, ow, *sn), dict(
        HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, LRELU=lrelu, DEMOD=d is not None,
        STORE_GZ=store_gz, BLOCK=block), num_warps=4, num_stages=1, tag="epilogue_bwd")
    return gd, gz, sums


def dgrad(gc: torch.Tensor, w_k: torch.Tensor, xin: torch.Tensor, style: torch.Tensor, sq: torch.Tensor,
          e: Optional[torch.Tensor], task_ids: Optional[torch.Tensor], k: int, mode: int, need_dx: bool,
          need_ds: bool, deterministic: bool, config: Optional[tiles.Config] = None, family: str = "dgrad"):
    """(dx_in fp32 [N, C_in, H, W] at the conv input's resolution or None, ds [N, C_in] fp32 or None)."""
    n, c_in, h, w = xin.shape
    c_out, gh, gw = gc.shape[1], gc.shape[2], gc.shape[3]
    phases = 4 if mode == MODE_DOWN else 1
    qm = ((h + 1) // 2) * ((w + 1) // 2) if phases == 4 else h * w
    eligible = [c for c in tiles.CONV_CONFIGS if k == 1 or c.num_warps <= 4]
    cfg = config or tiles.choose(
        family, (n, c_in, c_out, qm, k, mode), eligible,
        lambda cf: triton.cdiv(qm, cf.block_m) * triton.cdiv(c_in, cf.block_n) * n * phases, qm, c_in, xin.device)
    if k > 1 and cfg.num_warps > 4:
        raise ValueError(f"config {cfg.name} (8 warps) is restricted to k = 1")
    n_mb = triton.cdiv(qm, cfg.block_m)
    dx = tiles.empty((n, c_in, h, w), device=xin.device, dtype=torch.float32) if need_dx else None
    ds = None
    if need_ds:
        if deterministic:
            _note("dgrad_ds_partials")
            ds = tiles.empty((n, phases * n_mb, c_in), device=xin.device, dtype=torch.float32)
        else:
            _note("dgrad_ds_atomic")
            ds = torch.zeros((n, c_in), device=xin.device, dtype=torch.float32)
    common.launch(_dgrad_kernel, (n_mb, triton.cdiv(c_in, cfg.block_n), n * phases), (
        gc, w_k, xin, style, sq, e if e is not None else sq, task_ids if task_ids is not None else style,
        dx if dx is not None else gc, ds if ds is not None else gc,
        c_in, c_out, h, w, gh, gw, n_mb), dict(
        K=k, MODE=mode, PHASES=phases, TASKS=task_ids is not None, DEMOD=e is not None,
        NEED_DX=need_dx, NEED_DS=need_ds, ATOMIC=not deterministic, PREC=common.dot_precision(w_k.dtype, xin.device),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k), tag="dgrad", config=cfg.name,
        **cfg.launch_kwargs())
    if need_ds and deterministic:
        ds = ds.sum(1)
    return dx, ds


def wgrad(gc: torch.Tensor, xin: torch.Tensor, style: torch.Tensor, w_k: torch.Tensor, e: Optional[torch.Tensor],
          task_ids: Optional[torch.Tensor], k: int, mode: int, config: Optional[tiles.Config] = None,
          family: str = "wgrad") -> torch.Tensor:
    """G [T, k·k, C_in, C_out] fp32: the gradient w.r.t. each task's scale·Ŵ (demodulation term included).
    Also the rank-r wgrads of the factorised path (family "factor": C_in or C_out is a padded rank; w_k then
    only gives the operand dtype and, with e, the demodulation term)."""
    n, c_in, h, w = xin.shape
    c_out, gh, gw = gc.shape[1], gc.shape[2], gc.shape[3]
    n_t = w_k.shape[0]
    ph, pw = (h, w) if mode == MODE_UP else (gh, gw)
    eligible = [c for c in tiles.CONV_CONFIGS if k == 1 or c.num_warps <= 4]
    cfg = config or tiles.choose(
        family, (n, c_in, c_out, ph * pw, k, mode, n_t), eligible,
        lambda cf: triton.cdiv(c_in, cf.block_m) * triton.cdiv(c_out, cf.block_n) * k * k * n_t, c_in, c_out,
        xin.device)
    if k > 1 and cfg.num_warps > 4:
        raise ValueError(f"config {cfg.name} (8 warps) is restricted to k = 1")
    _note("wgrad_full_kernel" if family == "wgrad" else "wgrad_rank_kernel")
    out = tiles.empty((n_t, k * k, c_in, c_out), device=xin.device, dtype=torch.float32)
    common.launch(_wgrad_kernel, (triton.cdiv(c_in, cfg.block_m), triton.cdiv(c_out, cfg.block_n), k * k * n_t), (
        gc, xin, style, w_k, e if e is not None else gc, task_ids if task_ids is not None else style, out,
        n, c_in, c_out, h, w, gh, gw, ph, pw), dict(
        K=k, MODE=mode, TASKS=task_ids is not None, DEMOD=e is not None,
        PREC=common.dot_precision(w_k.dtype, xin.device),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k), tag="wgrad", config=cfg.name,
        **cfg.launch_kwargs())
    return out


def factor_reduce(g: torch.Tensor, a: torch.Tensor, n_fac: torch.Tensor, weight: Optional[torch.Tensor],
                  coef: float, kind: int, outer: bool, deterministic: bool, config: Optional[tiles.Config] = None):
    """Reduce one task's G [k·k, C_in, C_out] to (dA [C_in, r], dN [k·k, C_out, r], dadd [k·k, C_in] or None)."""
    kk, c_in, c_out = g.shape
    r = a.shape[1]
    a = a.float().contiguous()
    n_fac = n_fac.float().contiguous()
    cfg = config or tiles.choose(
        "reduce", (c_out, c_in, kk), tiles.REDUCE_CONFIGS,
        lambda c: triton.cdiv(c_out, c.block_m) * kk, c_out, c_in, g.device)
    n_ob = triton.cdiv(c_out, cfg.block_m)
    dn = tiles.empty((kk, c_out, r), device=g.device, dtype=torch.float32)
    left = kind == common.KIND_LEFT
    if deterministic:
        _note("factor_partials")
        da = torch.zeros((n_ob * kk, c_in, r), device=g.device, dtype=torch.float32)
        dadd = torch.zeros((n_ob, kk, c_in), device=g.device, dtype=torch.float32) if left else None
    else:
        _note("factor_atomic")
        da = torch.zeros((c_in, r), device=g.device, dtype=torch.float32)
        dadd = torch.zeros((kk, c_in), device=g.device, dtype=torch.float32) if left else None
    common.launch(_factor_reduce_kernel, (n_ob, kk), (
        g, a, n_fac, weight.contiguous() if weight is not None else g, dn, da, dadd if dadd is not None else g,
        c_in, c_out, r, n_ob, float(coef)), dict(
        KK=kk, KIND=kind, OUTER=outer, ATOMIC=not deterministic,
        PREC="ieee" if g.device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32 else "tf32",
        R_PAD=max(16, triton.next_power_of_2(r)), BLOCK_O=cfg.block_m, BLOCK_C=cfg.block_n),
        num_warps=cfg.num_warps, num_stages=1, tag="factor_reduce", config=cfg.name)
    if deterministic:
        da = da.sum(0)
        dadd = dadd.sum(0) if left else None
    return da, dn, dadd


def demod_factor_reduce(w_t: torch.Tensor, m_t: torch.Tensor, a: torch.Tensor, n_fac: torch.Tensor, kk: int,
                        coef: float, lora: bool, deterministic: bool, config: Optional[tiles.Config] = None):
    """Factor gradients of one task's demodulation term −coef·(scale·Ŵ)⊙M, never written full-size.
    w_t [k·k·C_in, C_out] (the prologue's K-major scale·Ŵ), m_t [C_in, C_out] fp32. LLoRA: a = A [C_in, r],
    n_fac = N [k·k, C_out, r] → (dA [C_in, r], dN [k·k, C_out, r]); LoRA (`lora`): a = A [C_in·k·k, r],
    n_fac = B [C_out, r] → (dA [k·k, C_in, r] per tap, dN [k·k, C_out, r] to be summed over taps for dB)."""
    c_out = w_t.shape[1]
    c_in = w_t.shape[0] // kk
    r = a.shape[1]
    a = a.float().contiguous()
    n_fac = n_fac.float().contiguous()
    cfg = config or tiles.choose(
        "reduce", (c_out, c_in, kk, "demod"), tiles.REDUCE_CONFIGS,
        lambda c: triton.cdiv(c_out, c.block_m) * kk, c_out, c_in, w_t.device)
    n_ob = triton.cdiv(c_out, cfg.block_m)
    dn = tiles.empty((kk, c_out, r), device=w_t.device, dtype=torch.float32)
    if deterministic:
        _note("demod_factor_partials")
        da = torch.zeros((n_ob, kk, c_in, r), device=w_t.device, dtype=torch.float32)
    else:
        _note("demod_factor_atomic")
        da = torch.zeros((kk, c_in, r) if lora else (c_in, r), device=w_t.device, dtype=torch.float32)
    common.launch(_demod_factor_kernel, (n_ob, kk), (
        w_t, m_t, a, n_fac, dn, da, c_in, c_out, r, float(coef)), dict(
        KK=kk, A_TAP=lora, N_TAP=not lora, ATOMIC=not deterministic,
        PREC="ieee" if w_t.device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32 else "tf32",
        R_PAD=max(16, triton.next_power_of_2(r)), BLOCK_O=cfg.block_m, BLOCK_C=cfg.block_n),
        num_warps=cfg.num_warps, num_stages=1, tag="demod_factor", config=cfg.name)
    if deterministic:
        da = da.sum(0) if lora else da.sum((0, 1))
    return da, dn

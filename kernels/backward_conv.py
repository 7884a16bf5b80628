"""Fused backward of the modulated conv: kernels and launchers (frozen or trainable base, adapters trainable).

Forward (per sample b, task t = task_ids[b]): y0 = d ⊙ c, c = conv(x ⊙ s, Ŵ_t) (Ŵ_t = scale·(W ⊕ adapter)),
d = rsqrt(Σ_c s²·Q_t + 1e-8), Q_t[c, o] = Σ_taps Ŵ_t², then the epilogue (+noise, bias [+lrelu·√2], +skip).
The forward saved y0 ("pre", the activation dtype, channels-last) and, for down, the blurred input xb.
Activations and gradients are channels-last (any strides are accepted; channel stride 1 gives 16-byte loads).

1. `_epi_bwd_kernel`, [pixels × channels] tiles of one sample: the epilogue backward (lrelu′ from
   z = y0 + noise + bias; slope at 0 like torch), stores gd = gz·d (the conv-output gradient, in the GEMM operand
   dtype: bf16 operands for bf16 layers) and optionally gz (fp32, for the noise gradient), and per-tile partial
   sums Σ gz (bias gradient) and Σ gz·y0 (so e = dd·d³ = Σ gz·y0·d²), summed in a fixed order afterwards.
   For up, dc at the transposed-conv resolution is the blur's adjoint of gd (`fir.blur`, mirrored padding).
2. dgrad is the forward implicit GEMM (`modconv.conv`, HGMMA tiles, one flattened K loop) run on dc with the
   adjoint weights (`adjoint_weights`: per tap [C_out, C_in], flipped for the stride-1 conv): plain → plain
   conv, up (a transposed conv) → stride-2 conv, down (a stride-2 conv) → polyphase transposed conv.
   dx = s ⊙ dxs and the style gradient ds = Σ_pix x·dxs − s·Σ_o e·Q_t follow as two small reductions.
3. `_wgrad_kernel`: the full kernel gradient per task, G_t[tap, c, o] = Σ_{b∈t, pix} (x⊙s)·dc patches
   − Ŵ_t·Σ_{b∈t} e[b,o]·s[b,c]² (the demodulation term), fp32, layout [T, k·k, C_in, C_out]; GEMM M = C_in,
   N = C_out, K = pixels (both operands read along channels: 16-byte loads in channels-last). Each program
   owns an output tile and loops over the samples of its task: no atomics.
4. `_factor_reduce_kernel` (LLoRA all acts, LeFT conv): reduces G_t to the factor gradients without writing
   anything else full-size: one program per (C_out block, tap) loops over C_in, rebuilds P = A·N on the fly for
   the outer-ReLU mask (ReLU′(0) := 1 as in the reference), and produces dN[tap, o, :] (complete) and dA / dV
   (per-program partials or atomics), plus for LeFT Σ_o G (the additive term's gradient).
5. `_demod_factor_kernel`: the factor gradients of the demodulation term −Ŵ⊙M from the prologue's Ŵ without
   writing it full-size (the factorised weight-gradient path).

The adapter chain rule and the choice of the weight-gradient path (full G or factorised rank-r launches) live
in `fastlora._triton_backward`; this file only has kernels and their launchers.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common, modconv, prologue, tiles
from kernels.common import MODE_DOWN, MODE_PLAIN, MODE_UP


# ----------------------------------------------------------------------------- 1. epilogue backward

@triton.jit
def _epi_bwd_kernel(
    gy_ptr, pre_ptr, noise_ptr, bias_ptr, d_ptr, gd_ptr, gz_ptr, part_ptr,
    C, CP, HW, OW, snb, snc, sny, snx,
    NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, DEMOD: tl.constexpr,
    STORE_GZ: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gy, pre, gz dense channels-last [N, HW, C]; gd [N, HW, CP] (CP ≥ C, padding channels written 0)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mp = offs_p < HW
    mc = offs_c < C
    m2 = mp[:, None] & mc[None, :]
    row = b * HW + offs_p
    off = row[:, None] * C + offs_c[None, :]
    g = tl.load(gy_ptr + off, mask=m2, other=0.0).to(tl.float32)
    y0 = tl.load(pre_ptr + off, mask=m2, other=0.0).to(tl.float32)
    if LRELU:
        z = y0
        if HAS_BIAS:
            z += tl.load(bias_ptr + offs_c, mask=mc, other=0.0)[None, :]
        oy = offs_p // OW
        ox = offs_p - oy * OW
        if NOISE == 1:
            z += tl.load(noise_ptr + b * snb + oy * sny + ox * snx, mask=mp, other=0.0)[:, None]
        if NOISE == 2:
            z += tl.load(noise_ptr + b * snb + (oy * sny + ox * snx)[:, None] + offs_c[None, :] * snc, mask=m2,
                         other=0.0)
        g = common.lrelu_grad(g, z)
    g = tl.where(m2, g, 0.0)
    gd = g
    if DEMOD:
        gd = g * tl.load(d_ptr + b * C + offs_c, mask=mc, other=0.0)[None, :]
    tl.store(gd_ptr + row[:, None] * CP + offs_c[None, :], gd.to(gd_ptr.dtype.element_ty),
             mask=mp[:, None] & (offs_c < CP)[None, :])
    if STORE_GZ:
        tl.store(gz_ptr + off, g, mask=m2)
    part = part_ptr + ((b * tl.num_programs(0) + pid_p) * C + offs_c) * 2
    tl.store(part, tl.sum(g, axis=0), mask=mc)
    tl.store(part + 1, tl.sum(g * y0, axis=0), mask=mc)


# ----------------------------------------------------------------------------- 3. wgrad (full kernel gradient)

@triton.jit
def _wgrad_kernel(
    g_ptr, x_ptr, s_ptr, w_ptr, e_ptr, tid_ptr, out_ptr,
    NB, C_IN, C_OUT, LDW, H, W, GH, GW, PH, PW,
    sxb, sxc, sxy, sxx, sgb, sgc, sgy, sgx,
    K: tl.constexpr, MODE: tl.constexpr, TASKS: tl.constexpr, DEMOD: tl.constexpr, SWAP: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[t, tap, c, o] = Σ_{b∈t} Σ_p (x⊙s)[b, c, src_x(p)]·dc[b, o, src_g(p)] − Ŵ·Σ_{b∈t} e[b,o]·s[b,c]².
    The tile is [C_in block × C_out block], or with SWAP (rank-r gradients, C_in the small rank) [C_out × C_in]
    so the large dimension is the MMA's M."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    KK: tl.constexpr = K * K
    tap = pid_z % KK
    task = (pid_z // KK).to(tl.int64)
    ky = tap // K
    kx = tap % K
    if SWAP:
        offs_o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    else:
        offs_c = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mc = offs_c < C_IN
    mo = offs_o < C_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dm = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for b in range(NB):
        if TASKS:
            own = tl.load(tid_ptr + b).to(tl.int64) == task
        else:
            own = True
        if own:
            bb = (pid_m * 0 + b).to(tl.int64)  # 64-bit sample offsets (b is a plain int in the interpreter)
            s = tl.load(s_ptr + bb * C_IN + offs_c, mask=mc, other=0.0)
            for p0 in range(0, PH * PW, BLOCK_K):
                offs_p = p0 + tl.arange(0, BLOCK_K)
                mp = offs_p < PH * PW
                qy = offs_p // PW
                qx = offs_p - qy * PW
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
                xt = tl.load(x_ptr + bb * sxb + (xy * sxy + xx * sxx)[:, None] + offs_c[None, :] * sxc,
                             mask=mx[:, None] & mc[None, :], other=0.0).to(tl.float32)  # [pixels, C_in]
                xt = (xt * s[None, :]).to(w_ptr.dtype.element_ty)
                gt = tl.load(g_ptr + bb * sgb + (gy * sgy + gx * sgx)[:, None] + offs_o[None, :] * sgc,
                             mask=mg[:, None] & mo[None, :], other=0.0).to(w_ptr.dtype.element_ty)  # [pixels, C_out]
                if SWAP:
                    acc = common.mma(tl.trans(gt), xt, acc, PREC)
                else:
                    acc = common.mma(tl.trans(xt), gt, acc, PREC)
            if DEMOD:
                ev = tl.load(e_ptr + bb * C_OUT + offs_o, mask=mo, other=0.0)
                dm += (s * s)[:, None] * ev[None, :]
    base = out_ptr + (task * KK + tap) * C_IN * C_OUT
    if SWAP:
        tl.store(base + offs_c[None, :] * C_OUT + offs_o[:, None], acc, mask=mo[:, None] & mc[None, :])
    else:
        if DEMOD:
            w_tile = tl.load(w_ptr + (task * KK + tap) * C_IN * LDW + offs_c[:, None] * LDW + offs_o[None, :],
                             mask=mc[:, None] & mo[None, :], other=0.0)
            acc -= w_tile.to(tl.float32) * dm
        tl.store(base + offs_c[:, None] * C_OUT + offs_o[None, :], acc, mask=mc[:, None] & mo[None, :])


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
        dn = common.mma(tl.trans(g), a_tile, dn, PREC)  # [BO, RP]
        da = common.mma(g, n_tile, None, PREC)  # [BC, RP]
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
        dn = common.mma(tl.trans(g), a_tile, dn, PREC)  # [BO, RP]
        da = common.mma(g, n_tile, None, PREC)  # [BC, RP]
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
                      bias: Optional[torch.Tensor], d: Optional[torch.Tensor], lrelu: bool, store_gz: bool,
                      gd_dtype: torch.dtype, config: Optional[tiles.Config] = None):
    """(gd = gz·d [N, CP, OH, OW] channels-last in `gd_dtype`, CP = C_out padded to 16 with zero channels;
    gz fp32 or None; sums [N, C_out, 2] = (Σ gz, Σ gz·y0) fp32) at the output resolution."""
    n, c, oh, ow = pre.shape
    cl = torch.channels_last
    if c % 8:  # rows of a few channels (ToRGB) are not 16-byte aligned: read them in fp32
        gy, pre = gy.float(), pre.float()
    gy = gy.contiguous(memory_format=cl)
    pre = pre.contiguous(memory_format=cl)
    cp = prologue.padded_width(c)
    gd = tiles.empty((n, cp, oh, ow), device=pre.device, dtype=gd_dtype).contiguous(memory_format=cl)
    gz = tiles.empty((n, c, oh, ow), device=pre.device, dtype=torch.float32).contiguous(memory_format=cl) \
        if store_gz else None
    noise_mode = 0 if noise is None else (1 if noise.shape[1] == 1 else 2)
    noise = None if noise is None else noise.to(torch.float32)
    sn = tuple(noise.expand(n, c, oh, ow).stride()) if noise is not None else (0, 0, 0, 0)
    cfg = config or tiles.EPI_BWD_CONFIG
    n_pt = triton.cdiv(oh * ow, cfg.block_m)
    part = tiles.empty((n, n_pt, c, 2), device=pre.device, dtype=torch.float32)
    bias = None if bias is None else bias.to(torch.float32).contiguous()
    common.launch(_epi_bwd_kernel, (n_pt, triton.cdiv(cp, cfg.block_n), n), (
        gy, pre, noise if noise is not None else pre, bias if bias is not None else pre,
        d if d is not None else pre, gd, gz if gz is not None else gd, part,
        c, cp, oh * ow, ow, *sn), dict(
        NOISE=noise_mode, HAS_BIAS=bias is not None, LRELU=lrelu, DEMOD=d is not None,
        STORE_GZ=store_gz, BLOCK_P=cfg.block_m, BLOCK_C=cfg.block_n), num_warps=cfg.num_warps, num_stages=1,
        tag="epilogue_bwd", tile=f"{cfg.block_m}x{cfg.block_n}")
    return gd, gz, part.sum(1)


def adjoint_weights(w_k: torch.Tensor, c_in: int, c_out: int, k: int, flip: bool, rows: int) -> torch.Tensor:
    """The K-major weight of the conv's adjoint, [T, k·k·rows, LDW(C_in)]: per tap Ŵ[o, c] with C_out as the
    reduction (rows ≥ C_out, padding rows zero), taps reversed for the stride-1 conv (`flip`)."""
    n_t, kk = w_k.shape[0], k * k
    w = w_k[..., :c_out].reshape(n_t, kk, c_in, c_out)
    if flip:
        w = w.flip(1)
    out = torch.zeros((n_t, kk, rows, prologue.padded_width(c_in)), device=w_k.device, dtype=w_k.dtype)
    out[:, :, :c_out, :c_in] = w.transpose(2, 3)
    return out.reshape(n_t, kk * rows, -1)


ADJOINT_MODE = {MODE_PLAIN: MODE_PLAIN, MODE_UP: MODE_DOWN, MODE_DOWN: MODE_UP}


def dgrad(gc: torch.Tensor, w_adj: torch.Tensor, k: int, mode: int, in_shape: tuple,
          task_ids: Optional[torch.Tensor], config: Optional[tiles.Config] = None,
          family: str = "dgrad", out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """dxs = the forward conv's adjoint applied to dc (gc [N, C_g, GH, GW], any strides; w_adj from
    `adjoint_weights` with rows = C_g): [N, C_in, H, W] channels-last (`out_dtype`, fp32 by default) at the conv
    input's resolution (`in_shape`), for the forward `mode`. Runs the forward implicit GEMM (`modconv.conv`)."""
    n, c_g = gc.shape[0], gc.shape[1]
    dxs = tiles.empty(in_shape, device=gc.device, dtype=out_dtype).contiguous(memory_format=torch.channels_last)
    ones = torch.ones((n, c_g), device=gc.device, dtype=torch.float32)
    return modconv.conv(gc, ones, w_adj, None, k, ADJOINT_MODE[mode], dxs, task_ids=task_ids,
                        config=config or tiles.forced(family), family="conv")


def wgrad(gc: torch.Tensor, xin: torch.Tensor, style: torch.Tensor, w_k: torch.Tensor, e: Optional[torch.Tensor],
          task_ids: Optional[torch.Tensor], k: int, mode: int, c_out: Optional[int] = None,
          config: Optional[tiles.Config] = None, family: str = "wgrad") -> torch.Tensor:
    """G [T, k·k, C_in, C_out] fp32: the gradient w.r.t. each task's scale·Ŵ (demodulation term included).
    gc and xin with any strides (channels-last: 16-byte loads); gc may carry padding channels beyond `c_out`.
    w_k [T, k·k·C_in, LDW] gives the operand dtype and, with e, the demodulation term. Also the rank-r wgrads
    of the factorised path (family "factor": C_in or C_out is a padded rank)."""
    n, c_in, h, w = xin.shape
    c_out = gc.shape[1] if c_out is None else c_out
    if gc.shape[1] > c_out:  # dc carries zero padding channels (aligned rows): compute them too, return C_out
        c_g = gc.shape[1]
        e_pad = None
        if e is not None:
            e_pad = torch.zeros((n, c_g), device=e.device, dtype=e.dtype)
            e_pad[:, :c_out] = e
        g_full = wgrad(gc, xin, style, w_k, e_pad, task_ids, k, mode, c_g, config, family)
        return g_full[..., :c_out].contiguous()
    gh, gw = gc.shape[2], gc.shape[3]
    n_t = w_k.shape[0]
    ph, pw = (h, w) if mode == MODE_UP else (gh, gw)
    swap = family == "factor" and c_in <= 16 < c_out  # rank-r gradient: the large dimension is the MMA's M
    big, small = (c_out, c_in) if swap else (c_in, c_out)
    cfg = config or tiles.forced(family)
    if cfg is None:
        if small <= 16:  # a rank or a few channels (ToRGB): 64-row tiles keep the MMA on wgmma
            cfg = tiles.get(family, "rank_64x16x64")
        else:
            # 64-row tiles or more (wgmma), at most 128x64 (larger tiles spill)
            eligible = [c for c in tiles.BWD_CONFIGS if c.block_m >= 64 and c.block_m * c.block_n <= 128 * 64]
            cfg = tiles.choose(family, (n, c_in, c_out, ph * pw, k, mode, n_t), eligible,
                               lambda cf: triton.cdiv(big, cf.block_m) * triton.cdiv(small, cf.block_n) * k * k * n_t,
                               big, small, xin.device)
    _note("wgrad_full_kernel" if family == "wgrad" else "wgrad_rank_kernel")
    style = style.float().contiguous()  # N·C_in values, read per sample: fp32
    out = tiles.empty((n_t, k * k, c_in, c_out), device=xin.device, dtype=torch.float32)
    common.launch(_wgrad_kernel, (triton.cdiv(big, cfg.block_m), triton.cdiv(small, cfg.block_n), k * k * n_t), (
        gc, xin, style, w_k, e if e is not None else gc, task_ids if task_ids is not None else style, out,
        n, c_in, c_out, w_k.shape[-1], h, w, gh, gw, ph, pw, *xin.stride(), *gc.stride()), dict(
        K=k, MODE=mode, TASKS=task_ids is not None, DEMOD=e is not None, SWAP=swap,
        PREC=common.dot_precision(w_k.dtype, xin.device),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k), tag="wgrad", config=cfg.name,
        tile=f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k}", **cfg.launch_kwargs())
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
        PREC=common.dot_precision(torch.float32, g.device),
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
        PREC=common.dot_precision(torch.float32, w_t.device),
        R_PAD=max(16, triton.next_power_of_2(r)), BLOCK_O=cfg.block_m, BLOCK_C=cfg.block_n),
        num_warps=cfg.num_warps, num_stages=1, tag="demod_factor", config=cfg.name)
    if deterministic:
        da = da.sum(0) if lora else da.sum((0, 1))
    return da, dn

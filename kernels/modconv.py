"""Fused modulated convolution: implicit GEMM over one shared adapted kernel (per task).

y[b, o] = d[b, o] · Σ_{c, taps} (s[b, c]·x[b, c, ·]) ⋆ Ŵ[o, c, ·], with
d[b, o] = rsqrt(Σ_c s[b, c]²·Σ_taps Ŵ[o, c]² + 1e-8) computed in the epilogue from the
prologue's sums of squares (no per-sample weight copy), followed by the StyledConv/ToRGB
epilogue (+noise, bias [+leaky-ReLU·√2], +skip).

GEMM view: M = output pixels of one sample (programs never straddle samples, so a per-sample
task index just offsets the weight pointer), N = C_out, K = C_in per tap with static loops over
the k×k taps. Modes: 0 stride 1 / padding k//2; 1 stride 2 / padding 0 (after the down blur);
2 the stride-2 transposed conv as four polyphase sub-convolutions (one per output parity, only
the taps of that parity: no multiplications by inserted zeros), followed by the up blur.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from kernels import common, fir, prologue, tiles

MODE_PLAIN, MODE_DOWN, MODE_UP = 0, 1, 2
DEMOD_EPS = 1e-8


@triton.jit
def _tap_accumulate(acc, x_base, s_base, w_tap, iy, ix, mm, offs_n, mn, C_IN, C_OUT, H, W,
                    PREC: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += (x[iy, ix, c]·s[c]) @ w_tap[c, o] over all C_in blocks (one kernel tap)."""
    ma = mm & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    pix = iy * W + ix
    for c0 in range(0, C_IN, BLOCK_K):
        offs_k = c0 + tl.arange(0, BLOCK_K)
        mk = offs_k < C_IN
        a = tl.load(x_base + offs_k[None, :] * (H * W) + pix[:, None], mask=ma[:, None] & mk[None, :],
                    other=0.0).to(tl.float32)
        s = tl.load(s_base + offs_k, mask=mk, other=0.0).to(tl.float32)
        a = (a * s[None, :]).to(w_tap.dtype.element_ty)
        wt = tl.load(w_tap + offs_k[:, None] * C_OUT + offs_n[None, :], mask=mk[:, None] & mn[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=PREC)
    return acc


@triton.jit
def _modconv_kernel(
    x_ptr, s_ptr, w_ptr, sq_ptr, tid_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
    C_IN, C_OUT, H, W, OH, OW, QH, QW,
    sn_b, sn_c, sn_y, sn_x,
    K: tl.constexpr, MODE: tl.constexpr, PHASES: tl.constexpr,
    TASKS: tl.constexpr, DEMOD: tl.constexpr,
    HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, HAS_SKIP: tl.constexpr,
    SAVE_PRE: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    b = (pid_z // PHASES).to(tl.int64)
    phase = pid_z % PHASES
    py = phase // 2
    px = phase % 2
    if MODE == 2:
        qh = (OH - py + 1) // 2
        qw = (OW - px + 1) // 2
    else:
        qh = QH
        qw = QW
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = offs_m < qh * qw
    mn = offs_n < C_OUT
    q = offs_m // qw
    p = offs_m % qw
    if TASKS:
        t = tl.load(tid_ptr + b).to(tl.int64)
    else:
        t = 0
    KK: tl.constexpr = K * K
    x_base = x_ptr + b * C_IN * H * W
    s_base = s_ptr + b * C_IN
    w_base = w_ptr + t * (KK * C_IN * C_OUT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ky in tl.static_range(K):
        for kx in tl.static_range(K):
            w_tap = w_base + (ky * K + kx) * C_IN * C_OUT
            if MODE == 0:
                acc = _tap_accumulate(acc, x_base, s_base, w_tap, q + (ky - K // 2), p + (kx - K // 2), mm, offs_n,
                                      mn, C_IN, C_OUT, H, W, PREC, BLOCK_K)
            elif MODE == 1:
                acc = _tap_accumulate(acc, x_base, s_base, w_tap, 2 * q + ky, 2 * p + kx, mm, offs_n, mn,
                                      C_IN, C_OUT, H, W, PREC, BLOCK_K)
            else:
                # polyphase: output parity (py, px) only sees taps of the same parity
                if (py == (ky % 2)) & (px == (kx % 2)):
                    acc = _tap_accumulate(acc, x_base, s_base, w_tap, q - (ky - py) // 2, p - (kx - px) // 2, mm,
                                          offs_n, mn, C_IN, C_OUT, H, W, PREC, BLOCK_K)
    if DEMOD:
        dsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        sq_base = sq_ptr + t * (C_IN * C_OUT)
        for c0 in range(0, C_IN, BLOCK_K):
            offs_k = c0 + tl.arange(0, BLOCK_K)
            mk = offs_k < C_IN
            s = tl.load(s_base + offs_k, mask=mk, other=0.0).to(tl.float32)
            sq = tl.load(sq_base + offs_k[:, None] * C_OUT + offs_n[None, :], mask=mk[:, None] & mn[None, :],
                         other=0.0)
            dsum += tl.sum((s * s)[:, None] * sq, axis=0)
        acc = acc * tl.rsqrt(dsum + 1e-8)[None, :]
    if MODE == 2:
        oy = 2 * q + py
        ox = 2 * p + px
    else:
        oy = q
        ox = p
    m2 = mm[:, None] & mn[None, :]
    out_off = (b * C_OUT + offs_n[None, :]) * (OH * OW) + (oy * OW + ox)[:, None]
    if SAVE_PRE:  # demodulated conv output before the epilogue (fp32), kept for the fused backward
        tl.store(pre_ptr + out_off, acc, mask=m2)
    if HAS_NOISE:
        acc += tl.load(noise_ptr + b * sn_b + offs_n[None, :] * sn_c + (oy * sn_y + ox * sn_x)[:, None],
                       mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
    if LRELU:
        acc = tl.where(acc >= 0, acc, acc * 0.2) * 1.4142135623730951
    if HAS_SKIP:
        acc += tl.load(skip_ptr + out_off, mask=m2, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=m2)


def _up_blur_pad(k: int) -> tuple[int, int]:
    p = 2 - (k - 1)
    return (p + 1) // 2 + 1, p // 2 + 1


def _down_blur_pad(k: int) -> tuple[int, int]:
    p = 2 + (k - 1)
    return (p + 1) // 2, p // 2


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    if dtype == torch.float32 and device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def conv(xin: torch.Tensor, style: torch.Tensor, w_k: torch.Tensor, sq: torch.Tensor, k: int, mode: int,
         out: torch.Tensor, *, task_ids: Optional[torch.Tensor] = None, demodulate: bool = True,
         noise: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, lrelu: bool = False,
         skip: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
         config: Optional[tiles.Config] = None) -> torch.Tensor:
    """Launch the implicit-GEMM conv. xin [N, C_in, H, W] contiguous; w_k [T, k·k·C_in, C_out];
    sq [T, C_in, C_out] fp32; out [N, C_out, OH, OW] (for MODE_UP: the transposed-conv size);
    `pre` (fp32, like out): also store the demodulated output before the epilogue."""
    n, c_in, h, w = xin.shape
    c_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    phases = 4 if mode == MODE_UP else 1
    qh, qw = ((oh + 1) // 2, (ow + 1) // 2) if mode == MODE_UP else (oh, ow)
    sn = noise.expand(n, c_out, oh, ow).stride() if noise is not None else (0, 0, 0, 0)
    skip = skip.contiguous() if skip is not None else None
    eligible = [c for c in tiles.CONV_CONFIGS if k == 1 or c.num_warps <= 4]

    def grid_of(cf: tiles.Config) -> tuple[int, int, int]:
        return (triton.cdiv(qh * qw, cf.block_m), triton.cdiv(c_out, cf.block_n), n * phases)

    def launch(cf: tiles.Config) -> None:
        if k > 1 and cf.num_warps > 4:
            raise ValueError(f"config {cf.name} (8 warps) is restricted to k = 1")
        common.launch(_modconv_kernel, grid_of(cf), (
            xin, style, w_k, sq, task_ids if task_ids is not None else style, out,
            noise if noise is not None else out, bias if bias is not None else out,
            skip if skip is not None else out, pre if pre is not None else out,
            c_in, c_out, h, w, oh, ow, qh, qw, *sn), dict(
            K=k, MODE=mode, PHASES=phases, TASKS=task_ids is not None, DEMOD=demodulate,
            HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, LRELU=lrelu, HAS_SKIP=skip is not None,
            SAVE_PRE=pre is not None, PREC=_precision(w_k.dtype, xin.device),
            BLOCK_M=cf.block_m, BLOCK_N=cf.block_n, BLOCK_K=cf.block_k), tag="conv", config=cf.name,
            **cf.launch_kwargs())

    key = (n, c_in, c_out, qh * qw, k, mode, str(xin.dtype), task_ids is not None)
    cfg = config or tiles.choose("conv", key, eligible, lambda cf: grid_of(cf)[0] * grid_of(cf)[1] * grid_of(cf)[2],
                                 qh * qw, c_out, xin.device, bench=launch)
    launch(cfg)
    return out


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, adapters: Sequence,
                     task_ids: Optional[torch.Tensor], scale: float, demodulate: bool, up: bool, down: bool,
                     bias: Optional[torch.Tensor], noise: Optional[torch.Tensor], activation: Optional[str],
                     skip: Optional[torch.Tensor], saved: Optional[dict] = None) -> torch.Tensor:
    """Fused forward (no autograd). `adapters`: one entry per task (None = base weight);
    with task_ids None, exactly one entry. Launches: one prologue per task, the conv, and the
    blur for up/down. No host synchronisation. `saved` (a dict, for the fused backward) receives
    "pre" (fp32 output before noise/bias/activation/skip) and, for down, "xb" (the blurred input)."""
    n, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[2]
    dev = x.device
    x = x.contiguous()
    style = style.contiguous()
    wdtype = torch.float32 if x.dtype == torch.float32 else x.dtype
    n_tasks = len(adapters)
    w_k = tiles.empty((n_tasks, k * k * c_in, c_out), device=dev, dtype=wdtype)
    sq = tiles.empty((n_tasks, c_in, c_out), device=dev, dtype=torch.float32)
    for i, a in enumerate(adapters):
        prologue.build_weight(weight, a, scale, w_k[i], sq[i], config=tiles.forced("prologue"))
    lrelu = activation == "lrelu"
    pre = None
    if saved is not None:
        oh, ow = (2 * h, 2 * w) if up else (h, w)
        if down:
            p0, p1 = _down_blur_pad(k)
            oh, ow = (h + p0 + p1 - 3 - k) // 2 + 1, (w + p0 + p1 - 3 - k) // 2 + 1
        pre = saved["pre"] = tiles.empty((n, c_out, oh, ow), device=dev, dtype=torch.float32)
    if up:
        th, tw = 2 * h + k - 2, 2 * w + k - 2
        tmp = tiles.empty((n, c_out, th, tw), device=dev, dtype=torch.float32)
        conv(x, style, w_k, sq, k, MODE_UP, tmp, task_ids=task_ids, demodulate=demodulate)
        out = tiles.empty((n, c_out, 2 * h, 2 * w), device=dev, dtype=x.dtype)
        return fir.blur(tmp, _up_blur_pad(k), 4.0, out, noise=noise, bias=bias, lrelu=lrelu, skip=skip, pre=pre)
    if down:
        p0, p1 = _down_blur_pad(k)
        bh, bw = h + p0 + p1 - 3, w + p0 + p1 - 3
        xb = tiles.empty((n, c_in, bh, bw), device=dev, dtype=torch.float32)
        fir.blur(x, (p0, p1), 1.0, xb)
        if saved is not None:
            saved["xb"] = xb
        out = tiles.empty((n, c_out, (bh - k) // 2 + 1, (bw - k) // 2 + 1), device=dev, dtype=x.dtype)
        return conv(xb, style, w_k, sq, k, MODE_DOWN, out, task_ids=task_ids, demodulate=demodulate,
                    noise=noise, bias=bias, lrelu=lrelu, skip=skip, pre=pre)
    out = tiles.empty((n, c_out, h, w), device=dev, dtype=x.dtype)
    return conv(x, style, w_k, sq, k, MODE_PLAIN, out, task_ids=task_ids, demodulate=demodulate,
                noise=noise, bias=bias, lrelu=lrelu, skip=skip, pre=pre)

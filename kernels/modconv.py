"""Fused modulated convolution, forward: implicit GEMM over one shared adapted kernel per task.

y[b, o] = d[b, o] · Σ_{tap, c} (s[b, c]·x[b, c, ·]) ⋆ Ŵ[o, c, tap], then the StyledConv/ToRGB epilogue
(+noise, bias [+leaky-ReLU·√2], +skip). d[b, o] = rsqrt(Σ_c s[b, c]²·Q[c, o] + eps) comes precomputed
(`prologue.demod`, once per call); Ŵ (K-major [k·k·C_in, C_out], zero-padded to a row stride LDW) and Q
come from `prologue.build_weight`.

GEMM view. M = output pixels of all samples (flattened, so small layers fill their tiles; with per-sample
task indices the rows of one program stay within one sample), N = C_out, K = taps × C_in in ONE loop
(step i → tap, C_in block), so the software pipeline never drains between taps. Activations are read
through explicit strides: with channels-last tensors the channel stride is 1 (Triton specialises it), so
the activation tile and the weight tile are contiguous along K and N and load as 16-byte vectors
(LDGSTS.128 when pipelined). The style scale is applied on the activation load.

Modes: MODE_PLAIN (stride 1, padding k//2), MODE_DOWN (stride 2, after the down blur), MODE_UP (the
stride-2 transposed conv as four polyphase sub-convolutions, one per output parity, each with only the
taps of its parity: no multiplications by inserted zeros). The up result is written in the activation
dtype, channels-last, and blurred by `fir.blur`, whose epilogue does the rest.

Split-K (small layers): program axis 2 splits the K loop; each split writes its fp32 partial tile to a
workspace [SPLIT, PHASES·GROUPS, ROWS, C_out] and `_splitk_reduce_kernel` sums the splits in a fixed order
(deterministic) and applies d and the epilogue.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from kernels import common, fir, prologue, tiles
from kernels.common import MODE_DOWN, MODE_PLAIN, MODE_UP


# ----------------------------------------------------------------------------- shared jit helpers

@triton.jit
def _row_coords(offs_m, phase, group, H_T, W_T, MODE: tl.constexpr, TASKS: tl.constexpr):
    """Rows of one (phase, group) → (b, q, p, rows of that phase per sample·groups, qw, py, px)."""
    py = phase // 2
    px = phase % 2
    if MODE == 2:
        qh = (H_T - py + 1) // 2
        qw = (W_T - px + 1) // 2
    else:
        qh = H_T
        qw = W_T
    per = qh * qw
    if TASKS:
        b = group + offs_m * 0
        rem = offs_m
    else:
        b = offs_m // per
        rem = offs_m - b * per
    q = rem // qw
    p = rem - q * qw
    return b.to(tl.int64), q, p, per, py, px


@triton.jit
def _finish(acc, b, oy, ox, offs_n, mm, mn, d_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
            C_OUT, sob, soc, soy, sox, snb, snc, sny, snx,
            DEMOD: tl.constexpr, NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr,
            HAS_SKIP: tl.constexpr, SAVE_PRE: tl.constexpr):
    """acc ·= d, then store pre, +noise, +bias, leaky-ReLU·√2, +skip, store (all in output coordinates)."""
    m2 = mm[:, None] & mn[None, :]
    if DEMOD:
        dv = tl.load(d_ptr + b[:, None] * C_OUT + offs_n[None, :], mask=m2, other=0.0)
        acc = acc * dv
    off = b[:, None] * sob + (oy * soy + ox * sox)[:, None] + offs_n[None, :] * soc
    if SAVE_PRE:  # the demodulated conv output before the epilogue, kept for the fused backward
        tl.store(pre_ptr + off, acc.to(pre_ptr.dtype.element_ty), mask=m2)
    if NOISE == 1:  # one noise value per pixel (broadcast over channels), fp32
        nz = tl.load(noise_ptr + b * snb + oy * sny + ox * snx, mask=mm, other=0.0)
        acc += nz[:, None]
    if NOISE == 2:  # per-channel noise
        acc += tl.load(noise_ptr + b[:, None] * snb + (oy * sny + ox * snx)[:, None] + offs_n[None, :] * snc,
                       mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mn, other=0.0)[None, :]
    if LRELU:
        acc = common.lrelu(acc)
    if HAS_SKIP:
        acc += tl.load(skip_ptr + off, mask=m2, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _tile_ids(M_TILES, N_TILES, GROUP_M: tl.constexpr):
    """Grouped ordering of (m, n) tiles: GROUP_M m-tiles share each weight column block in L2."""
    pid = tl.program_id(0)
    width = GROUP_M * N_TILES
    first = (pid // width) * GROUP_M
    gsize = tl.minimum(M_TILES - first, GROUP_M)
    pid_m = first + (pid % width) % gsize
    pid_n = (pid % width) // gsize
    return pid_m, pid_n


# ----------------------------------------------------------------------------- the implicit-GEMM conv

@triton.jit
def _conv_kernel(
    x_ptr, s_ptr, w_ptr, d_ptr, tid_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr, ws_ptr,
    C_IN, C_OUT, LDW, H, W, H_T, W_T, N_B, M_TILES, N_TILES, STEPS_PER_SPLIT, WS_ROWS,
    sxb, sxc, sxy, sxx, sob, soc, soy, sox, snb, snc, sny, snx,
    K: tl.constexpr, MODE: tl.constexpr, PHASES: tl.constexpr, TASKS: tl.constexpr, DEMOD: tl.constexpr,
    NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, HAS_SKIP: tl.constexpr,
    SAVE_PRE: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M_TILES, N_TILES, GROUP_M)
    pz = tl.program_id(1)
    sid = tl.program_id(2)
    phase = pz % PHASES
    group = pz // PHASES
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b, q, p, per, py, px = _row_coords(offs_m, phase, group, H_T, W_T, MODE, TASKS)
    if TASKS:
        rows = per
        t = tl.load(tid_ptr + group).to(tl.int64)
    else:
        rows = per * N_B
        t = 0
    mm = offs_m < rows
    mn = offs_n < C_OUT
    mw = offs_n < LDW  # the weight rows are zero-padded to LDW (a multiple of 16): loads stay vectorised
    if MODE == 2:
        nky = (K - py + 1) // 2
        nkx = (K - px + 1) // 2
    else:
        nky = K
        nkx = K
    ncb = tl.cdiv(C_IN, BLOCK_K)
    steps = nky * nkx * ncb
    k_lo = sid * STEPS_PER_SPLIT
    k_hi = tl.minimum(k_lo + STEPS_PER_SPLIT, steps)
    x_row = x_ptr + b * sxb
    s_row = s_ptr + b * C_IN
    w_base = w_ptr + t * (K * K * C_IN * LDW)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(k_lo, k_hi):  # one flattened (tap × C_in) loop
        tap_l = i // ncb
        c0 = (i - tap_l * ncb) * BLOCK_K
        ta = tap_l // nkx
        tb = tap_l - ta * nkx
        if MODE == 0:
            ky = ta
            kx = tb
            iy = q + (ky - K // 2)
            ix = p + (kx - K // 2)
        elif MODE == 1:
            ky = ta
            kx = tb
            iy = 2 * q + ky
            ix = 2 * p + kx
        else:  # polyphase: output parity (py, px) sees taps ky = py + 2·ta, kx = px + 2·tb
            ky = py + 2 * ta
            kx = px + 2 * tb
            iy = q - ta
            ix = p - tb
        offs_k = c0 + tl.arange(0, BLOCK_K)
        mk = offs_k < C_IN
        ma = mm & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        m2 = ma[:, None] & mk[None, :]
        a = tl.load(x_row[:, None] + (iy * sxy + ix * sxx)[:, None] + offs_k[None, :] * sxc, mask=m2, other=0.0)
        sv = tl.load(s_row[:, None] + offs_k[None, :], mask=m2, other=0.0)
        a = (a.to(tl.float32) * sv.to(tl.float32)).to(w_ptr.dtype.element_ty)
        wt = tl.load(w_base + ((ky * K + kx) * C_IN + offs_k)[:, None] * LDW + offs_n[None, :],
                     mask=mk[:, None] & mw[None, :], other=0.0)
        acc = common.mma(a, wt, acc, PREC)
    if SPLIT:  # fp32 partial tile; the reduction applies d and the epilogue
        ws = ws_ptr + ((sid * tl.num_programs(1) + pz) * WS_ROWS).to(tl.int64) * C_OUT
        tl.store(ws + offs_m[:, None] * C_OUT + offs_n[None, :], acc, mask=mm[:, None] & mn[None, :])
    else:
        if MODE == 2:
            oy = 2 * q + py
            ox = 2 * p + px
        else:
            oy = q
            ox = p
        _finish(acc, b, oy, ox, offs_n, mm, mn, d_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
                C_OUT, sob, soc, soy, sox, snb, snc, sny, snx, DEMOD, NOISE, HAS_BIAS, LRELU, HAS_SKIP, SAVE_PRE)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr, d_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
    C_OUT, H_T, W_T, N_B, N_SPLIT, WS_ROWS,
    sob, soc, soy, sox, snb, snc, sny, snx,
    MODE: tl.constexpr, PHASES: tl.constexpr, TASKS: tl.constexpr, DEMOD: tl.constexpr,
    NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, HAS_SKIP: tl.constexpr,
    SAVE_PRE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Sum the split-K partials in a fixed order, then d and the epilogue."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pz = tl.program_id(2)
    phase = pz % PHASES
    group = pz // PHASES
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    b, q, p, per, py, px = _row_coords(offs_m, phase, group, H_T, W_T, MODE, TASKS)
    if TASKS:
        rows = per
    else:
        rows = per * N_B
    mm = offs_m < rows
    mn = offs_n < C_OUT
    m2 = mm[:, None] & mn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    tile = offs_m[:, None] * C_OUT + offs_n[None, :]
    for s in range(N_SPLIT):
        ws = ws_ptr + ((s * tl.num_programs(2) + pz) * WS_ROWS).to(tl.int64) * C_OUT
        acc += tl.load(ws + tile, mask=m2, other=0.0)
    if MODE == 2:
        oy = 2 * q + py
        ox = 2 * p + px
    else:
        oy = q
        ox = p
    _finish(acc, b, oy, ox, offs_n, mm, mn, d_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
            C_OUT, sob, soc, soy, sox, snb, snc, sny, snx, DEMOD, NOISE, HAS_BIAS, LRELU, HAS_SKIP, SAVE_PRE)


# ----------------------------------------------------------------------------- launcher

def up_blur_pad(k: int) -> tuple[int, int]:
    """(pad0, pad1) of the blur after the stride-2 transposed conv (output 2H)."""
    p = 2 - (k - 1)
    return (p + 1) // 2 + 1, p // 2 + 1


def down_blur_pad(k: int) -> tuple[int, int]:
    """(pad0, pad1) of the blur before the stride-2 conv."""
    p = 2 + (k - 1)
    return (p + 1) // 2, p // 2


def _strides4(t: Optional[torch.Tensor], shape) -> tuple:
    if t is None:
        return (0, 0, 0, 0)
    return tuple(t.expand(*shape).stride())


def conv(xin: torch.Tensor, style: torch.Tensor, w_k: torch.Tensor, d: Optional[torch.Tensor], k: int, mode: int,
         out: torch.Tensor, *, task_ids: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
         bias: Optional[torch.Tensor] = None, lrelu: bool = False, skip: Optional[torch.Tensor] = None,
         pre: Optional[torch.Tensor] = None, config: Optional[tiles.Config] = None, split: Optional[int] = None,
         family: str = "conv") -> torch.Tensor:
    """Launch the implicit-GEMM conv (and its split-K reduction when the heuristic splits K).

    xin [N, C_in, H, W] and out [N, C_out, OH, OW] (for MODE_UP: the transposed-conv size) with any strides
    (channels-last loads and stores as 16-byte vectors); style [N, C_in] contiguous; w_k [T, k·k·C_in, LDW]
    (LDW ≥ C_out, padding columns zero); d [N, C_out] fp32 or None (no demodulation); noise fp32, per pixel
    [N|1, 1, OH, OW] or per channel; bias fp32 [C_out]; skip and pre strided like out. Per-sample task ids
    pick the weight slice. `split` forces a split-K factor (None: the heuristic's)."""
    n, c_in, h, w = xin.shape
    c_out, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    n_t, ldw = w_k.shape[0], w_k.shape[2]
    phases = 4 if mode == MODE_UP else 1
    tasks = task_ids is not None
    groups = n if tasks else 1
    if mode == MODE_UP:
        rows_max = ((oh + 1) // 2) * ((ow + 1) // 2)
        taps_max = ((k + 1) // 2) ** 2
    else:
        rows_max = oh * ow
        taps_max = k * k
    rows_max *= 1 if tasks else n
    noise_mode = 0 if noise is None else (1 if noise.shape[1] == 1 else 2)
    sn = _strides4(noise, (n, c_out, oh, ow))
    so = tuple(out.stride())
    if skip is not None and tuple(skip.stride()) != so:
        raise ValueError(f"conv: skip strides {tuple(skip.stride())} must equal the output's {so}")
    if pre is not None and tuple(pre.stride()) != so:
        raise ValueError(f"conv: pre strides {tuple(pre.stride())} must equal the output's {so}")
    elsize = w_k.element_size()
    problem = tiles.ConvProblem(rows=rows_max, n=c_out, k_steps_of=lambda bk: taps_max * triton.cdiv(c_in, bk),
                                z=phases * groups, elsize=elsize)
    dummy = out
    prec = common.dot_precision(w_k.dtype, xin.device)
    epi = dict(DEMOD=d is not None, NOISE=noise_mode, HAS_BIAS=bias is not None, LRELU=lrelu,
               HAS_SKIP=skip is not None, SAVE_PRE=pre is not None)
    ptrs = (d if d is not None else dummy, out, noise if noise is not None else dummy,
            bias if bias is not None else dummy, skip if skip is not None else dummy, pre if pre is not None else dummy)

    def launch(cfg: tiles.Config, n_split: int) -> None:
        steps = taps_max * triton.cdiv(c_in, cfg.block_k)
        sps = triton.cdiv(steps, n_split)
        n_split = triton.cdiv(steps, sps)
        m_tiles, n_tiles = triton.cdiv(rows_max, cfg.block_m), triton.cdiv(c_out, cfg.block_n)
        ws = None
        if n_split > 1:
            ws = tiles.empty((n_split, phases * groups, rows_max, c_out), device=xin.device, dtype=torch.float32)
        common.launch(
            _conv_kernel, (m_tiles * n_tiles, phases * groups, n_split),
            (xin, style, w_k, ptrs[0], task_ids if tasks else style, *ptrs[1:], ws if ws is not None else dummy,
             c_in, c_out, ldw, h, w, oh, ow, n, m_tiles, n_tiles, sps, rows_max,
             *xin.stride(), *so, *sn),
            dict(K=k, MODE=mode, PHASES=phases, TASKS=tasks, SPLIT=ws is not None, PREC=prec,
                 BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=8,
                 **(dict(epi, DEMOD=False, NOISE=0, HAS_BIAS=False, LRELU=False, HAS_SKIP=False, SAVE_PRE=False)
                    if ws is not None else epi)),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, tag="conv", config=cfg.name,
            tile=f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k}", split=n_split,
            splitk_workspace=0 if ws is None else ws.numel() * 4)
        if ws is not None:
            rb = tiles.REDUCE_BLOCK
            common.launch(
                _splitk_reduce_kernel, (triton.cdiv(rows_max, rb[0]), triton.cdiv(c_out, rb[1]), phases * groups),
                (ws, *ptrs, c_out, oh, ow, n, n_split, rows_max, *so, *sn),
                dict(MODE=mode, PHASES=phases, TASKS=tasks, **epi, BLOCK_M=rb[0], BLOCK_N=rb[1]),
                num_warps=4, num_stages=1, tag="splitk_reduce", tile=f"{rb[0]}x{rb[1]}", split=n_split)

    cfg, n_split = tiles.choose_conv(family, problem, xin.device, config=config, split=split,
                                     key=(n, c_in, c_out, rows_max, k, mode, str(w_k.dtype), tasks), bench=launch)
    launch(cfg, n_split)
    return out


def _conv_out_size(h: int, w: int, k: int, up: bool, down: bool) -> tuple[int, int]:
    if up:
        return 2 * h, 2 * w
    if down:
        p0, p1 = down_blur_pad(k)
        return (h + p0 + p1 - 3 - k) // 2 + 1, (w + p0 + p1 - 3 - k) // 2 + 1
    return h, w


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, operands: Sequence[prologue.Operands],
                     task_ids: Optional[torch.Tensor], scale: float, demodulate: bool, up: bool, down: bool,
                     bias: Optional[torch.Tensor], noise: Optional[torch.Tensor], lrelu: bool,
                     skip: Optional[torch.Tensor], saved: Optional[dict] = None) -> torch.Tensor:
    """Fused forward (no autograd); output channels-last in x's dtype. `operands`: one adapter operand set per
    task (kind code + factor tensors, `prologue.Operands`); with task_ids None exactly one. Launches: the weight
    prologue per task, d once, the conv (+ split-K reduction), and the blur for up/down. No host
    synchronisation. `saved` (a dict, for the fused backward) receives "pre" (the demodulated output before
    noise/bias/activation/skip, x's dtype, channels-last), "w_k", "sq", "d" and, for down, "xb"."""
    n, c_in, h, w = x.shape
    c_out, k = weight.shape[0], weight.shape[2]
    dev, cl = x.device, torch.channels_last
    x = x.contiguous(memory_format=cl)
    style = style.contiguous()
    w_k, sq = prologue.build_weights(weight, operands, scale, common.operand_dtype(x.dtype))
    d = prologue.demod(style, sq, task_ids) if demodulate else None
    noise = None if noise is None else noise.to(torch.float32)
    bias = None if bias is None else bias.to(torch.float32).contiguous()
    oh, ow = _conv_out_size(h, w, k, up, down)
    pre = None
    if saved is not None:
        pre = tiles.empty((n, c_out, oh, ow), device=dev, dtype=x.dtype).contiguous(memory_format=cl)
        saved.update(pre=pre, w_k=w_k, sq=sq, d=d)
    out = tiles.empty((n, c_out, oh, ow), device=dev, dtype=x.dtype).contiguous(memory_format=cl)
    if skip is not None:  # the RGB skip (3 channels) is read in fp32: no unaligned 16-bit loads
        skip = skip.to(torch.float32).contiguous(memory_format=cl)
    if up:  # polyphase transposed conv (demodulated, activation dtype, channels-last), then blur + epilogue
        th, tw = 2 * h + k - 2, 2 * w + k - 2
        tmp = tiles.empty((n, c_out, th, tw), device=dev, dtype=x.dtype).contiguous(memory_format=cl)
        conv(x, style, w_k, d, k, MODE_UP, tmp, task_ids=task_ids)
        return fir.blur(tmp, up_blur_pad(k), 4.0, out, noise=noise, bias=bias, lrelu=lrelu, skip=skip, pre=pre)
    if down:
        p0, p1 = down_blur_pad(k)
        xb = tiles.empty((n, c_in, h + p0 + p1 - 3, w + p0 + p1 - 3), device=dev,
                         dtype=x.dtype).contiguous(memory_format=cl)
        fir.blur(x, (p0, p1), 1.0, xb)
        if saved is not None:
            saved["xb"] = xb
        x = xb
    return conv(x, style, w_k, d, k, MODE_DOWN if down else MODE_PLAIN, out, task_ids=task_ids, noise=noise,
                bias=bias, lrelu=lrelu, skip=skip, pre=pre)

"""FIR blur of StyleGAN2's resampling ([1,3,3,1] ⊗ [1,3,3,1] / 64 · gain) with an optional fused epilogue
(+noise, bias [+ leaky-ReLU·√2], +skip). Used after the polyphase transposed conv (up: the conv's
activation-dtype result is blurred here and the StyledConv epilogue applied) and before the stride-2 conv
(down), and by the backward (the blur's adjoint).

One program = a tile of [BLOCK_P output pixels (flattened over samples and rows), BLOCK_C channels];
tensors are read and written through explicit strides, so channels-last tensors (channel stride 1, which
Triton specialises) give 16-byte vector loads and stores for every one of the 16 taps; any other layout
works too (the backward's NCHW fp32 buffers)."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common, tiles


@triton.jit
def _fir_kernel(
    x_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
    NPIX, C, H, W, OH, OW, PAD_Y, PAD_X, gain,
    sxb, sxc, sxy, sxx, sob, soc, soy, sox, snb, snc, sny, snx,
    NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, HAS_SKIP: tl.constexpr,
    SAVE_PRE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mp = offs_p < NPIX
    mc = offs_c < C
    b = (offs_p // (OH * OW)).to(tl.int64)
    pix = offs_p % (OH * OW)
    oy = pix // OW
    ox = pix % OW
    x_row = x_ptr + b * sxb
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    # taps [1, 3, 3, 1] / 8 per axis (symmetric, so the true-convolution flip is a no-op)
    for i in tl.static_range(4):
        wy = 0.125 if i % 3 == 0 else 0.375
        iy = oy + i - PAD_Y
        my = mp & (iy >= 0) & (iy < H)
        for j in tl.static_range(4):
            wx = 0.125 if j % 3 == 0 else 0.375
            ix = ox + j - PAD_X
            m = my & (ix >= 0) & (ix < W)
            v = tl.load(x_row[:, None] + (iy * sxy + ix * sxx)[:, None] + offs_c[None, :] * sxc,
                        mask=m[:, None] & mc[None, :], other=0.0)
            acc += v.to(tl.float32) * (wy * wx)
    y = acc * gain
    m2 = mp[:, None] & mc[None, :]
    off = b[:, None] * sob + (oy * soy + ox * sox)[:, None] + offs_c[None, :] * soc
    if SAVE_PRE:  # the blurred value before the epilogue, kept for the fused backward
        tl.store(pre_ptr + off, y.to(pre_ptr.dtype.element_ty), mask=m2)
    if NOISE == 1:  # per pixel (fp32), broadcast over channels
        y += tl.load(noise_ptr + b * snb + oy * sny + ox * snx, mask=mp, other=0.0)[:, None]
    if NOISE == 2:
        y += tl.load(noise_ptr + b[:, None] * snb + (oy * sny + ox * snx)[:, None] + offs_c[None, :] * snc,
                     mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)[None, :]
    if LRELU:
        y = common.lrelu(y)
    if HAS_SKIP:
        y += tl.load(skip_ptr + off, mask=m2, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=m2)


def blur(x: torch.Tensor, pad: tuple[int, int], gain: float, out: torch.Tensor, *,
         noise: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, lrelu: bool = False,
         skip: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
         config: Optional[tiles.Config] = None) -> torch.Tensor:
    """out = epilogue(upfirdn2d(x, blur·gain, pad=(p0, p1))); x [N, C, H, W] and out [N, C, OH, OW] with any
    strides. `noise` [N|1, 1|C, OH, OW] (per-pixel noise should be fp32); bias [C]; `skip` and `pre` strided
    like out (`pre` receives the blurred value before the epilogue)."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    so = tuple(out.stride())
    for name, t in (("skip", skip), ("pre", pre)):
        if t is not None and tuple(t.stride()) != so:
            raise ValueError(f"blur: {name} strides {tuple(t.stride())} must equal the output's {so}")
    noise_mode = 0 if noise is None else (1 if noise.shape[1] == 1 else 2)
    sn = tuple(noise.expand(n, c, oh, ow).stride()) if noise is not None else (0, 0, 0, 0)
    npix = n * oh * ow
    cfg = config or tiles.choose("fir", (npix, c), tiles.FIR_CONFIGS,
                                 lambda cf: triton.cdiv(npix, cf.block_m) * triton.cdiv(c, cf.block_n), npix, c,
                                 x.device)
    grid = (triton.cdiv(npix, cfg.block_m), triton.cdiv(c, cfg.block_n))
    common.launch(_fir_kernel, grid, (
        x, out, noise if noise is not None else x, bias if bias is not None else x,
        skip if skip is not None else x, pre if pre is not None else x,
        npix, c, h, w, oh, ow, pad[0], pad[0], float(gain), *x.stride(), *so, *sn), dict(
        NOISE=noise_mode, HAS_BIAS=bias is not None, LRELU=lrelu, HAS_SKIP=skip is not None,
        SAVE_PRE=pre is not None, BLOCK_P=cfg.block_m, BLOCK_C=cfg.block_n),
        num_warps=cfg.num_warps, num_stages=1, tag="blur", config=cfg.name,
        tile=f"{cfg.block_m}x{cfg.block_n}")
    return out

"""FIR blur of StyleGAN2's resampling ([1,3,3,1] ⊗ [1,3,3,1] / 64 · gain) with an optional fused
epilogue (+noise, bias [+ leaky-ReLU·√2], +skip). Used after the polyphase transposed conv (up)
and before the stride-2 conv (down). Layout NCHW; one program = one block of output elements,
flattened over (sample, channel, pixel) so that tiny planes do not waste lanes."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common, tiles

SQRT2 = 1.4142135623730951


@triton.jit
def _fir_kernel(
    x_ptr, out_ptr, noise_ptr, bias_ptr, skip_ptr, pre_ptr,
    TOTAL, C, H, W, OH, OW, PAD_Y, PAD_X, gain,
    sn_b, sn_c, sn_y, sn_x,
    HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, LRELU: tl.constexpr, HAS_SKIP: tl.constexpr,
    SAVE_PRE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # flat over all output elements (planes may be tiny)
    mo = offs < TOTAL
    plane = offs // (OH * OW)
    pix = offs % (OH * OW)
    oy = pix // OW
    ox = pix % OW
    base = x_ptr + plane * (H * W)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    # taps [1, 3, 3, 1] / 8 per axis (symmetric, so the true-convolution flip is a no-op)
    for i in tl.static_range(4):
        wy = 0.125 if i % 3 == 0 else 0.375
        iy = oy + i - PAD_Y
        my = mo & (iy >= 0) & (iy < H)
        for j in tl.static_range(4):
            wx = 0.125 if j % 3 == 0 else 0.375
            ix = ox + j - PAD_X
            m = my & (ix >= 0) & (ix < W)
            v = tl.load(base + iy * W + ix, mask=m, other=0.0).to(tl.float32)
            acc += v * (wy * wx)
    y = acc * gain
    if SAVE_PRE:  # the blurred value before the epilogue (fp32), kept for the fused backward
        tl.store(pre_ptr + offs, y, mask=mo)
    b = plane // C
    c = plane % C
    if HAS_NOISE:
        y += tl.load(noise_ptr + b * sn_b + c * sn_c + oy * sn_y + ox * sn_x, mask=mo, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + c, mask=mo, other=0.0).to(tl.float32)
    if LRELU:
        y = tl.where(y >= 0, y, y * 0.2) * 1.4142135623730951
    if HAS_SKIP:
        y += tl.load(skip_ptr + offs, mask=mo, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mo)


def blur(x: torch.Tensor, pad: tuple[int, int], gain: float, out: torch.Tensor, *,
         noise: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, lrelu: bool = False,
         skip: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
         config: Optional[tiles.Config] = None) -> torch.Tensor:
    """out = epilogue(upfirdn2d(x, blur·gain, pad=(p0, p1))); x [N, C, H, W] contiguous.
    `noise` may broadcast ([N|1, 1|C, OH, OW]); `skip` is [N, C, OH, OW]; `pre` (fp32, like out) also
    receives the blurred value before the epilogue."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    sn = noise.expand(n, c, oh, ow).stride() if noise is not None else (0, 0, 0, 0)
    skip = skip.contiguous() if skip is not None else None
    total = n * c * oh * ow
    cfg = config or tiles.choose("fir", (total,), tiles.FIR_CONFIGS,
                                 lambda cf: triton.cdiv(total, cf.block_m), total, 0, x.device)
    grid = (triton.cdiv(total, cfg.block_m),)
    common.launch(_fir_kernel, grid, (
        x, out, noise if noise is not None else x, bias if bias is not None else x,
        skip if skip is not None else x, pre if pre is not None else x,
        total, c, h, w, oh, ow, pad[0], pad[0], float(gain), *sn), dict(
        HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, LRELU=lrelu, HAS_SKIP=skip is not None,
        SAVE_PRE=pre is not None, BLOCK=cfg.block_m), num_warps=cfg.num_warps, num_stages=1, tag="blur",
        config=cfg.name)
    return out

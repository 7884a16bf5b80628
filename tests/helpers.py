"""Shared test helpers: random adapters of every kind, relative errors, naive references, image folders."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastlora as fl

DT = torch.float64


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN never passes (returns inf)."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def rand_adapter(kind: str, c_out: int, c_in: int, k: int | None, rank: int, act: str = "inner",
                 dtype=DT, device="cpu", requires_grad: bool = False, gen: torch.Generator | None = None):
    """A random (non-identity) adapter of `kind` for a conv (k given) or linear layer (k None)."""
    def r(*s):
        t = torch.randn(*s, dtype=dtype, generator=gen).to(device) * 0.5
        return t.requires_grad_(requires_grad)

    if kind == "lora":
        d_in = c_in * (k * k if k else 1)
        return fl.LoRA(r(d_in, rank), r(c_out, rank), 0.7, None if k else r(c_out))
    if kind == "llora":
        return fl.LLoRA(r(c_in, rank), r(c_out, rank), r(rank, rank, k * k), 0.7, act)
    if kind == "left":
        if k:
            return fl.LeFT.conv(r(c_out, rank), r(rank, rank, k * k), r(c_out, rank), r(k * k, rank), r(c_in, rank),
                                r(c_in, rank), r(k * k, rank), act="inner" if act != "none" else "none")
        return fl.LeFT.linear(r(c_out, rank), r(c_in, rank), r(c_out, rank), r(c_in, rank), r(c_out), r(c_out))
    raise ValueError(kind)


def naive_modconv(x, w_hat, style, demodulate, up, down):
    """Per-sample loop straight from docs/design.md §2 (W′ = Ŵ·s, W′·d, conv / transposed conv + blur / blur + conv)."""
    from fastlora.functional import make_blur_kernel, upfirdn2d

    blur = make_blur_kernel(dtype=x.dtype)
    k = w_hat.shape[-1]
    outs = []
    for b in range(x.shape[0]):
        wb = w_hat[b] if w_hat.dim() == 5 else w_hat
        wm = wb * style[b][None, :, None, None]
        if demodulate:
            wm = wm * torch.rsqrt((wm ** 2).sum((1, 2, 3)) + 1e-8)[:, None, None, None]
        xb = x[b:b + 1]
        if up:
            y = F.conv_transpose2d(xb, wm.transpose(0, 1), stride=2)
            p = 2 - (k - 1)
            y = upfirdn2d(y, blur * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
        elif down:
            p = 2 + (k - 1)
            y = F.conv2d(upfirdn2d(xb, blur, pad=((p + 1) // 2, p // 2)), wm, stride=2)
        else:
            y = F.conv2d(xb, wm, padding=k // 2)
        outs.append(y)
    return torch.cat(outs)


def write_random_images(folder: Path, n: int, seed: int, size: int = 16, shift: int = 0) -> Path:
    """`n` seeded random RGB PNGs (pixel values in [shift, 255]) in `folder`, created if missing."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256 - shift, (size, size, 3), dtype=np.uint8) + shift
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return folder

"""The PyTorch reference of fastlora's ops: pure PyTorch, differentiable to any order.

`fastlora.functional` validates the inputs and runs these on the "torch" backend; the fused Triton path
(`fastlora._triton`) recomputes them for double backward; the kernels' tests compare against them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlora.adapters import Adapter
from kernels.constants import DEMOD_EPS, LRELU_SLOPE, SQRT2  # plain constants, shared with the kernels

AdapterArg = Union[None, Adapter, Sequence[Optional[Adapter]]]


# ----------------------------------------------------------------------------- adapter deltas

def adapted_weight(weight: Tensor, adapter: Optional[Adapter]) -> Tensor:
    """The adapted weight Ŵ (stored units). Built in fp32 (or fp64) and cast back, so
    low-precision layers merge without extra rounding."""
    if adapter is None:
        return weight
    adapter.check(weight)
    build = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    return _cast_adapter(adapter, build).adapted(weight.to(build)).to(weight.dtype)


def adapted_bias(bias: Optional[Tensor], adapter: Optional[Adapter]) -> Optional[Tensor]:
    return bias if adapter is None else adapter.adapted_bias(bias)


def _cast_adapter(adapter: Adapter, dtype: torch.dtype) -> Adapter:
    """The adapter with its tensors in `dtype` (`.to` is a no-op for tensors already in it: gradients flow)."""
    changes = {f.name: getattr(adapter, f.name).to(dtype) for f in dataclasses.fields(adapter)
               if isinstance(getattr(adapter, f.name), Tensor)}
    return dataclasses.replace(adapter, **changes)


def adapter_list(adapter: AdapterArg, task_ids: Optional[Tensor], n: int, device: torch.device,
                 bounds: bool = True) -> list:
    """One adapter per task (None = the base weight): [adapter] without task_ids, else the sequence that
    task_ids [N] indexes, validated (`bounds=False` skips the value check, which syncs with the device)."""
    if task_ids is None:
        if isinstance(adapter, (list, tuple)):
            raise ValueError("a sequence of adapters needs task_ids [N] choosing one per sample")
        return [adapter]
    if not isinstance(adapter, (list, tuple)) or len(adapter) == 0:
        raise ValueError("task_ids needs adapter to be a non-empty sequence (one entry per task, None for the base)")
    check_task_ids(task_ids, n, len(adapter), device, bounds=bounds)
    return list(adapter)


def _stacked_weights(weight: Tensor, adapter: AdapterArg, task_ids: Optional[Tensor], n: int) -> tuple[Tensor, Optional[Tensor]]:
    """One adapted weight, or [T, ...] stacked adapted weights when task_ids picks one per sample."""
    adapters = adapter_list(adapter, task_ids, n, weight.device)
    if task_ids is None:
        return adapted_weight(weight, adapters[0]), None
    return torch.stack([adapted_weight(weight, a) for a in adapters]), task_ids


def check_task_ids(task_ids: Tensor, n: int, n_tasks: int, device: torch.device, bounds: bool = True) -> None:
    """Validate per-sample task indices (the value check syncs; kernels skip it)."""
    if task_ids.dtype not in (torch.int64, torch.int32) or task_ids.shape != (n,):
        raise ValueError(f"task_ids must be an integer tensor of shape [{n}], got {task_ids.dtype} {list(task_ids.shape)}")
    if task_ids.device != device:
        raise ValueError(f"task_ids is on {task_ids.device} but the inputs are on {device}")
    if bounds and n and (int(task_ids.min()) < 0 or int(task_ids.max()) >= n_tasks):
        raise ValueError(f"task_ids must lie in [0, {n_tasks}), got values in "
                         f"[{int(task_ids.min())}, {int(task_ids.max())}]")


# ----------------------------------------------------------------------------- FIR resampling

def make_blur_kernel(taps: Sequence[float] = (1, 3, 3, 1), device=None, dtype=torch.float32) -> Tensor:
    """Separable FIR kernel: the outer product of `taps`, normalised to sum 1.

    Built once per (taps, device, dtype) and shared (do not modify it in place): a CUDA graph captures no
    host-to-device copy, so a forward captured after one eager call finds it on the device already."""
    return _blur_kernel(tuple(float(t) for t in taps), torch.device("cpu" if device is None else device), dtype)


@functools.lru_cache(maxsize=None)
def _blur_kernel(taps: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor, also when first asked for under either
        k = torch.tensor(taps, dtype=torch.float64)
        k = torch.outer(k, k)
        return (k / k.sum()).to(device=device, dtype=dtype)


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, FIR-filter (true convolution), downsample.

    x [N, C, H, W]; kernel [kh, kw]; pad (p0, p1) for both axes or (x0, x1, y0, y1);
    negative pads crop. Output height: (H·up + y0 + y1 − kh) // down + 1.
    """
    if x.dim() != 4 or kernel.dim() != 2:
        raise ValueError(f"upfirdn2d expects x [N, C, H, W] and kernel [kh, kw], got {list(x.shape)} and {list(kernel.shape)}")
    px0, px1, py0, py1 = (pad[0], pad[1], pad[0], pad[1]) if len(pad) == 2 else tuple(pad)
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)))
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, k, groups=c)
    return x[:, :, ::down, ::down]


def up_blur_pad(k: int, taps: int = 4, factor: int = 2) -> tuple[int, int]:
    """(pad0, pad1) of the blur after a stride-2 transposed conv with a k×k kernel (output 2H)."""
    p = (taps - factor) - (k - 1)
    return (p + 1) // 2 + factor - 1, p // 2 + 1


def down_blur_pad(k: int, taps: int = 4, factor: int = 2) -> tuple[int, int]:
    """(pad0, pad1) of the blur before a stride-2 k×k conv (output H/2)."""
    p = (taps - factor) + (k - 1)
    return (p + 1) // 2, p // 2


def blur_up_after_transpose(y: Tensor, k: int, blur: Tensor) -> Tensor:
    """The blur that follows a stride-2 transposed conv in StyleGAN2's upsampling conv (gain 4)."""
    return upfirdn2d(y, blur * 4, pad=up_blur_pad(k))


def blur_before_down(x: Tensor, k: int, blur: Tensor) -> Tensor:
    """The blur that precedes a stride-2 conv in StyleGAN2's downsampling conv."""
    return upfirdn2d(x, blur, pad=down_blur_pad(k))


# ----------------------------------------------------------------------------- activation

def fused_leaky_relu(x: Tensor, bias: Optional[Tensor] = None, negative_slope: float = LRELU_SLOPE,
                     scale: float = SQRT2) -> Tensor:
    """leaky_relu(x + bias)·scale, bias broadcast along dim 1 (StyleGAN2's bias_act)."""
    if bias is not None:
        if bias.dim() != 1 or x.dim() < 2 or bias.shape[0] != x.shape[1]:
            raise ValueError(f"fused_leaky_relu: bias must be [{x.shape[1] if x.dim() > 1 else '?'}], got {list(bias.shape)}")
        x = x + bias.reshape(1, -1, *([1] * (x.dim() - 2)))
    return F.leaky_relu(x, negative_slope) * scale


# ----------------------------------------------------------------------------- modulated conv

def _epilogue(y: Tensor, bias: Optional[Tensor], noise: Optional[Tensor], activation: Optional[str],
              skip: Optional[Tensor]) -> Tensor:
    if noise is not None:
        y = y + noise
    if activation == "lrelu":
        y = fused_leaky_relu(y, bias)
    elif bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    if skip is not None:
        y = y + skip
    return y


def modconv_output_size(h: int, w: int, k: int, up: bool, down: bool) -> tuple[int, int]:
    if up:
        return 2 * h, 2 * w
    if down:
        p0, p1 = down_blur_pad(k)
        return (h + p0 + p1 - 4 - k + 1) // 2 + 1, (w + p0 + p1 - 4 - k + 1) // 2 + 1
    return h, w


def modulated_conv2d(x: Tensor, weight: Tensor, style: Tensor, *, adapter: AdapterArg = None,
                     task_ids: Optional[Tensor] = None, scale: float = 1.0, demodulate: bool = True,
                     up: bool = False, down: bool = False, bias: Optional[Tensor] = None,
                     noise: Optional[Tensor] = None, activation: Optional[str] = None,
                     skip: Optional[Tensor] = None, form: str = "shared") -> Tensor:
    """`fastlora.functional.modulated_conv2d` in PyTorch (inputs already validated there): the shared-weight
    form, or `form="grouped"`, the published per-sample weights (same result)."""
    w_hat, task_ids = _stacked_weights(weight, adapter, task_ids, x.shape[0])
    w_hat = w_hat * scale
    impl = _modconv_shared if form == "shared" else _modconv_grouped
    y = impl(x, w_hat, style, task_ids, demodulate, up, down)
    return _epilogue(y, bias, noise, activation, skip)


def _conv_resampled(x: Tensor, w: Tensor, up: bool, down: bool, groups: int = 1) -> Tensor:
    """conv with padding k//2, or StyleGAN2's up (transposed conv + blur) / down (blur + stride-2)."""
    k = w.shape[-1]
    blur = make_blur_kernel(device=x.device, dtype=x.dtype)
    if up:
        c_out_g, c_in_g = w.shape[0] // groups, w.shape[1]
        wt = w.reshape(groups, c_out_g, c_in_g, k, k).transpose(1, 2).reshape(groups * c_in_g, c_out_g, k, k)
        y = F.conv_transpose2d(x, wt, stride=2, padding=0, groups=groups)
        return blur_up_after_transpose(y, k, blur)
    if down:
        return F.conv2d(blur_before_down(x, k, blur), w, stride=2, padding=0, groups=groups)
    return F.conv2d(x, w, padding=k // 2, groups=groups)


def _modconv_shared(x, w_hat, style, task_ids, demodulate, up, down) -> Tensor:
    """Shared-weight form: y = d ⊙ conv(x ⊙ s, Ŵ); per-sample tasks via one wide conv and a gather."""
    n = x.shape[0]
    xs = x * style[:, :, None, None]
    if task_ids is None:
        y = _conv_resampled(xs, w_hat, up, down)
        if demodulate:
            d = torch.rsqrt(style.square() @ w_hat.square().sum((2, 3)).transpose(0, 1) + DEMOD_EPS)
            y = y * d[:, :, None, None]
        return y
    t, c_out = w_hat.shape[:2]
    y = _conv_resampled(xs, w_hat.reshape(t * c_out, *w_hat.shape[2:]), up, down)
    y = y.reshape(n, t, c_out, *y.shape[2:])[torch.arange(n, device=x.device), task_ids]
    if demodulate:
        sq = w_hat.square().sum((3, 4))[task_ids]  # [N, C_out, C_in]
        d = torch.rsqrt(torch.einsum("nc,noc->no", style.square(), sq) + DEMOD_EPS)
        y = y * d[:, :, None, None]
    return y


def _modconv_grouped(x, w_hat, style, task_ids, demodulate, up, down) -> Tensor:
    """The published form: one modulated (and demodulated) weight per sample, grouped conv."""
    n, c_in, h, w = x.shape
    w_n = w_hat[task_ids] if task_ids is not None else w_hat.unsqueeze(0).expand(n, *w_hat.shape)
    w_n = w_n * style[:, None, :, None, None]
    if demodulate:
        w_n = w_n * torch.rsqrt(w_n.square().sum((2, 3, 4)) + DEMOD_EPS)[:, :, None, None, None]
    c_out, k = w_n.shape[1], w_n.shape[-1]
    y = _conv_resampled(x.reshape(1, n * c_in, h, w), w_n.reshape(n * c_out, c_in, k, k), up, down, groups=n)
    return y.reshape(n, c_out, *y.shape[2:])


# ----------------------------------------------------------------------------- linear and plain conv

def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, adapter: AdapterArg = None,
           task_ids: Optional[Tensor] = None, scale: float = 1.0, bias_scale: float = 1.0,
           activation: Optional[str] = None) -> Tensor:
    """`fastlora.functional.linear` in PyTorch (inputs already validated there)."""
    w_hat, task_ids = _stacked_weights(weight, adapter, task_ids, x.shape[0])
    if task_ids is None:
        b = adapted_bias(bias, adapter)
        y = x @ (w_hat * scale).transpose(0, 1)
    else:
        biases = [adapted_bias(bias, a) for a in adapter]
        b = None if all(v is None for v in biases) else torch.stack(
            [v if v is not None else torch.zeros_like(w_hat[0, :, 0]) for v in biases])[task_ids]
        y = torch.einsum("ni,noi->no", x, (w_hat * scale)[task_ids])
    if b is not None:
        b = b * bias_scale
    if activation == "lrelu":
        if b is not None and b.dim() == 2:
            return fused_leaky_relu(y + b)
        return fused_leaky_relu(y, b)
    return y if b is None else y + b


def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, adapter: Optional[Adapter] = None,
           scale: float = 1.0, down: bool = False, padding: Optional[int] = None,
           activation: Optional[str] = None) -> Tensor:
    """Equalised-LR conv (discriminator layers) with an adapter: conv(x, scale·Ŵ) + b̂;
    `down` blurs then convolves with stride 2. Reference backend only."""
    if x.dim() != 4 or weight.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv2d: expected x [N, C_in, H, W] and weight [C_out, C_in, k, k] with matching C_in, "
                         f"got x {list(x.shape)}, weight {list(weight.shape)}")
    w_hat = adapted_weight(weight, adapter) * scale
    b = adapted_bias(bias, adapter)
    k = weight.shape[-1]
    if down:
        y = _conv_resampled(x, w_hat, False, True)
    else:
        y = F.conv2d(x, w_hat, padding=k // 2 if padding is None else padding)
    if activation == "lrelu":
        return fused_leaky_relu(y, b)
    return y if b is None else y + b.reshape(1, -1, 1, 1)

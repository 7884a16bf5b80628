"""Bridge between `fastlora.functional` and the Triton kernels in `kernels/`.

`modulated_conv2d` and `linear` are called by the functional ops when the backend resolves to
"triton" (after the functional wrappers validated shapes). Forward runs the fused kernels.
When autograd needs gradients, the fused forward runs inside an autograd Function
(`fastlora._triton_autograd`): first-order backward runs the fused backward kernels; under
create_graph (R1, path length) the backward recomputes the PyTorch reference on the saved inputs
themselves, so double backward reaches every input with exact second-order gradients.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from fastlora._operands import conv_operands, linear_biases, linear_operands
from fastlora._triton_autograd import LinearFn, ModConvFn, OpSpec
from fastlora.adapters import LeFT, LLoRA, LoRA
from fastlora.reference import adapter_list
from fastlora.reference import linear as reference_linear
from fastlora.reference import modulated_conv2d as reference_modconv
from kernels import linear as klinear
from kernels import modconv

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- argument handling

def _check_dtype(op: str, x: Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{op}: backend='triton' supports float32, float16 and bfloat16 inputs, got {x.dtype} "
                         "(use backend='torch' for float64)")


def _flatten(adapters: Sequence) -> Tuple[List[Tensor], Callable[[Sequence[Tensor]], List], List[tuple]]:
    """All adapter tensors in one list, a function rebuilding the adapters from such a list, and the
    (task index, field name) of each flat tensor."""
    layout = []
    flat: List[Tensor] = []
    names_flat: List[tuple] = []
    for i, a in enumerate(adapters):
        if a is None:
            layout.append(None)
            continue
        names = [f.name for f in dataclasses.fields(a) if isinstance(getattr(a, f.name), Tensor)]
        layout.append((a, names))
        flat.extend(getattr(a, nm) for nm in names)
        names_flat.extend((i, nm) for nm in names)

    def rebuild(tensors: Sequence[Tensor]) -> List:
        out, i = [], 0
        for entry in layout:
            if entry is None:
                out.append(None)
                continue
            a, names = entry
            out.append(dataclasses.replace(a, **dict(zip(names, tensors[i:i + len(names)]))))
            i += len(names)
        return out

    return flat, rebuild, names_flat


def _needs_grad(tensors: List[Optional[Tensor]]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------- ops

def modulated_conv2d(x: Tensor, weight: Tensor, style: Tensor, *, adapter=None, task_ids: Optional[Tensor] = None,
                     scale: float = 1.0, demodulate: bool = True, up: bool = False, down: bool = False,
                     bias: Optional[Tensor] = None, noise: Optional[Tensor] = None,
                     activation: Optional[str] = None, skip: Optional[Tensor] = None) -> Tensor:
    """Fused modulated conv (see `fastlora.functional.modulated_conv2d`)."""
    _check_dtype("modulated_conv2d", x)
    adapters = adapter_list(adapter, task_ids, x.shape[0], x.device, bounds=False)
    for a in adapters:
        if a is not None:
            a.check(weight)
            if isinstance(a, LeFT) and not a.is_conv:
                raise ValueError("modulated_conv2d: a linear LeFT adapter does not apply to a conv weight")
    flat, rebuild, layout = _flatten(adapters)
    head = [x, weight, style, bias, noise, skip]

    def fused(ts, saved=None):
        x_, w_, s_, b_, n_, k_ = ts[:6]
        ops = [conv_operands(a) for a in rebuild(ts[6:])]
        return modconv.modulated_conv2d(x_, w_, s_, ops, task_ids, scale, demodulate, up, down, b_, n_,
                                        activation == "lrelu", k_, saved=saved)

    def reference(ts):
        x_, w_, s_, b_, n_, k_ = ts[:6]
        ads = rebuild(ts[6:])
        return reference_modconv(x_, w_, s_, adapter=ads[0] if task_ids is None else ads, task_ids=task_ids,
                                 scale=scale, demodulate=demodulate, up=up, down=down, bias=b_, noise=n_,
                                 activation=activation, skip=k_)

    tensors = head + flat
    if not _needs_grad(tensors):
        with torch.no_grad():
            return fused(tensors)
    spec = OpSpec(6, rebuild, layout, fused, reference, task_ids=task_ids, scale=float(scale),
                  demodulate=demodulate, up=up, down=down, activation=activation)
    return ModConvFn.apply(spec, *tensors)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, adapter=None,
           task_ids: Optional[Tensor] = None, scale: float = 1.0, bias_scale: float = 1.0,
           activation: Optional[str] = None) -> Tensor:
    """Fused linear + low-rank adapter (see `fastlora.functional.linear`)."""
    _check_dtype("linear", x)
    adapters = adapter_list(adapter, task_ids, x.shape[0], x.device, bounds=False)
    for a in adapters:
        if a is not None:
            if isinstance(a, LLoRA) or (isinstance(a, LeFT) and a.is_conv):
                raise ValueError(f"linear: a {type(a).__name__} conv adapter does not apply to a linear layer")
            a.check(weight)
    flat, rebuild, layout = _flatten(adapters)
    head = [x, weight, bias]

    def fused(ts):
        ads = rebuild(ts[3:])
        ui, uo, ai, ao, alpha = linear_operands(ads, ts[1].shape[0], ts[1].shape[1], ts[0].device)
        return klinear.linear(ts[0], ts[1], linear_biases(ts[2], ads, ts[1].shape[0]), ui, uo, ai, ao, alpha,
                              task_ids, len(ads), scale, bias_scale, activation == "lrelu")

    def reference(ts):
        ads = rebuild(ts[3:])
        return reference_linear(ts[0], ts[1], ts[2], adapter=ads[0] if task_ids is None else ads,
                                task_ids=task_ids, scale=scale, bias_scale=bias_scale, activation=activation)

    tensors = head + flat
    if not _needs_grad(tensors):
        with torch.no_grad():
            return fused(tensors)
    spec = OpSpec(3, rebuild, layout, fused, reference, task_ids=task_ids, scale=float(scale),
                  bias_scale=float(bias_scale), activation=activation)
    return LinearFn.apply(spec, *tensors)


__all__ = ["modulated_conv2d", "linear", "LoRA", "LLoRA", "LeFT"]

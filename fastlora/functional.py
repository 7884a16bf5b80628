"""Functional ops of fastlora: the StyleGAN2 layers with adapters, validated and dispatched.

`modulated_conv2d` and `linear` check their inputs, then run the PyTorch reference (`fastlora.reference`,
the "torch" backend, differentiable to any order) or, when the backend resolves to "triton" (see
`fastlora.backend`), the fused Triton kernels (`fastlora._triton`). The other ops are the reference's own.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastlora import reference
from fastlora.backend import resolve_backend
from fastlora.deltas import left_conv_weight, left_linear_weight, llora_delta, lora_delta  # noqa: F401 (API)
from fastlora.reference import (AdapterArg, adapted_bias, adapted_weight, blur_before_down,  # noqa: F401 (API)
                                blur_up_after_transpose, check_task_ids, conv2d, down_blur_pad, fused_leaky_relu,
                                make_blur_kernel, modconv_output_size, up_blur_pad, upfirdn2d)
from kernels.constants import DEMOD_EPS, LRELU_SLOPE, SQRT2  # noqa: F401 (API)

FORMS = ("shared", "grouped")
ACTIVATIONS = (None, "lrelu")


# ----------------------------------------------------------------------------- input checks

def _check_modconv(x: Tensor, weight: Tensor, style: Tensor, up: bool, down: bool, form: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"modulated_conv2d: x must be [N, C_in, H, W], got {list(x.shape)}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"modulated_conv2d: weight must be [C_out, C_in, k, k] with an odd k (1, 3, ...: the "
                         f"output keeps the input's size), got {list(weight.shape)}")
    n, c_in = x.shape[:2]
    if weight.shape[1] != c_in:
        raise ValueError(f"modulated_conv2d: x has {c_in} channels but weight expects C_in={weight.shape[1]}")
    if style.shape != (n, c_in):
        raise ValueError(f"modulated_conv2d: style must be [N, C_in] = [{n}, {c_in}], got {list(style.shape)}")
    for name, t in (("weight", weight), ("style", style)):
        if t.device != x.device:
            raise ValueError(f"modulated_conv2d: {name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype:
            raise ValueError(f"modulated_conv2d: {name} is {t.dtype} but x is {x.dtype}")
    if not x.is_floating_point():
        raise ValueError(f"modulated_conv2d: x must be floating point, got {x.dtype}")
    if up and down:
        raise ValueError("modulated_conv2d: up and down cannot both be set")
    if form not in FORMS:
        raise ValueError(f"modulated_conv2d: form must be one of {FORMS}, got {form!r}")
    check_finite_inputs("modulated_conv2d", x=x, style=style, weight=weight)


class NonFiniteInput(ValueError):
    """An op was given NaN or infinite values (checked on CPU tensors only: see `check_finite_inputs`)."""


def check_finite_inputs(op: str, **tensors: Optional[Tensor]) -> None:
    """Raise NonFiniteInput when an input holds NaN or infinity. Checked for CPU tensors, where one pass over
    the input is cheap next to the op; skipped on GPUs (the check would stall the stream with a host sync;
    a NaN input there gives NaN outputs) and while tracing, compiling or exporting."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return
    for name, t in tensors.items():
        if t is None or t.device.type != "cpu" or not t.is_floating_point():
            continue
        # one reduction (a NaN or infinity makes the sum non-finite); the element-wise test only confirms,
        # for the rare finite tensor whose sum overflows
        if not bool(torch.isfinite(t.detach().sum())) and not bool(torch.isfinite(t).all()):
            raise NonFiniteInput(f"{op}: {name} holds NaN or infinite values")


def _check_epilogue(y_shape: tuple, bias, noise, activation, skip) -> None:
    n, c, h, w = y_shape
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if bias is not None and bias.shape != (c,):
        raise ValueError(f"bias must be [{c}], got {list(bias.shape)}")
    if noise is not None and (noise.dim() != 4 or noise.shape[1] not in (1, c) or noise.shape[0] not in (1, n)
                              or noise.shape[2:] != (h, w)):
        raise ValueError(f"noise must broadcast to the output [{n}, {c}, {h}, {w}] as [N|1, 1|C, {h}, {w}], "
                         f"got {list(noise.shape)}")
    if skip is not None and skip.shape != (n, c, h, w):
        raise ValueError(f"skip must be [{n}, {c}, {h}, {w}], got {list(skip.shape)}")


# ----------------------------------------------------------------------------- ops

def modulated_conv2d(x: Tensor, weight: Tensor, style: Tensor, *, adapter: AdapterArg = None,
                     task_ids: Optional[Tensor] = None, scale: float = 1.0, demodulate: bool = True,
                     up: bool = False, down: bool = False, bias: Optional[Tensor] = None,
                     noise: Optional[Tensor] = None, activation: Optional[str] = None,
                     skip: Optional[Tensor] = None, backend: str = "auto", form: str = "shared") -> Tensor:
    """StyleGAN2 modulated convolution with the kernel scale·(weight + ΔW) (docs/design.md §2).

    x [N, C_in, H, W], weight [C_out, C_in, k, k] (raw stored weight), style [N, C_in].
    Padding k//2; `up`: stride-2 transposed conv then the [1,3,3,1] blur (2H);
    `down`: blur then stride-2 conv (H/2). `adapter`: one adapter, or a sequence of
    adapters (None = base) with `task_ids` [N] choosing one per sample.
    Optional epilogue, in StyledConv/ToRGB order: + noise, bias (+ leaky-ReLU·√2 when
    activation="lrelu"), + skip. `form` ("shared" or "grouped", the published per-sample
    weights) only affects the torch backend; both give the same result.
    """
    _check_modconv(x, weight, style, up, down, form)
    oh, ow = modconv_output_size(x.shape[2], x.shape[3], weight.shape[2], up, down)
    _check_epilogue((x.shape[0], weight.shape[0], oh, ow), bias, noise, activation, skip)
    chosen = resolve_backend(backend, x, weight, style)
    if chosen == "triton":
        from fastlora import _triton

        return _triton.modulated_conv2d(x, weight, style, adapter=adapter, task_ids=task_ids, scale=scale,
                                        demodulate=demodulate, up=up, down=down, bias=bias, noise=noise,
                                        activation=activation, skip=skip)
    return reference.modulated_conv2d(x, weight, style, adapter=adapter, task_ids=task_ids, scale=scale,
                                      demodulate=demodulate, up=up, down=down, bias=bias, noise=noise,
                                      activation=activation, skip=skip, form=form)


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, adapter: AdapterArg = None,
           task_ids: Optional[Tensor] = None, scale: float = 1.0, bias_scale: float = 1.0,
           activation: Optional[str] = None, backend: str = "auto") -> Tensor:
    """Equalised-LR linear layer with an adapter: y = x·(scale·Ŵ)ᵀ + bias_scale·b̂,
    then leaky-ReLU·√2 when activation="lrelu". x [N, d_in], weight [d_out, d_in]."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear: expected x [N, {weight.shape[-1] if weight.dim() == 2 else 'd_in'}] and weight "
                         f"[d_out, d_in], got x {list(x.shape)}, weight {list(weight.shape)}")
    if weight.device != x.device or weight.dtype != x.dtype:
        raise ValueError(f"linear: weight is {weight.dtype} on {weight.device} but x is {x.dtype} on {x.device}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias must be [{weight.shape[0]}], got {list(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_finite_inputs("linear", x=x, weight=weight)
    chosen = resolve_backend(backend, x, weight)
    if chosen == "triton":
        from fastlora import _triton

        return _triton.linear(x, weight, bias, adapter=adapter, task_ids=task_ids, scale=scale,
                              bias_scale=bias_scale, activation=activation)
    return reference.linear(x, weight, bias, adapter=adapter, task_ids=task_ids, scale=scale,
                            bias_scale=bias_scale, activation=activation)

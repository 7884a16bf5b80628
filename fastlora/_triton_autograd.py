"""Autograd Functions of the fused Triton ops.

First-order backward runs the fused backward kernels (`kernels/backward_conv.py`,
`kernels/backward_linear.py`), orchestrated by `fastlora._triton_backward`. Under `create_graph=True` (R1, path length: the backward itself
must be differentiable) the backward recomputes the torch reference on the saved inputs
themselves and differentiates it with the graph kept, so second-order gradients are exact; this
routing is automatic (`torch.is_grad_enabled()` inside `backward` is True exactly then).

Deterministic mode (`set_deterministic(True)`, env `FASTLORA_DETERMINISTIC=1`, or
`torch.use_deterministic_algorithms(True)`): reductions across programs use per-program partial
buffers summed in a fixed order instead of atomics, so repeated runs are bit-identical.
The switch lives in `fastlora.backend` (importable without Triton).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

from fastlora._operands import conv_operands
from fastlora._triton_backward import linear_backward, modulated_conv2d_backward
from fastlora.backend import deterministic

def reference_grads(reference: Callable, saved: Sequence[Optional[Tensor]], need: Sequence[bool],
                    grad: Tensor) -> List[Optional[Tensor]]:
    """Gradients by recomputing the torch reference. With grad mode on (create_graph) the recompute runs on the
    saved inputs themselves so the result stays differentiable w.r.t. the real inputs (double backward)."""
    create = torch.is_grad_enabled()
    if create:
        inputs = list(saved)
    else:
        inputs = [t.detach().requires_grad_(nd) if t is not None else None for t, nd in zip(saved, need)]
    idx = [i for i, nd in enumerate(need) if nd and inputs[i] is not None]
    with torch.enable_grad():
        y = reference(inputs)
    grads = torch.autograd.grad(y, [inputs[i] for i in idx], grad, create_graph=create, allow_unused=True)
    out: List[Optional[Tensor]] = [None] * len(saved)
    for i, g in zip(idx, grads):
        out[i] = g if g is not None else torch.zeros_like(saved[i])
    return out


def _cast(g: Optional[Tensor], like: Optional[Tensor]) -> Optional[Tensor]:
    if g is None or like is None:
        return None
    return g.to(like.dtype).reshape(like.shape)


class OpSpec:
    """Non-tensor arguments of one fused call: how to run the fused op and the reference, how to rebuild
    adapters from the flat tensor list, and the flat layout (adapter index and field name per tensor)."""

    def __init__(self, n_head: int, rebuild: Callable, layout: List[tuple], fused: Callable, reference: Callable,
                 **kw) -> None:
        self.n_head, self.rebuild, self.layout, self.fused, self.reference = n_head, rebuild, layout, fused, reference
        self.__dict__.update(kw)


def _adapter_need(spec: OpSpec, need: Sequence[bool], n_tasks: int) -> List[bool]:
    flags = [False] * n_tasks
    for (task, _), nd in zip(spec.layout, need[spec.n_head:]):
        flags[task] = flags[task] or bool(nd)
    return flags


def _scatter_adapter_grads(spec: OpSpec, tensors: Sequence[Optional[Tensor]], need: Sequence[bool],
                           per_task: Sequence[Optional[dict]]) -> List[Optional[Tensor]]:
    out: List[Optional[Tensor]] = []
    for (task, name), t, nd in zip(spec.layout, tensors[spec.n_head:], need[spec.n_head:]):
        if not nd:
            out.append(None)
            continue
        g = (per_task[task] or {}).get(name)
        out.append(_cast(g, t) if g is not None else torch.zeros_like(t))
    return out


class ModConvFn(torch.autograd.Function):
    """Fused modulated conv; fused first-order backward, reference recompute under create_graph."""

    @staticmethod
    def forward(ctx, spec: OpSpec, *tensors):  # type: ignore[override]
        saved: dict = {}
        out = spec.fused(tensors, saved)
        ctx.spec = spec
        ctx.save_for_backward(*tensors, saved["pre"], saved.get("xb"))
        return out

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        spec: OpSpec = ctx.spec
        saved = list(ctx.saved_tensors)
        tensors, pre, xb = saved[:-2], saved[-2], saved[-1]
        need = list(ctx.needs_input_grad[1:])
        if torch.is_grad_enabled():  # create_graph: differentiable recompute through the reference
            return (None, *reference_grads(spec.reference, tensors, need, gy))
        x, w, s, b, nz, sk = tensors[:6]
        adapters = spec.rebuild(tensors[6:])
        flags = dict(x=need[0], weight=need[1], style=need[2], bias=need[3], noise=need[4], skip=need[5],
                     adapters=_adapter_need(spec, need, len(adapters)))
        with torch.no_grad():
            g = modulated_conv2d_backward(
                gy, x, w, s, adapters, [conv_operands(a) for a in adapters], spec.task_ids, spec.scale, spec.demodulate, spec.up, spec.down, b, nz,
                spec.activation, pre, xb, flags, deterministic())
            head = [_cast(g[key], t) if nd else None
                    for key, t, nd in zip(("x", "weight", "style", "bias", "noise", "skip"), tensors[:6], need[:6])]
            rest = _scatter_adapter_grads(spec, tensors, need, g["adapters"])
        return (None, *head, *rest)


class LinearFn(torch.autograd.Function):
    """Fused linear + adapter; fused first-order backward, reference recompute under create_graph."""

    @staticmethod
    def forward(ctx, spec: OpSpec, *tensors):  # type: ignore[override]
        ctx.spec = spec
        out = spec.fused(tensors)
        ctx.save_for_backward(*tensors, out)  # the output carries the leaky-ReLU mask: sign(y) = sign(z)
        return out

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        spec: OpSpec = ctx.spec
        saved = list(ctx.saved_tensors)
        tensors, y = saved[:-1], saved[-1]
        need = list(ctx.needs_input_grad[1:])
        if torch.is_grad_enabled():
            return (None, *reference_grads(spec.reference, tensors, need, gy))
        x, w, b = tensors[:3]
        adapters = spec.rebuild(tensors[3:])
        flags = dict(x=need[0], weight=need[1], bias=need[2], adapters=_adapter_need(spec, need, len(adapters)))
        with torch.no_grad():
            g = linear_backward(gy, x, y, w, b, adapters, spec.task_ids, spec.scale, spec.bias_scale,
                                                spec.activation, flags, deterministic())
            head = [_cast(g[key], t) if nd else None for key, t, nd in zip(("x", "weight", "bias"), tensors[:3],
                                                                            need[:3])]
            rest = _scatter_adapter_grads(spec, tensors, need, g["adapters"])
        return (None, *head, *rest)

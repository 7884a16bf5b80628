"""The methods the layer benchmark compares, each computing one StyleGAN2 modulated conv with an adapter.

Every method is a factory `build(case, problem, device) -> Callable[[Inputs], Tensor]`: it may
precompute per-case state (a merged weight, a compiled function) and returns the function the
harness times in forward, backward and forward+backward modes. `grads` names the tensors a
method differentiates (the base weight is frozen everywhere):

* base       — the bare conv with the base weight (transposed conv + blur for up): the floor.
               No modulation, adapter or epilogue; backward gives dx only.
* merged     — the whole layer (x·s, one conv with Ŵ = W + ΔW, ·d, epilogue) with Ŵ and its
               demodulation sums precomputed: the inference limit. Backward: dx and dstyle.
* peft       — unfused PEFT-style LoRA: base conv + a low-rank bypass added to the conv output.
               LLoRA act none/inner: 1×1 conv C_in→r (A) then k×k conv r→C_out (N = φ(B·B_inst)),
               exact because ΔW is then rank ≤ r in C_in; plain LoRA: k×k conv C_in→r then 1×1
               r→C_out (PEFT's Conv2d). Demodulation needs Σ_taps Ŵ², so ΔW is built each call.
               Not applicable to act "both" (the outer ReLU leaves no bypass form).
* published  — the published CoLoR-GAN path: ΔW built each call, per-sample modulated weights,
               grouped conv (fastlora torch backend, form="grouped").
* shared     — the shared-weight PyTorch path (NVIDIA's non-fused modconv with ΔW built in torch):
               fastlora torch backend, form="shared".
* compile-published / compile-shared — torch.compile of the two (max-autotune-no-cudagraphs on CUDA).
* ours / ours-heuristic — fastlora backend="triton" (fused kernels; CUDA only), with tile
               autotuning on, and with the built-in tile heuristic only.
* ours-graph — ours-heuristic's forward captured in a CUDA graph and replayed (forward mode only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.cases import Case
from fastlora import LLoRA, LoRA
from fastlora import functional as FL

ACT_SETTINGS = ("both", "inner", "none", "lora")
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NotApplicable(Exception):
    """The method does not apply to this case (recorded with the reason, not an error)."""


@dataclass
class Inputs:
    """One input set of a case: activations, style, frozen weight, adapter tensors, epilogue operands."""

    x: Tensor
    style: Tensor
    weight: Tensor
    adapter_tensors: List[Tensor]
    bias: Tensor
    noise: Optional[Tensor]
    skip: Optional[Tensor]
    act: str
    alpha: float
    scale: float

    def adapter(self, tensors: Optional[Sequence[Tensor]] = None):
        t = list(tensors) if tensors is not None else self.adapter_tensors
        if self.act == "lora":
            return LoRA(t[0], t[1], alpha=self.alpha)
        return LLoRA(t[0], t[1], t[2], alpha=self.alpha, act=self.act)

    def grad_tensors(self, which: str) -> List[Tensor]:
        if which == "x":
            return [self.x]
        if which == "xs":
            return [self.x, self.style]
        return [self.x, self.style, *self.adapter_tensors]

    def to(self, device: torch.device, dtype: torch.dtype) -> "Inputs":
        def mv(t):
            return None if t is None else t.detach().to(device, dtype)

        return Inputs(mv(self.x), mv(self.style), mv(self.weight), [mv(t) for t in self.adapter_tensors],
                      mv(self.bias), mv(self.noise), mv(self.skip), self.act, self.alpha, self.scale)

    def requires_grad_(self, which: str) -> "Inputs":
        for t in self.grad_tensors(which):
            t.requires_grad_(True)
        return self

    def nbytes(self) -> int:
        ts = [self.x, self.style, *self.adapter_tensors, self.noise, self.skip]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


def make_inputs(case: Case, batch: int, rank: int, act: str, gen: torch.Generator,
                memory_format: Optional[torch.memory_format] = None) -> Inputs:
    """Random (never zero) fp32 inputs on the generator's device (a CUDA generator draws them on the GPU,
    without host work). Adapter tensors are scaled so that ΔW is a sizeable fraction of W (a zero or tiny
    ΔW would hide adapter errors). `memory_format` (e.g. torch.channels_last) lays out x and skip."""
    if act not in ACT_SETTINGS:
        raise ValueError(f"act must be one of {ACT_SETTINGS}, got {act!r}")
    k, c_in, c_out = case.k, case.c_in, case.c_out

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, device=gen.device)

    x = randn(batch, c_in, case.in_res, case.in_res)
    weight = randn(c_out, c_in, k, k)
    style = randn(batch, c_in) * 0.5 + 1.0
    if act == "lora":
        ad = [randn(c_in * k * k, rank) / math.sqrt(rank), randn(c_out, rank) * 0.5]
    else:
        ad = [randn(c_in, rank) / math.sqrt(rank), randn(c_out, rank), randn(rank, rank, k * k) * 0.5 / math.sqrt(rank)]
    bias = randn(c_out) * 0.1
    noise = None if case.torgb else randn(batch, 1, case.res, case.res) * 0.1
    skip = randn(batch, c_out, case.res, case.res) if case.torgb else None
    if memory_format is not None:
        x = x.contiguous(memory_format=memory_format)
        skip = None if skip is None else skip.contiguous(memory_format=memory_format)
    return Inputs(x, style, weight, ad, bias, noise, skip, act, 0.5, 1.0 / math.sqrt(c_in * k * k))


# ----------------------------------------------------------------------------- building blocks

def _blur(dev, dtype) -> Tensor:
    return FL.make_blur_kernel(device=dev, dtype=dtype)


def _pre(x: Tensor, case: Case, k: int) -> Tensor:
    """The blur before a stride-2 conv (down layers); identity otherwise."""
    return FL.blur_before_down(x, k, _blur(x.device, x.dtype)) if case.down else x


def _raw(x: Tensor, w: Tensor, case: Case) -> Tensor:
    """The conv itself, w [C_out, C_in, kh, kw]: padding k//2, stride-2 transposed (up, no blur) or stride 2 (down)."""
    if case.up:
        return F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)
    if case.down:
        return F.conv2d(x, w, stride=2, padding=0)
    return F.conv2d(x, w, padding=w.shape[-1] // 2)


def _post(y: Tensor, case: Case, k: int) -> Tensor:
    """The blur after the transposed conv (up layers); identity otherwise."""
    return FL.blur_up_after_transpose(y, k, _blur(y.device, y.dtype)) if case.up else y


def _epilogue(y: Tensor, p: Inputs, case: Case) -> Tensor:
    """StyledConv: + noise, bias, leaky-ReLU·√2; ToRGB: + bias, + skip."""
    if case.torgb:
        return y + p.bias.reshape(1, -1, 1, 1) + p.skip
    return FL.fused_leaky_relu(y + p.noise, p.bias)


def _demod(style: Tensor, sq: Tensor) -> Tensor:
    """d[b, o] = rsqrt(Σ_c s[b,c]²·sq[o,c] + ε); sq = Σ_taps (scale·Ŵ)²."""
    return torch.rsqrt(style.square() @ sq.transpose(0, 1) + FL.DEMOD_EPS)


def _modconv(p: Inputs, case: Case, form: str, backend: str) -> Tensor:
    return FL.modulated_conv2d(p.x, p.weight, p.style, adapter=p.adapter(), scale=p.scale, demodulate=case.demod,
                               up=case.up, down=case.down, bias=p.bias, noise=p.noise,
                               activation=None if case.torgb else "lrelu", skip=p.skip, backend=backend, form=form)


# ----------------------------------------------------------------------------- methods

Fn = Callable[[Inputs], Tensor]


def build_base(case: Case, p0: Inputs, dev: torch.device) -> Fn:
    def fn(p: Inputs) -> Tensor:
        return _post(_raw(_pre(p.x, case, case.k), p.weight * p.scale, case), case, case.k)
    return fn


def build_merged(case: Case, p0: Inputs, dev: torch.device) -> Fn:
    with torch.no_grad():
        w_hat = (FL.adapted_weight(p0.weight, p0.adapter()) * p0.scale).contiguous()
        sq = w_hat.float().square().sum((2, 3)).to(w_hat.dtype)

    def fn(p: Inputs) -> Tensor:
        y = _post(_raw(_pre(p.x * p.style[:, :, None, None], case, case.k), w_hat, case), case, case.k)
        if case.demod:
            y = y * _demod(p.style, sq)[:, :, None, None]
        return _epilogue(y, p, case)
    return fn


def build_peft(case: Case, p0: Inputs, dev: torch.device) -> Fn:
    if p0.act == "both":
        raise NotApplicable("act 'both' (outer ReLU) makes ΔW full-rank: there is no unfused bypass form")
    k = case.k

    def fn(p: Inputs) -> Tensor:
        xs = _pre(p.x * (p.style * p.scale)[:, :, None, None], case, k)
        y = _raw(xs, p.weight, case)
        t = p.adapter_tensors
        if p.act == "lora":
            a_w = t[0].transpose(0, 1).reshape(-1, case.c_in, k, k)          # k×k conv C_in → r
            z = _raw(xs, a_w, case)
            y = y + F.conv2d(z, (p.alpha * t[1])[:, :, None, None])           # 1×1 conv r → C_out
        else:
            z = F.conv2d(xs, t[0].transpose(0, 1)[:, :, None, None])          # 1×1 conv C_in → r
            m = torch.einsum("om,jmt->ojt", t[1], t[2])
            n = torch.relu(m) if p.act == "inner" else m
            y = y + _raw(z, (p.alpha * n).reshape(case.c_out, -1, k, k), case)  # k×k conv r → C_out
        y = _post(y, case, k)
        if case.demod:
            w_hat = FL.adapted_weight(p.weight, p.adapter()) * p.scale
            y = y * _demod(p.style, w_hat.square().sum((2, 3)))[:, :, None, None]
        return _epilogue(y, p, case)
    return fn


def build_published(case: Case, p0: Inputs, dev: torch.device) -> Fn:
    return lambda p: _modconv(p, case, "grouped", "torch")


def build_shared(case: Case, p0: Inputs, dev: torch.device) -> Fn:
    return lambda p: _modconv(p, case, "shared", "torch")


def _compiled(form: str) -> Callable:
    def build(case: Case, p0: Inputs, dev: torch.device, mode: Optional[str] = None) -> Fn:
        act, alpha, scale = p0.act, p0.alpha, p0.scale

        def layer(x, weight, style, bias, noise, skip, *ad):
            p = Inputs(x, style, weight, list(ad), bias, noise, skip, act, alpha, scale)
            return _modconv(p, case, form, "torch")

        mode = mode or ("max-autotune-no-cudagraphs" if dev.type == "cuda" else "default")
        compiled = torch.compile(layer, mode=mode, dynamic=False)
        return lambda p: compiled(p.x, p.weight, p.style, p.bias, p.noise, p.skip, *p.adapter_tensors)
    return build


def _ours(autotune: bool) -> Callable:
    def build(case: Case, p0: Inputs, dev: torch.device, allow_interpreter: bool = False) -> Fn:
        """`allow_interpreter`: run on the CPU through Triton's interpreter (code-path checks, no timing)."""
        from fastlora.backend import triton_unavailable_reason

        if dev.type != "cuda" and not allow_interpreter:
            raise NotApplicable("the fused Triton kernels are timed on CUDA only (on the CPU they would run in "
                                "Triton's interpreter, which is no benchmark)")
        reason = triton_unavailable_reason(p0.x)
        if reason:
            raise NotApplicable(reason)
        from kernels import tiles

        def fn(p: Inputs) -> Tensor:
            if hasattr(tiles, "set_autotune"):
                tiles.set_autotune(autotune)
            return _modconv(p, case, "shared", "triton")
        return fn
    return build


def build_ours_graph(case: Case, p0: Inputs, dev: torch.device, allow_interpreter: bool = False) -> Fn:
    """The fused forward (tile heuristic) captured once per input set in a CUDA graph and replayed:
    no launch gaps. Forward only; the graph reads the input set's own tensors."""
    from bench import graphs

    reason = graphs.unavailable_reason(dev)
    if reason:
        raise NotApplicable(reason)
    inner = _ours(False)(case, p0, dev)
    captured: Dict[int, tuple] = {}

    def fn(p: Inputs) -> Tensor:
        if torch.is_grad_enabled() and any(t.requires_grad for t in p.grad_tensors("all")):
            raise NotApplicable("a CUDA graph replays the forward only")
        key = id(p)
        if key not in captured:  # keep p alive with its graph: the graph reads p's tensors
            captured[key] = (p, graphs.capture(lambda: inner(p)))
        return captured[key][1]()
    return fn


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[Case, Inputs, torch.device], Fn]
    grads: str  # "x", "xs" or "all" (x, style and the adapter tensors)
    carries_adapter: bool = True
    doc: str = field(default="", compare=False)


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("base", build_base, "x", False, "bare conv with the base weight (floor)"),
    Method("merged", build_merged, "xs", False, "whole layer with Ŵ precomputed (inference limit)"),
    Method("peft", build_peft, "all", True, "unfused PEFT-style LoRA bypass"),
    Method("published", build_published, "all", True, "ΔW + per-sample weights + grouped conv"),
    Method("shared", build_shared, "all", True, "shared-weight torch path"),
    Method("compile-published", _compiled("grouped"), "all", True, "torch.compile of published"),
    Method("compile-shared", _compiled("shared"), "all", True, "torch.compile of shared"),
    Method("ours", _ours(True), "all", True, "fused Triton kernels, tiles autotuned"),
    Method("ours-heuristic", _ours(False), "all", True, "fused Triton kernels, tile heuristic"),
    Method("ours-graph", build_ours_graph, "all", True, "ours-heuristic forward replayed from a CUDA graph"),
)}
DEFAULT_METHODS = ("base", "merged", "peft", "published", "shared", "compile-published", "compile-shared", "ours")
COMPILED = ("compile-published", "compile-shared")

"""What every kernel file shares: the numeric constants and integer codes (re-exported from
`kernels.constants`), the dot-precision choice, the leaky-ReLU helpers, and the one launch function.

Every kernel launch goes through `launch`, so a launch can be recorded instead of run (`record`): the
static compile report (`python -m bench compile`) runs the real launchers on meta tensors and compiles
exactly the kernels, grids and configurations they would launch on the target GPU.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import triton
import triton.language as tl

from kernels.constants import (DEMOD_EPS, KIND_LEFT, KIND_LLORA, KIND_LORA, KIND_NONE, LRELU_SLOPE,  # noqa: F401
                               MODE_DOWN, MODE_PLAIN, MODE_UP, SQRT2)

# ----------------------------------------------------------------------------- constants (kernels/constants.py)

# the same values as compile-time constants for @triton.jit code
C_EPS = tl.constexpr(DEMOD_EPS)
C_SQRT2 = tl.constexpr(SQRT2)
C_SLOPE = tl.constexpr(LRELU_SLOPE)


@triton.jit
def lrelu(v):
    """leaky-ReLU(0.2)·√2."""
    return tl.where(v >= 0, v, v * C_SLOPE) * C_SQRT2


@triton.jit
def lrelu_grad(g, z):
    """g·d/dz leaky-ReLU(z)·√2 (slope at 0, like torch)."""
    return tl.where(z > 0, g, g * C_SLOPE) * C_SQRT2


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """The `input_precision` of every fp32 dot (`mma`): "tf32" on a GPU when TF32 matmuls are allowed
    (torch.backends.cuda.matmul.allow_tf32), else "ieee" (the CPU's interpreter computes in fp32; 16-bit
    operands ignore it)."""
    if dtype == torch.float32 and device.type in ("cuda", "meta") and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@triton.jit
def tf32_round(v):
    """fp32 rounded to the nearest TF32 value (ties away from zero): 10 mantissa bits, the low 13 cleared."""
    b = v.to(tl.uint32, bitcast=True)
    return ((b + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """tl.dot(a, b, acc) at `PREC`. With "tf32", fp32 operands are rounded to TF32 first: the tensor cores
    read only their top 19 bits, and that truncation shrinks every product by 2^-11 on average, a bias that
    adds up across layers (first GPU session: 1.5e-2 at the 256 px generator's output, PyTorch 2e-3)."""
    if PREC == "tf32":
        if a.dtype == tl.float32:
            a = tf32_round(a)
        if b.dtype == tl.float32:
            b = tf32_round(b)
    return tl.dot(a, b, acc, input_precision=PREC)


def operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """The GEMM operand dtype for activations of `dtype` (16-bit stays, anything else computes in fp32)."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


# ----------------------------------------------------------------------------- launching (and recording)

@dataclass
class Launch:
    """One kernel launch: the @triton.jit function, grid, positional arguments and compile-time options."""

    fn: Any
    grid: tuple
    args: tuple
    consts: Dict[str, Any]
    num_warps: int
    num_stages: int
    tag: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def ctas(self) -> int:
        n = 1
        for g in self.grid:
            n *= int(g)
        return n


class _Recorder:
    def __init__(self, sms: int) -> None:
        self.sms = sms
        self.launches: List[Launch] = []


_state = threading.local()


def recording() -> Optional[_Recorder]:
    return getattr(_state, "recorder", None)


@contextlib.contextmanager
def record(sms: int = 132) -> Iterator[List[Launch]]:
    """Record launches instead of running them (inputs may be meta tensors); the tile heuristic sees a GPU
    with `sms` multiprocessors (132: H100 SXM and H200)."""
    old = recording()
    rec = _Recorder(sms)
    _state.recorder = rec
    try:
        yield rec.launches
    finally:
        _state.recorder = old


def launch(fn, grid: Sequence[int], args: Sequence[Any], consts: Dict[str, Any], *, num_warps: int = 4,
           num_stages: int = 2, tag: str = "", **meta: Any) -> None:
    """Launch `fn[grid](*args, **consts)` (or record it inside `record()`). `tag` names the launch's role
    (e.g. "conv", "blur") and `meta` carries what the compile report prints (tile, split, ...)."""
    grid = tuple(int(g) for g in grid)
    rec = recording()
    if rec is not None:
        rec.launches.append(Launch(fn, grid, tuple(args), dict(consts), num_warps, num_stages, tag, dict(meta)))
        return
    if any(g == 0 for g in grid):
        return
    fn[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)

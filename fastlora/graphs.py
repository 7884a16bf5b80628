"""CUDA-graph capture and replay of a whole forward (e.g. the generator at a fixed batch).

Small layers (4-16 px) are launch-bound: a StyleGAN2-256 forward launches about a hundred kernels, each a few
microseconds. `capture(fn, *inputs)` runs `fn` a few times to compile every kernel (warm-up, on a side stream),
then records one CUDA graph of it; calling the result copies new inputs into the captured (static) input
buffers and replays the graph: every launch, no Python, no host synchronisation.

Rules for `fn` (they hold for `Generator.forward` with fixed options): tensor inputs only through the
arguments, the same shapes and dtypes on every call, no host synchronisation (no `.item()`, no branching on
tensor values, no CPU->GPU copies) and no data-dependent shapes. The fused kernels' launchers satisfy this
(tile choices depend on shapes only; autotuning, which benchmarks, must be off or its cache warm). Parameters
are captured by address: after changing which adapters are active (or loading other weights), capture again.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor


def graph_unavailable_reason(tensors: Sequence[Tensor]) -> Optional[str]:
    """Why a CUDA graph cannot capture work on these tensors, or None when it can."""
    if not torch.cuda.is_available():
        return f"CUDA graphs need a CUDA GPU, and torch {torch.__version__} sees none"
    devices = sorted({t.device.type for t in tensors})
    if devices != ["cuda"]:
        return f"CUDA graphs capture work on CUDA tensors, got tensors on {devices}"
    return None


class CapturedForward:
    """`fn` captured as a CUDA graph for inputs shaped like the examples; call it with such inputs."""

    def __init__(self, fn: Callable[..., Tensor], inputs: Sequence[Tensor], warmup: int = 2) -> None:
        reason = graph_unavailable_reason(inputs)
        if reason:
            raise RuntimeError(f"cannot capture a CUDA graph: {reason}")
        self.fn = fn
        self.static_inputs: Tuple[Tensor, ...] = tuple(t.detach().clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(max(1, warmup)):  # compiles every kernel and fills the tile caches
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_output = fn(*self.static_inputs)

    def __call__(self, *inputs: Tensor) -> Tensor:
        """Replay with new inputs (copied into the static buffers); returns the static output tensor, which the
        next call overwrites (clone it to keep it)."""
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"expected {len(self.static_inputs)} inputs, got {len(inputs)}")
        for i, (dst, src) in enumerate(zip(self.static_inputs, inputs)):
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(f"input {i}: captured for {list(dst.shape)} {dst.dtype}, got {list(src.shape)} "
                                 f"{src.dtype} (capture again for another batch size)")
            dst.copy_(src)
        self.graph.replay()
        return self.static_output


def capture(fn: Callable[..., Tensor], *inputs: Tensor, warmup: int = 2) -> CapturedForward:
    """Capture `fn(*inputs)` as a CUDA graph (see the module docstring for the rules); RuntimeError without a
    CUDA GPU or for non-CUDA inputs."""
    return CapturedForward(fn, inputs, warmup=warmup)

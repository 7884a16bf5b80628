"""CUDA-graph capture of a benchmark call: record its launches once, replay them without launch gaps.

`capture(fn)` warms `fn` up on a side stream (compilation and allocator growth stay out of the
graph), captures one call and returns a function that replays it and returns the captured output
tensor (overwritten by each replay). The inputs are whatever tensors `fn` reads: to feed new data,
copy it into those tensors. A capture fails (raises) when `fn` synchronises with the host.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def unavailable_reason(dev: torch.device) -> Optional[str]:
    """Why CUDA graphs cannot be captured on `dev`, or None."""
    if dev.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not hasattr(torch.cuda, "CUDAGraph"):
        return f"this torch ({torch.__version__}) has no torch.cuda.CUDAGraph"
    return None


def capture(fn: Callable[[], Tensor], warmup: int = 2) -> Callable[[], Tensor]:
    """Capture one call of `fn` (no arguments; it reads its inputs from tensors it closes over)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> Tensor:
        graph.replay()
        return out
    replay.graph = graph  # type: ignore[attr-defined]  (kept alive with the function)
    return replay

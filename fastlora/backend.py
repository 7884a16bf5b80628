"""Backend selection: "torch" (pure PyTorch reference), "triton" (fused kernels), "auto" (the one measured
fastest end to end: today the reference, on every device).

Triton is imported lazily, only when a Triton backend is asked for or probed, so
CPU-only, macOS and Windows installs import everything without it. Asking for
Triton where it cannot run raises; it never silently computes something else.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from typing import Iterable, Optional

import torch

BACKENDS = ("auto", "torch", "triton")
BACKEND_HELP = ("auto: the PyTorch reference (measured faster end to end than the fused kernels on an H200 so far); "
                "torch: the reference; triton: the fused Triton kernels (CUDA)")


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET=1 (kernels run on CPU through Triton's interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _devices(tensors: Iterable[Optional[torch.Tensor]]) -> set[str]:
    return {t.device.type for t in tensors if isinstance(t, torch.Tensor)}


def _recording_launches() -> bool:
    """Inside `kernels.common.record()` (static analysis: launches on meta tensors are recorded, not run)."""
    common = sys.modules.get("kernels.common")
    return common is not None and common.recording() is not None


def triton_unavailable_reason(*tensors: Optional[torch.Tensor]) -> Optional[str]:
    """Why the Triton backend cannot run on these tensors, or None when it can."""
    if _devices(tensors) == {"meta"} and _recording_launches():
        return None
    if not triton_installed():
        return ("the triton package is not installed (it is available on Linux x86_64: "
                "pip install triton==3.7.1)")
    devices = _devices(tensors)
    if devices - {"cuda", "cpu"}:
        return f"Triton kernels run on CUDA tensors, got tensors on {sorted(devices)}"
    if "cpu" in devices and not triton_interpreting():
        return ("the tensors are on the CPU; Triton kernels need CUDA tensors "
                "(or TRITON_INTERPRET=1, set before fastlora is imported, to run them in Triton's slow interpreter)")
    if "cuda" in devices and triton_interpreting():
        return "TRITON_INTERPRET=1 is set, so kernels run on the CPU; move the tensors to the CPU or unset it"
    if len(devices) > 1:
        return f"all tensors must be on one device, got {sorted(devices)}"
    return None


def resolve_backend(backend: str, *tensors: Optional[torch.Tensor]) -> str:
    """Turn a user's backend choice into "torch" or "triton" for these tensors."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        reason = triton_unavailable_reason(*tensors)
        if reason:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
        return "triton"
    # auto: the reference everywhere for now. The first GPU session (H200, 2026-12-04,
    # bench/results/nvidia-h200-2026-12-04) measured the fused path slower end to end than the PyTorch path
    # (generation 0.63x, a training iteration 0.84x); auto turns to the kernels once a session measures them faster.
    return "torch"


_deterministic = os.environ.get("FASTLORA_DETERMINISTIC", "0") not in ("", "0")


def set_deterministic(on: bool = True) -> None:
    """Make the fused backward reductions deterministic (no atomics): bit-identical repeated runs."""
    global _deterministic
    _deterministic = bool(on)


def deterministic() -> bool:
    """Whether the fused backward runs its deterministic reductions (the switch, the env variable at import,
    or torch's global deterministic-algorithms flag)."""
    return _deterministic or torch.are_deterministic_algorithms_enabled()

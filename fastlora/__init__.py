"""fastlora: low-rank adapters (LoRA, LLoRA, LeFT) on StyleGAN2 layers, with a pure PyTorch
reference backend and fused Triton kernels, plus per-task adapter banks.

Public API: the adapter kinds `LoRA`, `LLoRA`, `LeFT`; `AdapterConfig`; the ops in
`fastlora.functional` (their PyTorch reference: `fastlora.reference`); the layers `AdaptedLinear`,
`ModulatedConv2d`, `AdaptedConv2d`; and the bank operations (`add_task`, `set_task`, `save_task`, `load_task`,
`merge_task`, `unmerge`, ...); `capture` records a whole forward as a CUDA graph. Triton is imported only
when a Triton backend is used.
"""
from fastlora import functional
from fastlora.backend import deterministic, set_deterministic
from fastlora.adapters import LeFT, LLoRA, LoRA
from fastlora.backend import BACKENDS, resolve_backend
from fastlora.bank import (
    adapted_layers,
    add_task,
    active_task,
    base_checksum,
    base_parameters,
    base_state_dict,
    check_task_name,
    count_parameters,
    freeze_base,
    load_task,
    merge_task,
    merged_state_dict,
    merged_weights,
    read_task_config,
    relative_shift,
    remove_task,
    reset_task,
    save_task,
    set_strength,
    set_task,
    task_config,
    task_names,
    task_parameters,
    task_state_dict,
    unmerge,
)
from fastlora.config import KINDS, AdapterConfig
from fastlora.graphs import CapturedForward, capture
from fastlora.modules import AdaptedConv2d, AdaptedLayer, AdaptedLinear, ModulatedConv2d

__all__ = [
    "LoRA", "LLoRA", "LeFT", "AdapterConfig", "KINDS", "BACKENDS", "functional", "resolve_backend",
    "AdaptedLayer", "AdaptedLinear", "ModulatedConv2d", "AdaptedConv2d",
    "adapted_layers", "add_task", "remove_task", "set_task", "set_strength", "active_task", "task_names",
    "task_config",
    "task_parameters", "reset_task", "base_parameters", "freeze_base", "task_state_dict", "base_state_dict",
    "base_checksum",
    "count_parameters", "check_task_name", "set_deterministic", "deterministic", "save_task", "load_task",
    "read_task_config", "merge_task", "unmerge", "merged_state_dict", "merged_weights", "relative_shift", "capture",
    "CapturedForward",
]

"""Model-wide task banks: add, activate, save, load, merge and count per-task adapters.

These functions work on any nn.Module tree containing `fastlora.modules.AdaptedLayer`s.
A task's adapter file is a folder with `adapter.safetensors` (keys
"<layer path>.<tensor>") and `adapter_config.json` (kind, rank, alphas, act, task
name, base checksum, file checksum).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Collection, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from fastlora.config import AdapterConfig
from fastlora.functional import adapted_bias, adapted_weight
from fastlora.io import (atomic_directory, atomic_save_safetensors, atomic_write_json, check_finite, load_json,
                         load_safetensors, sha256_file)
from fastlora.modules import AdaptedLayer

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "fastlora-adapter"
FORMAT_VERSION = 1


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLayer]]:
    """(path, layer) of every adaptable layer, in module order."""
    for name, m in model.named_modules():
        if isinstance(m, AdaptedLayer) and m.adaptable:
            yield name, m


def _layers_or_fail(model: nn.Module) -> list[tuple[str, AdaptedLayer]]:
    layers = list(adapted_layers(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no adaptable fastlora layers")
    return layers


def task_names(model: nn.Module) -> list[str]:
    """Tasks present on every adaptable layer, in the order they were added."""
    layers = _layers_or_fail(model)
    names = list(layers[0][1].adapters)
    return [t for t in names if all(t in m.adapters for _, m in layers)]


def _require_task(model: nn.Module, task: str) -> None:
    known = task_names(model)
    if task not in known:
        raise KeyError(f"unknown task {task!r}; the model has tasks {known}")


MAX_TASK_NAME = 128


def check_task_name(name: object) -> str:
    """Task names become folder names: non-empty text of at most 128 characters, without '/', '\\', ',',
    control characters, a leading '.' or surrounding spaces. Names read from files are checked the same way."""
    ok = isinstance(name, str) and 0 < len(name) <= MAX_TASK_NAME and name.strip() == name \
        and not name.startswith(".") and not any(c in name for c in "/\\,") and name.isprintable()
    if not ok:
        raise ValueError(f"task names must be 1-{MAX_TASK_NAME} printable characters without '/', '\\', ',' or "
                         f"surrounding spaces, not starting with '.', got {name!r}")
    return name


def add_task(model: nn.Module, task: str, config: AdapterConfig) -> None:
    """Add fresh adapters for `task` to every adaptable layer."""
    check_task_name(task)
    if task in task_names(model):
        raise ValueError(f"task {task!r} already exists")
    for _, m in _layers_or_fail(model):
        m.add_adapter(task, config)


def task_config(model: nn.Module, task: str) -> AdapterConfig:
    _require_task(model, task)
    return next(adapted_layers(model))[1].adapters[task].config


def set_strength(model: nn.Module, task: str, strength: float) -> None:
    """Keep the fraction `strength` in [0, 1] of `task`'s trained effect: every adapted weight and bias becomes
    W + strength·(Ŵ − W) (`AdapterConfig.strength`; saved with the task). The tensors are not changed, so any
    strength can be set again later; 1 restores the task as trained."""
    _require_task(model, task)
    config = replace(task_config(model, task), strength=strength)  # validated here
    merged = [p for p, m in adapted_layers(model) if m.merged == task]
    if merged:
        raise RuntimeError(f"task {task!r} is merged into {merged[0]}...; unmerge before changing its strength")
    for _, m in adapted_layers(model):
        m.adapters[task].config = config


def remove_task(model: nn.Module, task: str) -> None:
    _require_task(model, task)
    for _, m in adapted_layers(model):
        if m.merged == task:
            raise RuntimeError(f"task {task!r} is merged; unmerge first")
        del m.adapters[task]
        if m.active == task or (isinstance(m.active, tuple) and task in m.active):
            m.active = None


def set_task(model: nn.Module, task: Union[None, str, Sequence[Optional[str]]]) -> None:
    """Activate one task (a name), the base (None), or several (a list, for per-sample task_ids
    that index into it; None entries stand for the base)."""
    if isinstance(task, (list, tuple)):
        for t in task:
            if t is not None:
                _require_task(model, t)
        active = tuple(task)
    else:
        if task is not None:
            _require_task(model, task)
        active = task
    for _, m in _layers_or_fail(model):
        m.active = active


def active_task(model: nn.Module):
    return _layers_or_fail(model)[0][1].active


def task_parameters(model: nn.Module, task: str, roles: Optional[Collection[str]] = None) -> list[nn.Parameter]:
    """The trainable tensors of one task (what an optimizer adapting that task updates); with `roles`, only those
    of layers of these roles ("mapping", "style", "conv", ...)."""
    _require_task(model, task)
    return [p for _, m in adapted_layers(model) if roles is None or m.role in roles
            for p in m.adapters[task].parameters()]


def reset_task(model: nn.Module, task: str, roles: Optional[Collection[str]] = None) -> None:
    """Put one task's adapters (with `roles`, only those of layers of these roles) back to fresh initial values,
    the identity; their random factors are drawn from the global RNG."""
    _require_task(model, task)
    for _, m in adapted_layers(model):
        if roles is None or m.role in roles:
            m.reset_adapter(task)


def base_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not an adapter tensor."""
    adapter_ids = {id(p) for _, m in adapted_layers(model) for p in m.adapters.parameters()}
    return [p for p in model.parameters() if id(p) not in adapter_ids]


def freeze_base(model: nn.Module) -> None:
    for p in base_parameters(model):
        p.requires_grad_(False)


def task_state_dict(model: nn.Module, task: str) -> dict[str, torch.Tensor]:
    _require_task(model, task)
    out = {}
    for path, m in adapted_layers(model):
        for pname, p in m.adapters[task].named_parameters():
            out[f"{path}.{pname}" if path else pname] = p
    return out


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without any adapter tensors (refused while a task is merged)."""
    merged = [p for p, m in adapted_layers(model) if m.merged is not None]
    if merged:
        raise RuntimeError(f"layers {merged[:3]}... are merged with a task; unmerge before reading the base")
    return {k: v for k, v in model.state_dict().items() if ".adapters." not in f".{k}"}


def base_checksum(model: nn.Module) -> str:
    """sha256 over the base state (names, shapes, dtypes, values): adapters name the base they fit."""
    h = hashlib.sha256()
    for k, v in sorted(base_state_dict(model).items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def count_parameters(model: nn.Module, task: Optional[str] = None) -> dict[str, int]:
    """Parameter counts: the base, and (for a task) what it stores and what trains."""
    base = sum(p.numel() for p in base_parameters(model))
    out = {"base": base}
    if task is not None:
        params = task_parameters(model, task)
        out["stored"] = sum(p.numel() for p in params)
        out["trainable"] = sum(p.numel() for p in params if p.requires_grad)
    return out


def _check_task_folder(directory: Path) -> None:
    """Only a task folder written by `save_task` may be replaced (nothing else in it is lost)."""
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in (ADAPTER_FILE, CONFIG_FILE))
    if not (directory / CONFIG_FILE).is_file() or foreign:
        raise FileExistsError(f"refusing to replace {directory}: it is not a fastlora task folder of its own "
                              f"({'it holds ' + ', '.join(foreign[:5]) if foreign else 'no ' + CONFIG_FILE})")


def save_task(model: nn.Module, task: str, directory: Union[str, os.PathLike], *, overwrite: bool = False,
              extra: Optional[dict] = None) -> Path:
    """Write one task's adapters to `directory` atomically (refuses to replace unless `overwrite`, and
    replaces only a folder `save_task` wrote). Refuses non-finite adapter tensors."""
    tensors = task_state_dict(model, task)
    config = task_config(model, task)
    directory = Path(directory)
    check_finite(tensors, f"the adapters of task {task!r}")
    with atomic_directory(directory, overwrite=overwrite, check_replace=_check_task_folder) as tmp:
        atomic_save_safetensors(tensors, tmp / ADAPTER_FILE, metadata={"format": FORMAT, "task": task})
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": task, **config.to_dict(),
                "base_checksum": base_checksum(model), "num_params": sum(t.numel() for t in tensors.values()),
                "file_sha256": sha256_file(tmp / ADAPTER_FILE), **(extra or {})}
        atomic_write_json(tmp / CONFIG_FILE, meta)
    return directory


def read_task_config(directory: Union[str, os.PathLike]) -> tuple[dict, AdapterConfig]:
    """Parse and validate a task folder's adapter_config.json."""
    directory = Path(directory)
    meta = load_json(directory / CONFIG_FILE)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE} is not a fastlora adapter config (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: adapter format version {meta.get('format_version')} is not supported "
                         f"(this fastlora reads version {FORMAT_VERSION})")
    names = set(AdapterConfig.__dataclass_fields__)
    return meta, AdapterConfig.from_dict({k: v for k, v in meta.items() if k in names})


def key_diff(expected: dict[str, tuple], got: dict[str, tuple]) -> str:
    """A readable diff of missing, unexpected and mis-shaped keys ('' when they match)."""
    lines = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != tuple(got[k]))

    def show(keys, fmt):
        lines.extend(f"    {fmt(k)}" for k in keys[:20])
        if len(keys) > 20:
            lines.append(f"    ... and {len(keys) - 20} more")

    if missing:
        lines.append(f"  missing ({len(missing)}):")
        show(missing, lambda k: f"{k} {list(expected[k])}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}):")
        show(unexpected, lambda k: f"{k} {list(got[k])}")
    if shapes:
        lines.append(f"  wrong shape ({len(shapes)}):")
        show(shapes, lambda k: f"{k}: expected {list(expected[k])}, file has {list(got[k])}")
    return "\n".join(lines)


def load_task(model: nn.Module, directory: Union[str, os.PathLike], *, task: Optional[str] = None,
              check_base: bool = True) -> str:
    """Load a task folder written by `save_task` into the model's bank (strict); returns the task name.

    Refuses a corrupt file, a base checksum that differs from the model's (unless
    check_base=False), an existing task of the same name, and any key mismatch.
    """
    directory = Path(directory)
    meta, config = read_task_config(directory)
    file = directory / ADAPTER_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has {CONFIG_FILE} but no {ADAPTER_FILE}")
    if meta.get("file_sha256") and sha256_file(file) != meta["file_sha256"]:
        raise ValueError(f"{file} does not match the checksum recorded in {CONFIG_FILE}: the file is corrupt "
                         f"or was changed after saving")
    if check_base and meta.get("base_checksum") and meta["base_checksum"] != base_checksum(model):
        raise ValueError(f"the adapters in {directory} were trained on a different base model (base checksum "
                         f"{meta['base_checksum'][:12]}… vs this model's {base_checksum(model)[:12]}…); load the "
                         f"matching base, or pass check_base=False to apply them anyway")
    name = task or meta.get("task")
    if not name:
        raise ValueError(f"{directory / CONFIG_FILE} names no task; pass task=")
    try:
        check_task_name(name)
    except ValueError as exc:
        raise ValueError(f"{directory / CONFIG_FILE}: {exc}") from None
    tensors = load_safetensors(file)
    check_finite(tensors, str(file))
    add_task_from_tensors(model, name, config, tensors, f"the adapters in {directory} do not fit this model")
    return name


def copy_strict(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], mismatch: str) -> None:
    """Copy `tensors` into `expected` (cast to each target's dtype) when the keys and shapes match exactly;
    else ValueError: `mismatch` (a sentence) and the missing, unexpected and mis-shaped keys (nothing copied)."""
    diff = key_diff({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in tensors.items()})
    if diff:
        raise ValueError(f"{mismatch}:\n{diff}")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(tensors[k].to(dtype=p.dtype))


def add_task_from_tensors(model: nn.Module, task: str, config: AdapterConfig, tensors: Mapping[str, torch.Tensor],
                          mismatch: str, *, optional: Sequence[str] = ()) -> None:
    """Add `task` to the model with its adapter tensors (keys as in `task_state_dict`), strictly (`mismatch`:
    the sentence of the error otherwise); on any failure the task is removed again. optional: tensor names
    (the last key part) that may be missing and then start at zero."""
    add_task(model, task, config)
    try:
        expected = task_state_dict(model, task)
        filled = dict(tensors)
        for k, p in expected.items():
            if k not in filled and k.rsplit(".", 1)[-1] in optional:
                filled[k] = torch.zeros_like(p)
        copy_strict(expected, filled, mismatch)
    except BaseException:
        remove_task(model, task)
        raise


def merge_task(model: nn.Module, task: str) -> None:
    """Write one task's adapted weights into the base parameters (plain layers afterwards)."""
    _require_task(model, task)
    for _, m in adapted_layers(model):
        m.merge(task)
        m.active = task


def unmerge(model: nn.Module) -> None:
    """Restore the base weights exactly after `merge_task`."""
    for _, m in adapted_layers(model):
        m.unmerge()


@torch.no_grad()
def merged_weights(layer: AdaptedLayer, task: Optional[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One layer's (weight, bias) with `task` merged (fp32 merge, cast back; None: the base), as new
    tensors, without touching the layer."""
    if task is None:
        return layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone()
    if task not in layer.adapters:
        raise KeyError(f"unknown task {task!r}; the layer has tasks {list(layer.adapters)}")
    a = layer.adapters[task].adapter()
    bias = None if layer.bias is None else adapted_bias(layer.bias, a).detach().clone()
    return adapted_weight(layer.weight, a).detach().clone(), bias


def relative_shift(model: nn.Module, task: str, roles: Collection[str]) -> torch.Tensor:
    """How far `task`'s adapters move its layers of `roles` ("mapping", "style", "conv"), differentiably: the
    mean over those layers of ||Ŵ − W||² / ||W||² (+ the same for the bias), W the base's weight and Ŵ the
    task's merged one. 0 at the identity; a penalty on it keeps the task near the base where the loss does not
    keep pushing away."""
    _require_task(model, task)
    terms = []
    for _, m in adapted_layers(model):
        if m.role not in roles:
            continue
        a = m.adapters[task].adapter()
        w = m.weight.detach().float()
        shift = (adapted_weight(w, a) - w).pow(2).sum() / w.pow(2).sum().clamp_min(1e-12)
        if m.bias is not None:
            b = m.bias.detach().float()
            shift = shift + (adapted_bias(b, a) - b).pow(2).sum() / b.pow(2).sum().clamp_min(1e-12)
        terms.append(shift)
    if not terms:
        raise ValueError(f"task {task!r} has no adapted layers of roles {sorted(roles)}")
    return torch.stack(terms).mean()


def merged_state_dict(model: nn.Module, task: Optional[str]) -> dict[str, torch.Tensor]:
    """The base state with `task` merged (fp32 merge, cast back), without touching the model."""
    state = {k: v.detach().clone() for k, v in base_state_dict(model).items()}
    if task is None:
        return state
    _require_task(model, task)
    for path, m in adapted_layers(model):
        prefix = f"{path}." if path else ""
        state[prefix + "weight"], bias = merged_weights(m, task)
        if bias is not None:
            state[prefix + "bias"] = bias
    return state

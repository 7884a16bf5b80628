"""Training-state snapshots for exact resume: models, EMA, optimizers, step, every RNG stream
(python, numpy, torch CPU/CUDA, the run's explicit torch.Generators, the augmenter) and the
data position. A snapshot is one file written atomically (temporary file, then rename)."""
from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from fastlora.io import atomic_write_bytes

STATE_FORMAT = "colorgan-train-state"
STATE_VERSION = 1
PathLike = Union[str, os.PathLike]


def global_rng_state() -> dict[str, Any]:
    """python `random`, numpy and torch (CPU, and CUDA when present) global RNG states, in plain types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(path: PathLike, state: dict[str, Any]) -> Path:
    """Write a training snapshot atomically (replacing the previous snapshot of the same run)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_state(path: PathLike) -> dict[str, Any]:
    """Read a snapshot written by `save_state` (tensors on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}: the run has not written a snapshot yet "
                                f"(it is written every --save-every iterations and at the end)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling failure the same way
        raise ValueError(f"{path} is not a readable training state (corrupt or truncated?): {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a colorgan training state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: training-state version {state.get('version')} is not supported "
                         f"(this colorgan reads version {STATE_VERSION})")
    return state


def generator_states(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {k: g.get_state() for k, g in gens.items()}


def set_generator_states(gens: dict[str, torch.Generator], states: dict[str, torch.Tensor]) -> None:
    missing = set(gens) - set(states)
    if missing:
        raise ValueError(f"the saved state lacks the RNG streams {sorted(missing)}")
    for k, g in gens.items():
        g.set_state(states[k])

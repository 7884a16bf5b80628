"""Seeds: parse "0-99,123" strictly, and map each seed to one fixed latent z.

A seed's z is drawn on the CPU from torch.Generator().manual_seed(seed), so it is the
same on every machine and device, for every task and for the base.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence, Union

import torch

MAX_SEED = 2 ** 32 - 1
_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(text: str, max_count: int = 1_000_000) -> list[int]:
    """"0-99,123" → [0, 1, ..., 99, 123]; ranges are inclusive, order is kept.

    Refuses empty parts, negative or non-integer values, reversed ranges, seeds above
    2**32-1, duplicates and more than `max_count` seeds, saying which part is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("seeds must be a list like '0-99,123', got an empty value")
    seeds: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        p = part.strip()
        m = _PART.match(p)
        if not m:
            raise ValueError(f"bad seed {part!r} in {text!r}: expected a non-negative integer N or an inclusive range "
                             f"A-B (e.g. '0-99,123')")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad seed range {p!r} in {text!r}: the end {hi} is below the start {lo}")
        if hi > MAX_SEED:
            raise ValueError(f"seed {hi} in {text!r} is out of range: seeds must lie in 0..{MAX_SEED}")
        if len(seeds) + (hi - lo + 1) > max_count:
            raise ValueError(f"{text!r} gives more than {max_count} seeds")
        for s in range(lo, hi + 1):
            if s in seen:
                raise ValueError(f"seed {s} appears twice in {text!r}")
            seen.add(s)
            seeds.append(s)
    return seeds


def seed_generator(seed: int) -> torch.Generator:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must lie in 0..{MAX_SEED}, got {seed}")
    return torch.Generator().manual_seed(seed)


def seed_to_z(seed: int, style_dim: int) -> torch.Tensor:
    """The fixed latent of one seed: [style_dim] from N(0, 1), drawn on the CPU."""
    return torch.randn(style_dim, generator=seed_generator(seed))


def seeds_to_z(seeds: Sequence[int], style_dim: int, device: Optional[torch.device | str] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stack of the seeds' latents [N, style_dim]."""
    if not len(seeds):
        return torch.empty(0, style_dim, device=device, dtype=dtype)
    return torch.stack([seed_to_z(s, style_dim) for s in seeds]).to(device=device, dtype=dtype)


def seed_noise(seed: int, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per-seed noise maps for "random" noise, from a second stream (seed + 2**32) so that z is
    unchanged; the same for every task, batch size and device."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must lie in 0..{MAX_SEED}, got {seed}")
    g = torch.Generator().manual_seed(seed + 2 ** 32)
    return [torch.randn(*s, generator=g) for s in shapes]


def render_request(seeds: Union[str, Sequence[int]], batch: int, truncation: float) -> list[int]:
    """Check what every renderer (`colorgan generate`, `onnx-generate`) is asked for: seeds ("0-9" or a
    list, at least one), a positive batch and a non-negative truncation psi. Returns the seed list."""
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("no seeds given")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch}")
    if not math.isfinite(truncation) or truncation < 0:
        raise ValueError(f"truncation must be a non-negative number (psi toward w_avg; 1 = none), got {truncation}")
    return seed_list

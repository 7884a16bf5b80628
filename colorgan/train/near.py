"""How near a task's shots lie to what the base already makes (`colorgan train --near-anchor`).

A task's *gap* is the KID x 10^3 between its shots and `BASE_SAMPLES` samples of the base (seeds 0, 1, ...):
Inception features, the cubic polynomial kernel, the unbiased estimate over all images. Shots whose content the
base already makes lie low (a near style, such as Twemoji against a Noto base, but also ten shots of a Noto
category the source covers widely); a far style, or a category whose shots show content the base lacks, high.
Tasks below `NEAR_GAP` train with their style and mapping anchors at least --near-anchor: they move only as far as
the adversarial loss keeps pushing. Ten shots are a small sample, so the verdict is a probability per task, not a
property of it (`python -m bench near --draws N`; docs/benchmarks.md, rounds 28 and 31)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from colorgan.evaluate import sample_batches
from colorgan.metrics.features import (FeatureNetwork, cached_features, default_cache_dir, default_inception,
                                       extract_features, folder_features)
from colorgan.metrics.stats import mmd2_unbiased

NEAR_GAP = 55.0  # KID x 10^3, chosen on the validation tasks (docs/benchmarks.md, round 28)
BASE_SAMPLES = 1000


def require_network_file(path: str) -> None:
    """ValueError unless `path` (the user's --inception) is a file."""
    if not Path(path).is_file():
        raise ValueError(f"--inception: no Inception network file at {path}")


def find_network(device: torch.device, path: Optional[str] = None) -> Optional[FeatureNetwork]:
    """The Inception network in file `path`, else where `colorgan eval` finds it (None when none is installed)."""
    if path is not None:
        require_network_file(path)
        return FeatureNetwork(path, device)
    found = default_inception()
    return FeatureNetwork(found, device) if found is not None and Path(found).is_file() else None


def base_features(G, net: FeatureNetwork, checksum: str, *, n: Optional[int] = None, batch: int = 100,
                  progress: bool = False) -> np.ndarray:
    """Features of the base's samples of seeds 0..n-1 (n: `BASE_SAMPLES`), cached under the feature cache by the
    base's checksum (recomputed when there is none, or the entry is unreadable). The global RNG is left as it was."""
    n = BASE_SAMPLES if n is None else n
    key = {"base": checksum, "n": n, "net": net.sha256, "input_size": net.input_size, "size": G.size}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()

    def compute() -> np.ndarray:
        with torch.random.fork_rng(devices=[]):
            return extract_features(sample_batches(G, None, n, batch, 1.0), net, n=n, progress=progress,
                                    desc="near check: base samples")

    return cached_features(default_cache_dir() / f"base-{digest}.npz" if checksum else None, n, compute, key)


def gap(shots: np.ndarray, base: np.ndarray) -> Optional[float]:
    """The gap: KID x 10^3 between the shots' features and the base features `base`; None for fewer than two
    shots (the unbiased estimate needs two)."""
    return 1e3 * mmd2_unbiased(shots, base) if shots.shape[0] >= 2 else None


def shot_features(folder: str | Path, net: FeatureNetwork, resolution: int) -> np.ndarray:
    """Features of the images in `folder` (the shots; read afresh, not from the feature cache)."""
    return folder_features(folder, net, resolution, use_cache=False, progress=False)


def shot_gap(folder: str | Path, base: np.ndarray, net: FeatureNetwork, resolution: int) -> Optional[float]:
    """The gap of the images in `folder`."""
    return gap(shot_features(folder, net, resolution), base)


def is_near(gap: Optional[float]) -> bool:
    return gap is not None and bool(gap < NEAR_GAP)

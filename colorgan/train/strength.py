"""How much of each trained task to keep (`colorgan train --strength`).

A task's strength s keeps that fraction of its adapters' effect: every adapted weight and bias becomes
W + s(Ŵ − W) (`fastlora.set_strength`; saved with the task, so generation, merging and export all see it).
`--strength auto` chooses s once the task has trained: of `CANDIDATES`, the one whose `PICK_SAMPLES` samples (seeds
0, 1, ...) lie nearest the task's own shots by KID (Inception features; `colorgan eval`'s estimator, the cubic
polynomial kernel averaged over 100 random subsets, seed 0), ties to the larger s. Ten shots are a small sample and the adversarial loss
overshoots on some tasks (a style near the base's, a category the base already makes); keeping less of such a
task brings its samples back towards its shots, and a task that needs its whole effect keeps s = 1
(docs/benchmarks.md, round 38). The choice changes nothing a later task trains: each task trains its own adapters.
"""
from __future__ import annotations

import math
from typing import Mapping, Union

import numpy as np
import torch

import fastlora
from colorgan.evaluate import sample_batches
from colorgan.metrics.features import FeatureNetwork, extract_features
from colorgan.metrics.stats import kid

AUTO = "auto"
CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0)  # chosen with the rule on the validation tasks (round 38)
PICK_SAMPLES = 300
SAMPLE_BATCH = 50


def fraction(text: str) -> float:
    """A strength typed as a number in [0, 1]."""
    try:
        s = float(text)
    except ValueError:
        raise ValueError("expected a number between 0 and 1") from None
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise ValueError("expected a number between 0 and 1")
    return s


def strength_value(text: str) -> Union[float, str]:
    """One task's `colorgan train --strength`: "auto", or a fraction in [0, 1]."""
    if str(text).strip() == AUTO:
        return AUTO
    try:
        return fraction(text)
    except ValueError:
        raise ValueError("expected auto or a number between 0 and 1") from None


def shot_kid(fake: np.ndarray, shots: np.ndarray) -> float:
    """KID between sample features and shot features (`colorgan.metrics.kid` with its defaults, as `colorgan eval`:
    the mean over 100 subsets of at most 1000, seed 0)."""
    return float(kid(fake, shots)["mean"])


def pick(shot_kids: Mapping[float, float]) -> float:
    """The strength with the lowest KID against the shots; ties go to the larger strength."""
    order = sorted(shot_kids, reverse=True)  # min keeps the first of equal values: the larger strength
    return min(order, key=lambda s: shot_kids[s])


@torch.no_grad()
def shot_kids(G, task: str, shots: np.ndarray, net: FeatureNetwork, base: np.ndarray, *,
              progress: bool = False) -> dict[float, float]:
    """{s: KID between the shots' features `shots` and the features of task `task`'s samples (seeds 0..n-1, n:
    `PICK_SAMPLES`) at strength s, for s in `CANDIDATES`}; s = 0 is the base, whose features `base` (at least n
    rows, the same seeds) are given. The task's strength in G is left at the last candidate's; the global RNG as
    it was."""
    n = PICK_SAMPLES
    if shots.shape[0] < 2:
        raise ValueError(f"the strength pick needs at least 2 shots, got {shots.shape[0]}")
    out: dict[float, float] = {}
    with torch.random.fork_rng(devices=[]):
        for s in CANDIDATES:
            if s == 0:
                out[s] = shot_kid(base[:n], shots)
                continue
            fastlora.set_strength(G, task, s)
            feats = extract_features(sample_batches(G, task, n, SAMPLE_BATCH, 1.0), net, n=n, resolution=G.size,
                                     progress=progress, desc=f"strength pick: {task} at {s:g}")
            out[s] = shot_kid(feats, shots)
    return out

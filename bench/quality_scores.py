"""Inception features and FID/KID for the quality benchmark: every image set is passed through the network
once (real sets cached on disk), and every score is computed from features, so floors cost no extra passes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

import fastlora
from colorgan.checkpoint import load_checkpoint
from colorgan.data.folder import list_images, load_image, uint8_to_tensor
from colorgan.evaluate import sample_batches
from colorgan.metrics import FeatureNetwork, extract_features, fid_from_features, folder_features, kid
from colorgan.metrics.features import INCEPTION_HELP, default_inception

RESOLUTION = 32  # the emoji benchmark's size; fakes and reals reach the network alike (resized to 299 inside)
KID_SUBSETS = 100


def inception_path(given: Optional[str]) -> str:
    """The Inception network file: `given`, else the one found automatically; exits saying how to get one."""
    found = given or default_inception()
    if not found:
        raise SystemExit(f"no Inception network: {INCEPTION_HELP}")
    return found


class Scorer:
    """One Inception network; features of folders, shots and generated samples; FID/KID between features."""

    def __init__(self, inception: str, device: str = "cpu", progress: bool = True,
                 cache_dir: Optional[os.PathLike] = None) -> None:
        self.net = FeatureNetwork(inception, device=device)
        self.device, self.progress, self.cache_dir = device, progress, cache_dir

    def folder(self, folder: Path, limit: Optional[int] = None) -> np.ndarray:
        """Features of the folder's images (with `limit`: of a fixed seeded subset of at most that many)."""
        return folder_features(folder, self.net, RESOLUTION, cache_dir=self.cache_dir, progress=self.progress,
                               limit=limit)

    def images(self, folder: Path, repeat_to: int) -> np.ndarray:
        """Features of the images of `folder` (the shots), repeated to `repeat_to` rows: the memorisation floor's
        fakes (a generator that only copies its shots)."""
        imgs = torch.stack([uint8_to_tensor(load_image(p, RESOLUTION)) for p in list_images(folder)])
        feats = extract_features([imgs], self.net, resolution=RESOLUTION, progress=False)
        return np.resize(feats, (repeat_to, feats.shape[1]))

    def generated(self, ckpt: Path, task: Optional[str], n: int, *, off: Sequence[str] = (),
                  scale: float = 0.0, mean_shift: bool = False) -> np.ndarray:
        """Features of seeds 0..n-1 under `task` (None: the base); `off`: adapter roles ("mapping", "style",
        "conv") whose adapters are put back to the identity before sampling (a sampling-time ablation), or with
        `scale` kept at that fraction of their effect (`scale_roles`); `mean_shift`: the task's mapping adapters
        replaced by their mean effect on w (`shift_mapping`)."""
        G, _, _ = load_checkpoint(ckpt, self.device, tasks=[] if task is None else [task], load_d=False)
        if task is not None and mean_shift:
            shift_mapping(G, task)
        if task is not None and off:
            scale_roles(G, task, off, scale)
        return extract_features(sample_batches(G, task, n, 50, 1.0), self.net, n=n, resolution=RESOLUTION,
                                progress=self.progress, desc=f"features {task or 'base'}")


@torch.no_grad()
def scale_roles(G: torch.nn.Module, task: str, roles: Sequence[str], scale: float) -> None:
    """Keep `scale` of the effect of `task`'s adapters on layers of `roles`: each such layer's base weight and bias
    become W + scale·(Ŵ − W) (Ŵ: the task merged in) and its adapters the identity; scale 0 puts them back to the
    identity (`fastlora.reset_task`), 1 leaves the task as it is. It edits the base: for a model loaded to sample."""
    if scale:
        for _, m in fastlora.adapted_layers(G):
            if m.role in roles:
                w, b = fastlora.merged_weights(m, task)
                m.weight.lerp_(w, scale)
                if b is not None:
                    m.bias.lerp_(b, scale)
    fastlora.reset_task(G, task, roles=tuple(roles))


@torch.no_grad()
def shift_mapping(G: torch.nn.Module, task: str) -> torch.Tensor:
    """Replace `task`'s mapping adapters by their mean effect on w: dw = the task's mean w minus the base's over
    the fixed z set of the truncation centre (`task_w_avg`); the mapping goes back to the base's and every w it
    makes gets + dw. Returns dw. It edits the model: for a model loaded to sample."""
    saved = fastlora.active_task(G)
    fastlora.set_task(G, task)
    try:
        dw = G.task_w_avg() - G.w_avg
    finally:
        fastlora.set_task(G, saved)
    fastlora.reset_task(G, task, roles=("mapping",))
    base_mapping = G.mapping

    def shifted(z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return base_mapping(z, *args, **kwargs) + dw.to(z)

    G.mapping = shifted
    return dw


def scores(fake: np.ndarray, real: np.ndarray, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean and std over subsets) between two feature sets."""
    k = kid(fake, real, n_subsets=KID_SUBSETS, subset_size=1000, seed=seed)
    return {"fid": float(fid_from_features(fake, real)), "kid": float(k["mean"]), "kid_std": float(k["std"])}


def halves(feats: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of a set's features into two halves (the noise floor compares them)."""
    idx = np.random.default_rng(seed).permutation(feats.shape[0])
    h = feats.shape[0] // 2
    return feats[idx[:h]], feats[idx[h:2 * h]]

"""`evaluate_images`: FID and KID of fake images against a real folder, and (with LPIPS weights and the
training shots) intra-cluster LPIPS and B-LPIPS. Fakes are a folder or a stream of generated batches."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from colorgan.data.folder import list_images, load_image, uint8_to_tensor
from colorgan.metrics.features import FeatureNetwork, extract_features, folder_features, iter_folder_batches
from colorgan.metrics.lpips import LPIPS, LPIPS_HELP, cluster_lpips, load_lpips
from colorgan.metrics.stats import fid_from_features, kid


def _select(files: list[Path], n: int | None, seed: int) -> list[Path]:
    """`n` files drawn with default_rng(seed) from the sorted list, kept in sorted order (all if n is None)."""
    if n is None or n >= len(files):
        return list(files)
    idx = np.sort(np.random.default_rng(seed).choice(len(files), n, replace=False))
    return [files[i] for i in idx]


def _folder_fakes(fake_dir: Path, net: FeatureNetwork, *, n_fake, seed, resolution, batch_size, want_lpips,
                  n_lpips, progress) -> tuple[np.ndarray, int, Optional[torch.Tensor]]:
    """Features of a seeded selection of a folder's images (and the seeded LPIPS subset as images)."""
    files = _select(list_images(fake_dir), n_fake, seed)
    if resolution is None:
        h, w = load_image(files[0]).shape[:2]
        resolution = min(h, w)
    feats = extract_features(iter_folder_batches(files, resolution, batch_size), net, n=len(files),
                             progress=progress, desc="features fake")
    lpips_imgs = None
    if want_lpips:
        lpips_imgs = torch.stack([uint8_to_tensor(load_image(p, resolution)) for p in _select(files, n_lpips, seed + 1)])
    return feats, resolution, lpips_imgs


def _stream_fakes(batches: Iterable[torch.Tensor], net: FeatureNetwork, *, n_fake, resolution, want_lpips, n_lpips,
                  progress) -> tuple[np.ndarray, int, Optional[torch.Tensor]]:
    """Features of the first `n_fake` generated images (and the first `n_lpips` of them, 8-bit quantised as a
    saved image would be, for LPIPS)."""
    kept: list[torch.Tensor] = []
    res = [resolution]

    def stream():
        for b in batches:
            if res[0] is None:
                res[0] = int(b.shape[-1])
            if want_lpips and sum(x.shape[0] for x in kept) < n_lpips:
                q = ((b.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                kept.append(q[: n_lpips - sum(x.shape[0] for x in kept)])
            yield b

    feats = extract_features(stream(), net, n=n_fake, resolution=resolution, progress=progress,
                             desc="features fake")
    resolution = res[0]
    lpips_imgs = None
    if want_lpips:
        q = torch.cat(kept).float()
        if q.shape[-1] != resolution:
            q = torch.nn.functional.interpolate(q, size=(resolution, resolution), mode="bilinear",
                                                align_corners=False, antialias=True).round().clamp(0, 255)
        lpips_imgs = q / 127.5 - 1.0
    return feats, resolution, lpips_imgs


def _lpips_scores(lpips, lpips_imgs: torch.Tensor, shots_dir, resolution: int, *, max_cluster, seed, batch_size,
                  device, progress) -> dict:
    model = lpips if isinstance(lpips, LPIPS) else load_lpips(lpips, device=device)
    shot_files = list_images(Path(shots_dir))
    shots = torch.stack([uint8_to_tensor(load_image(p, resolution)) for p in shot_files])
    cl = cluster_lpips(model, lpips_imgs, shots, max_members=max_cluster, seed=seed, batch_size=batch_size,
                       progress=progress)
    for c in cl["clusters"]:
        c["shot_file"] = shot_files[c["shot"]].name
    return {"intra_lpips": cl["intra_lpips"], "b_lpips": cl["b_lpips"],
            "lpips": {k: v for k, v in cl.items() if k not in ("intra_lpips", "b_lpips")}, "lpips_shots": str(shots_dir)}


def evaluate_images(
    fake: str | os.PathLike | Iterable[torch.Tensor],
    real_dir: str | os.PathLike,
    *,
    inception: str | os.PathLike | FeatureNetwork,
    resolution: int | None = None,
    n_fake: int | None = None,
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    lpips: str | os.PathLike | LPIPS | None = None,
    shots_dir: str | os.PathLike | None = None,
    n_lpips: int = 1000,
    max_cluster: int = 50,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict:
    """FID, KID and (when LPIPS weights and training shots are given) intra-cluster LPIPS and B-LPIPS.

    `fake` is an image folder or an iterable of N x 3 x H x W tensors in [-1, 1] (generated batches).
    From a folder, `n_fake` images are a seeded selection of the sorted files and the LPIPS images a seeded
    selection of those; from a stream, the first `n_fake` images are used and the first `n_lpips` of them
    go to LPIPS. Real images are resized to the fake resolution (`resolution`, default: the fakes' size);
    their features are cached per folder, resolution and network.
    """
    if n_fake is not None and (not isinstance(n_fake, int) or n_fake < 2):
        raise ValueError(f"the number of fake images must be at least 2 (FID/KID compare two sets), got {n_fake!r}")
    net = inception if isinstance(inception, FeatureNetwork) else FeatureNetwork(inception, device=device)
    want_lpips = lpips is not None
    if want_lpips and shots_dir is None:
        raise ValueError("LPIPS metrics need the training shots folder (shots_dir) as cluster centres")
    if isinstance(fake, (str, os.PathLike)):
        fake_feats, resolution, lpips_imgs = _folder_fakes(
            Path(fake), net, n_fake=n_fake, seed=seed, resolution=resolution, batch_size=batch_size,
            want_lpips=want_lpips, n_lpips=n_lpips, progress=progress)
        result: dict = {"warnings": [], "fake": str(Path(fake))}
    else:
        fake_feats, resolution, lpips_imgs = _stream_fakes(
            fake, net, n_fake=n_fake, resolution=resolution, want_lpips=want_lpips, n_lpips=n_lpips,
            progress=progress)
        result = {"warnings": [], "fake": "<generated>"}
    real_feats = folder_features(real_dir, net, resolution, batch_size=batch_size, cache_dir=cache_dir,
                                 use_cache=use_cache, progress=progress)
    n1, n2, dim = fake_feats.shape[0], real_feats.shape[0], fake_feats.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {n1} fake and {n2} real")
    k = kid(fake_feats, real_feats, n_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    if min(n1, n2) <= dim:
        result["warnings"].append(
            f"FID from {n1} fake / {n2} real images with {dim}-d features: covariances are rank-deficient and FID is "
            f"biased upwards at small N; compare FIDs only at equal N and prefer KID")
    result.update({
        "real": str(real_dir), "resolution": resolution, "n_fake": int(n1), "n_real": int(n2),
        "feature_dim": int(dim), "feature_net": {"path": str(net.path), "sha256": net.sha256, "input_size": net.input_size},
        "fid": fid_from_features(fake_feats, real_feats), "kid_mean": k["mean"], "kid_std": k["std"],
        "kid_subset_size": k["subset_size"], "kid_subsets": k["n_subsets"], "seed": seed,
    })
    if want_lpips:
        result.update(_lpips_scores(lpips, lpips_imgs, shots_dir, resolution, max_cluster=max_cluster, seed=seed,
                                    batch_size=batch_size, device=device, progress=progress))
    else:
        result["lpips_skipped"] = "no LPIPS weights given (--lpips PATH with --shots DIR). " + LPIPS_HELP
    return result

"""Evaluation metrics: FID, KID (Inception features), intra-cluster LPIPS and B-LPIPS.

`evaluate_images` is the single entry point used by `colorgan eval` (folder vs folder) and by the
model-based mode (generated batches vs a real folder).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from colorgan.data.folder import list_images, load_image, uint8_to_tensor
from colorgan.metrics.features import (INCEPTION_HELP, FeatureNetwork, extract_features, folder_features,
                                       iter_folder_batches)
from colorgan.metrics.lpips import LPIPS, LPIPS_HELP, cluster_lpips, load_lpips
from colorgan.metrics.stats import feature_stats, fid_from_features, fid_from_stats, kid, sqrtm_psd

__all__ = ["FeatureNetwork", "LPIPS", "INCEPTION_HELP", "LPIPS_HELP", "cluster_lpips", "evaluate_images",
           "feature_stats", "fid_from_features", "fid_from_stats", "format_table", "kid", "load_lpips", "sqrtm_psd"]


def _select(files: list[Path], n: int | None, seed: int) -> list[Path]:
    """`n` files drawn with default_rng(seed) from the sorted list, kept in sorted order (all if n is None)."""
    if n is None or n >= len(files):
        return list(files)
    idx = np.sort(np.random.default_rng(seed).choice(len(files), n, replace=False))
    return [files[i] for i in idx]


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
    result: dict = {"warnings": []}
    lpips_imgs: torch.Tensor | None = None

    if isinstance(fake, (str, os.PathLike)):
        fake_dir = Path(fake)
        files = _select(list_images(fake_dir), n_fake, seed)
        if resolution is None:
            h, w = load_image(files[0]).shape[:2]
            resolution = min(h, w)
        fake_feats = extract_features(iter_folder_batches(files, resolution, batch_size), net, n=len(files),
                                      progress=progress, desc="features fake")
        if want_lpips:
            lp_files = _select(files, n_lpips, seed + 1)
            lpips_imgs = torch.stack([uint8_to_tensor(load_image(p, resolution)) for p in lp_files])
        result["fake"] = str(fake_dir)
    else:
        kept: list[torch.Tensor] = []

        def stream():
            nonlocal resolution
            for b in fake:
                if resolution is None:
                    resolution = int(b.shape[-1])
                if want_lpips and sum(x.shape[0] for x in kept) < n_lpips:
                    q = ((b.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                    kept.append(q[: n_lpips - sum(x.shape[0] for x in kept)])
                yield b

        fake_feats = extract_features(stream(), net, n=n_fake, resolution=resolution, progress=progress,
                                      desc="features fake")
        if want_lpips:
            q = torch.cat(kept).float()
            if q.shape[-1] != resolution:
                q = torch.nn.functional.interpolate(q, size=(resolution, resolution), mode="bilinear",
                                                    align_corners=False, antialias=True).round().clamp(0, 255)
            lpips_imgs = q / 127.5 - 1.0
        result["fake"] = "<generated>"
    assert resolution is not None
    real_feats = folder_features(real_dir, net, resolution, batch_size=batch_size, cache_dir=cache_dir,
                                 use_cache=use_cache, progress=progress)

    n1, n2, dim = fake_feats.shape[0], real_feats.shape[0], fake_feats.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set, got {n1} fake and {n2} real")
    fid = fid_from_features(fake_feats, real_feats)
    k = kid(fake_feats, real_feats, n_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    if min(n1, n2) <= dim:
        result["warnings"].append(
            f"FID from {n1} fake / {n2} real images with {dim}-d features: covariances are rank-deficient and FID is "
            f"biased upwards at small N; compare FIDs only at equal N and prefer KID")
    result.update({
        "real": str(real_dir), "resolution": resolution, "n_fake": int(n1), "n_real": int(n2),
        "feature_dim": int(dim), "feature_net": {"path": str(net.path), "sha256": net.sha256, "input_size": net.input_size},
        "fid": fid, "kid_mean": k["mean"], "kid_std": k["std"], "kid_subset_size": k["subset_size"],
        "kid_subsets": k["n_subsets"], "seed": seed,
    })
    if want_lpips:
        model = lpips if isinstance(lpips, LPIPS) else load_lpips(lpips, device=device)
        shot_files = list_images(Path(shots_dir))
        shots = torch.stack([uint8_to_tensor(load_image(p, resolution)) for p in shot_files])
        cl = cluster_lpips(model, lpips_imgs, shots, max_members=max_cluster, seed=seed, batch_size=batch_size,
                           progress=progress)
        for c in cl["clusters"]:
            c["shot_file"] = shot_files[c["shot"]].name
        result.update({"intra_lpips": cl["intra_lpips"], "b_lpips": cl["b_lpips"],
                       "lpips": {k2: v for k2, v in cl.items() if k2 not in ("intra_lpips", "b_lpips")},
                       "lpips_shots": str(shots_dir)})
    else:
        result["lpips_skipped"] = "no LPIPS weights given (--lpips PATH with --shots DIR). " + LPIPS_HELP
    return result


def format_table(result: dict) -> str:
    """A short human-readable table of an `evaluate_images` result."""
    def f(x: float | None, p: int = 3) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{p}f}"

    rows = [("fake", str(result.get("fake"))), ("real", str(result.get("real"))),
            ("images (fake / real)", f"{result['n_fake']} / {result['n_real']} at {result['resolution']} px"),
            ("FID", f(result["fid"], 2)),
            ("KID x 1e3", f"{result['kid_mean'] * 1e3:.3f} ± {result['kid_std'] * 1e3:.3f} "
                           f"({result['kid_subsets']} subsets of {result['kid_subset_size']})")]
    if "b_lpips" in result:
        rows += [("intra-cluster LPIPS", f(result["intra_lpips"], 4)), ("B-LPIPS", f(result["b_lpips"], 4))]
    else:
        rows.append(("LPIPS", "skipped"))
    w = max(len(r[0]) for r in rows)
    lines = [f"{a:<{w}}  {b}" for a, b in rows]
    lines += [f"warning: {x}" for x in result.get("warnings", [])]
    if "lpips_skipped" in result:
        lines.append(f"LPIPS skipped: {result['lpips_skipped']}")
    return "\n".join(lines)

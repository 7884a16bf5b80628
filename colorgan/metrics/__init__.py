"""Evaluation metrics: FID, KID (Inception features), intra-cluster LPIPS and B-LPIPS.

`evaluate_images` (colorgan.metrics.images) is the single entry point used by `colorgan eval` (folder vs
folder) and by the model-based mode (generated batches vs a real folder).
"""
from __future__ import annotations

import math

from colorgan.metrics.features import INCEPTION_HELP, FeatureNetwork, extract_features, folder_features
from colorgan.metrics.images import evaluate_images
from colorgan.metrics.lpips import LPIPS, LPIPS_HELP, cluster_lpips, load_lpips
from colorgan.metrics.stats import feature_stats, fid_from_features, fid_from_stats, kid, sqrtm_psd

__all__ = ["FeatureNetwork", "LPIPS", "INCEPTION_HELP", "LPIPS_HELP", "cluster_lpips", "evaluate_images",
           "extract_features", "feature_stats", "fid_from_features", "fid_from_stats", "folder_features",
           "format_table", "kid", "load_lpips", "sqrtm_psd"]


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

"""FID and KID from feature matrices (numpy, float64)."""
from __future__ import annotations

import numpy as np


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by symmetric eigendecomposition.

    The input is symmetrised first and negative eigenvalues (round-off) are clamped to zero.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {a.shape}")
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    w = np.sqrt(np.clip(w, 0.0, None))
    return (v * w) @ v.T


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, rowvar=False) of an N x D feature matrix, in float64."""
    f = _as_feats(feats, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(sqrt(S1) S2 sqrt(S1)))."""
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    r1 = sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    m = 0.5 * (m + m.T)
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two N x D feature matrices."""
    return fid_from_stats(*feature_stats(feats1), *feature_stats(feats2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> np.ndarray:
    """(gamma <x, y> + coef)^degree with gamma = 1/dim by default."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, **kernel_kw) -> float:
    """Unbiased MMD^2 estimate between samples x (m x D) and y (n x D) with the polynomial kernel."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x, **kernel_kw), polynomial_kernel(y, y, **kernel_kw), polynomial_kernel(x, y, **kernel_kw)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(feats1: np.ndarray, feats2: np.ndarray, n_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> dict:
    """Kernel Inception Distance: unbiased MMD^2 (cubic polynomial kernel) averaged over `n_subsets` random subsets.

    The subset size is clamped to min(subset_size, n1, n2); subsets are drawn without replacement with
    numpy.random.default_rng(seed). Returns {'mean', 'std', 'subset_size', 'n_subsets'}.
    """
    f1, f2 = _as_feats(feats1, "feats1"), _as_feats(feats2, "feats2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dims differ: {f1.shape[1]} vs {f2.shape[1]}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {f1.shape[0]} and {f2.shape[0]}")
    rng = np.random.default_rng(seed)
    vals = np.empty(n_subsets)
    for i in range(n_subsets):
        a = f1[rng.choice(f1.shape[0], m, replace=False)]
        b = f2[rng.choice(f2.shape[0], m, replace=False)]
        vals[i] = mmd2_unbiased(a, b)
    return {"mean": float(vals.mean()), "std": float(vals.std()), "subset_size": int(m), "n_subsets": int(n_subsets)}


def _as_feats(f: np.ndarray, what: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{what}: expected an N x D matrix, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{what}: contains NaN or inf")
    return f

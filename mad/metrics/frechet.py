"""Frechet distance between Gaussians fitted to feature sets (FID when the features are Inception's).

clean-fid's ``frechet_distance`` takes ``scipy.linalg.sqrtm(S1 S2, disp=False)``: a Schur
decomposition (~30 s for 2048 x 2048 on two cores), a deprecated argument, and on scipy 1.17 a
crash for 1 x 1 input. :func:`frechet_distance` instead uses ``Tr sqrt(S1 S2) = Tr sqrt(A S2 A)``
with ``A = S1^(1/2)`` (symmetric PSD, computed once for a fixed reference): one symmetric
eigenvalue problem, exact for any dimension and for singular covariances. The tests hold it to
clean-fid's value on well-conditioned d >= 2 cases and to the closed form in one dimension.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_fast", "fid_to_reference", "sqrt_psd",
           "fid_from_features",
           "fid_from_stats", "gaussian_w2"]


def _as_2d_float(feats: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency of the project
        pass
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise ValueError(f"{name}: features must be a 2-D (n_samples, n_features) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: features must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name}: a covariance needs at least 2 samples, got {arr.shape[0]}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf values")
    return arr


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (n, d) features in float64, as clean-fid computes them
    (``np.mean(axis=0)``, ``np.cov(rowvar=False)``: the unbiased n-1 covariance)."""
    arr = _as_2d_float(feats, "feats")
    return np.mean(arr, axis=0), np.atleast_2d(np.cov(arr, rowvar=False))


def _check_gaussians(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> tuple:
    """Both Gaussians as float64 arrays of matching shapes, or a one-line ValueError."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"means have different widths: {mu1.shape[0]} vs {mu2.shape[0]}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be {d}x{d}, got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf values")
    return mu1, sigma1, mu2, sigma2


def _resolved(ev: Any) -> Any:
    """Eigenvalues of a PSD matrix with those below its round-off level (largest * size * eps) set to 0.

    A singular product's zero eigenvalues come out as +-1e-16-ish noise, and the square root turns
    each into ~1e-8: summed over hundreds of null directions that was a relative error of ~1e-7
    in the distance. Zeroed, singular cases match the exact value to ~1e-14."""
    import torch

    tol = float(ev.max().clamp_min(0)) * len(ev) * torch.finfo(ev.dtype).eps
    return torch.where(ev > tol, ev, torch.zeros_like(ev))


def sqrt_psd(sigma: Any) -> np.ndarray:
    """Symmetric square root of a covariance (negative round-off eigenvalues clipped to 0)."""
    import torch

    s = torch.as_tensor(np.atleast_2d(np.asarray(sigma, dtype=np.float64)))
    w, v = torch.linalg.eigh((s + s.T) / 2)  # torch: MKL LAPACK, several times faster than numpy's here
    return ((v * w.clamp_min(0).sqrt()) @ v.T).numpy()


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, sigma1_sqrt: Any = None) -> float:
    """Squared Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2), a plain float.

    ``|mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr sqrt(A S2 A)`` with ``A = S1^(1/2)``: exact for any
    dimension and for singular (even all-zero) covariances, since ``A S2 A`` is symmetric PSD with
    the eigenvalues of ``S1 S2``. Pass ``sigma1_sqrt`` (from :func:`sqrt_psd`) when ``sigma1`` is
    fixed, e.g. the real set. In one dimension it is the closed form ``(mu1 - mu2)^2 + (s1 - s2)^2``
    with ``s`` the standard deviations, which has no cancellation when ``s1`` is close to ``s2``.
    Round-off below zero is returned as 0."""
    import torch

    mu1, sigma1, mu2, sigma2 = _check_gaussians(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    if mu1.shape[0] == 1:
        s1, s2 = math.sqrt(max(sigma1[0, 0], 0.0)), math.sqrt(max(sigma2[0, 0], 0.0))
        return float(diff[0] ** 2 + (s1 - s2) ** 2)
    a = torch.as_tensor(sqrt_psd(sigma1) if sigma1_sqrt is None else np.asarray(sigma1_sqrt, dtype=np.float64))
    m = a @ torch.as_tensor(sigma2) @ a
    ev = _resolved(torch.linalg.eigvalsh((m + m.T) / 2))
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * float(ev.sqrt().sum())
    return max(float(value), 0.0)


def frechet_distance_fast(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, sigma1_sqrt: Any = None) -> float:
    """Alias of :func:`frechet_distance` (kept for callers of the former fast path)."""
    return frechet_distance(mu1, sigma1, mu2, sigma2, sigma1_sqrt)


def fid_to_reference(mu1: Any, sigma1: Any, sigma1_sqrt: Any, feats2: Any) -> float:
    """FID of features ``feats2`` against a fixed reference (mu1, sigma1, sqrt_psd(sigma1)).

    With ``Y = (X2 - mean) A / sqrt(n - 1)`` and ``A = S1^(1/2)``: ``A S2 A = Y^T Y``, whose nonzero
    eigenvalues are those of the smaller Gram matrix ``Y Y^T``. So 500 generated samples against
    2048-d Inception statistics cost a 500 x 500 eigenvalue problem, not a 2048 x 2048 one."""
    import torch

    x = torch.as_tensor(_as_2d_float(feats2, "feats2"))
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    if x.shape[1] != mu1.shape[0]:
        raise ValueError(f"features have width {x.shape[1]}, the reference {mu1.shape[0]}")
    n = x.shape[0]
    if x.shape[1] == 1:  # the 1-D closed form, free of cancellation
        return frechet_distance(mu1, sigma1, x.mean(0).numpy(), np.atleast_2d(float(x.var(0, correction=1))))
    mu2 = x.mean(0)
    xc = x - mu2
    y = (xc @ torch.as_tensor(np.asarray(sigma1_sqrt, dtype=np.float64))) / math.sqrt(n - 1)
    gram = y @ y.T if n <= y.shape[1] else y.T @ y
    ev = _resolved(torch.linalg.eigvalsh((gram + gram.T) / 2))
    diff = mu1 - mu2.numpy()
    trace2 = float(xc.pow(2).sum()) / (n - 1)
    return max(float(diff @ diff + np.trace(sigma1) + trace2 - 2 * float(ev.sqrt().sum())), 0.0)


def fid_from_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Alias of :func:`frechet_distance` named for the FID use."""
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def fid_from_features(feats1: Any, feats2: Any) -> float:
    """FID between two (n, d) feature sets (clean-fid's ``fid_from_feats``)."""
    a = _as_2d_float(feats1, "feats1")
    b = _as_2d_float(feats2, "feats2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets have different widths: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def gaussian_w2(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Wasserstein-2 distance (not squared) between two Gaussians, in closed form."""
    return math.sqrt(max(frechet_distance(mu1, sigma1, mu2, sigma2), 0.0))

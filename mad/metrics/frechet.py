"""Frechet distance between Gaussians fitted to feature sets (FID when the features are Inception's).

:func:`frechet_distance` is clean-fid's own ``cleanfid.fid.frechet_distance`` (Sutherland's
stable version) with input checks. Its ``scipy.linalg.sqrtm`` of a 2048 x 2048 product takes
~30 s on two cores, every generation, so the per-generation path :func:`frechet_distance_fast`
uses the identity ``Tr sqrt(S1 S2) = Tr sqrt(A S2 A)`` with ``A = S1^(1/2)`` (symmetric PSD,
computed once for the fixed reference): one symmetric eigenvalue problem instead of a Schur
decomposition. Tests hold it to clean-fid's value (relative 1e-6; measured ~1e-8 even for
rank-deficient covariances).
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
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


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Squared Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2),
    through ``cleanfid.fid.frechet_distance``; returns a plain float."""
    mu1, sigma1, mu2, sigma2 = _check_gaussians(mu1, sigma1, mu2, sigma2)
    from cleanfid.fid import frechet_distance as _clean_frechet
    from scipy.linalg import LinAlgWarning

    # clean-fid prints a notice when it regularises a singular product, and scipy warns about
    # singular products (usual: fewer samples than features, or dead ReLU units); keep logs clean
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid passes sqrtm(disp=...), deprecated in scipy 1.17
        value = _clean_frechet(mu1, sigma1, mu2, sigma2)
    return float(np.real(value))


def sqrt_psd(sigma: Any) -> np.ndarray:
    """Symmetric square root of a covariance (negative round-off eigenvalues clipped to 0)."""
    import torch

    s = torch.as_tensor(np.atleast_2d(np.asarray(sigma, dtype=np.float64)))
    w, v = torch.linalg.eigh((s + s.T) / 2)  # torch: MKL LAPACK, several times faster than numpy's here
    return ((v * w.clamp_min(0).sqrt()) @ v.T).numpy()


def frechet_distance_fast(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, sigma1_sqrt: Any = None) -> float:
    """Same value as :func:`frechet_distance` (to round-off) via ``Tr sqrt(A S2 A)``, ``A = S1^(1/2)``;
    pass ``sigma1_sqrt`` (from :func:`sqrt_psd`) when ``sigma1`` is fixed, e.g. the real set."""
    import torch

    mu1, sigma1, mu2, sigma2 = _check_gaussians(mu1, sigma1, mu2, sigma2)
    a = torch.as_tensor(sqrt_psd(sigma1) if sigma1_sqrt is None else np.asarray(sigma1_sqrt, dtype=np.float64))
    m = a @ torch.as_tensor(sigma2) @ a
    # A S2 A is symmetric PSD in exact arithmetic: its eigenvalues are those of S1 S2
    ev = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * float(ev.sqrt().sum()))


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
    mu2 = x.mean(0)
    xc = x - mu2
    y = (xc @ torch.as_tensor(np.asarray(sigma1_sqrt, dtype=np.float64))) / math.sqrt(n - 1)
    gram = y @ y.T if n <= y.shape[1] else y.T @ y
    ev = torch.linalg.eigvalsh((gram + gram.T) / 2).clamp_min(0)
    diff = mu1 - mu2.numpy()
    trace2 = float(xc.pow(2).sum()) / (n - 1)
    return float(diff @ diff + np.trace(sigma1) + trace2 - 2 * float(ev.sqrt().sum()))


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

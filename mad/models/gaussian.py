"""The Gaussian model of MAD section 3.1: fit (mu, Sigma), sample N(mu, lambda * Sigma)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mad.config import Estimator, ModelConfig, SampleConfig
from mad.data.vectors import RealDistribution
from mad.metrics.frechet import gaussian_w2

def fit(x: np.ndarray, estimator: Estimator) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"fitting a Gaussian needs at least 2 samples, got {len(x)}")
    mean = x.mean(axis=0)
    # ddof=1: unbiased (MAD's main analysis); ddof=0: the MLE, which shrinks by (n-1)/n per generation.
    cov = np.cov(x, rowvar=False, ddof=1 if estimator == Estimator.unbiased else 0)
    return mean, np.atleast_2d(cov)


def train(x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model: ModelConfig, train=None,
          seed: int = 0, init_state=None, progress: bool = False, device=None) -> dict[str, torch.Tensor]:
    mean, cov = fit(x, model.estimator)
    return {"mean": torch.from_numpy(mean), "cov": torch.from_numpy(cov)}


def sample(state: dict[str, torch.Tensor], n: int, num_classes: int, sample_shape, model: ModelConfig,
           sample: SampleConfig, seed: int, class_probs=None, progress: bool = False, device=None
           ) -> tuple[np.ndarray, None]:
    """Draw from N(mu, lambda * Sigma): MAD's sampling bias for the Gaussian."""
    mean = state["mean"].numpy()
    cov = sample.bias * state["cov"].numpy()
    rng = np.random.default_rng(seed)
    # An eigen-factor, not Cholesky: a collapsed covariance is singular, and sampling must still work.
    w, v = np.linalg.eigh(cov)
    factor = v * np.sqrt(np.clip(w, 0.0, None))
    return mean + rng.standard_normal((n, len(mean))) @ factor.T, None


def log_det(cov: np.ndarray) -> Optional[float]:
    """log det of a covariance via slogdet, or None when it is singular (log det = -inf).

    Singular means numerically rank-deficient (numpy's ``matrix_rank`` tolerance, smallest
    eigenvalue <= d * eps * largest): with fewer samples than dimensions the fit is singular in
    exact arithmetic, yet slogdet of the rounded matrix would return a large finite number."""
    cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    w = np.linalg.eigvalsh((cov + cov.T) / 2)
    if w[-1] <= 0 or w[0] <= w[-1] * len(w) * np.finfo(np.float64).eps:
        return None
    sign, value = np.linalg.slogdet(cov)
    return float(value) if sign > 0 and np.isfinite(value) else None


def closed_form_metrics(state: dict[str, torch.Tensor], bias: float, real: RealDistribution
                        ) -> dict[str, Optional[float]]:
    """w2 between the model's sampling distribution N(mu, lambda Sigma) and the real one, w2_fit between the
    fitted N(mu, Sigma) and the real one (equal at lambda = 1); trace, log-det and mean drift of the fit.

    ``logdet_ratio`` = log det Sigma_t - log det Sigma_real (``logdet_ratio_per_dim``: divided by d)
    follows the typical chain, where ``trace_ratio`` follows the mean; it is None (JSON null) when
    either covariance is singular, i.e. when the ratio is -inf (e.g. fewer samples than dimensions)."""
    mean, cov = state["mean"].numpy(), state["cov"].numpy()
    real_mean, real_cov = real.mean, real.cov
    out: dict[str, Optional[float]] = {
        "trace_ratio": float(np.trace(cov) / np.trace(real_cov)),
        "mean_shift": float(np.linalg.norm(mean - real_mean)),
    }
    ld, ld_real = log_det(cov), log_det(real_cov)
    ratio = None if ld is None or ld_real is None else ld - ld_real
    out["logdet_ratio"] = ratio
    out["logdet_ratio_per_dim"] = None if ratio is None else ratio / cov.shape[0]
    if real.is_gaussian:  # no closed form against a mixture (toy2d)
        out["w2"] = gaussian_w2(mean, bias * cov, real_mean, real_cov)
        out["w2_fit"] = out["w2"] if bias == 1.0 else gaussian_w2(mean, cov, real_mean, real_cov)
    return out

"""Mode metrics of the mode-collapse literature, for a real distribution that is a Gaussian mixture.

A sample is *high quality* when it lies within 3 standard deviations of some mode's centre
(Mahalanobis distance <= 3 under that mode's covariance); a mode is *covered* when it holds at
least ``MIN_SHARE`` of its expected number of samples among them. With 25 equal modes and
2,500 samples that is 20 samples, the threshold of Srivastava et al. (VEEGAN, 2017) on the
25-Gaussians grid that MAD's appendix uses.
"""
from __future__ import annotations

import numpy as np

from mad.data.vectors import RealDistribution

RADIUS = 3.0  # in standard deviations of a mode
MIN_SHARE = 0.2  # of a mode's expected count (weight x samples)


def mode_metrics(x: np.ndarray, real: RealDistribution, radius: float = RADIUS,
                 min_share: float = MIN_SHARE) -> dict[str, float]:
    """``modes_covered`` (a count, out of the mixture's components) and ``high_quality_frac`` of samples ``x``."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, k = len(x), len(real.weights)
    if n == 0:
        return {"modes_covered": 0.0, "high_quality_frac": 0.0}
    # squared Mahalanobis distance of every sample to every mode, through each mode's inverse Cholesky factor
    d2 = np.empty((n, k))
    for j in range(k):
        inv_chol = np.linalg.inv(np.linalg.cholesky(real.covs[j]))
        d2[:, j] = (((x - real.means[j]) @ inv_chol.T) ** 2).sum(axis=1)
    nearest = d2.argmin(axis=1)
    close = d2[np.arange(n), nearest] <= radius**2
    counts = np.bincount(nearest[close], minlength=k)
    covered = counts >= min_share * real.weights * n
    return {"modes_covered": float(covered.sum()), "high_quality_frac": float(close.mean())}

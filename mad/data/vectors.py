"""Real distributions given in closed form: a Gaussian and MAD's 2-D 25-mode mixture."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RealDistribution:
    """What is known in closed form about the real distribution (vector data only).

    ``mean`` and ``cov`` are its first two moments; ``weights``, ``means`` and ``covs`` describe
    it as a mixture of Gaussians, one component when it is a Gaussian. Built by the data layer
    (``mad.data.RealPool.distribution``); None for data known only through samples (images).
    """

    mean: np.ndarray
    cov: np.ndarray
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    covs: np.ndarray  # (K, d, d)

    @classmethod
    def gaussian(cls, mean: np.ndarray, cov: np.ndarray) -> "RealDistribution":
        mean, cov = np.asarray(mean, dtype=float), np.atleast_2d(np.asarray(cov, dtype=float))
        return cls(mean, cov, np.ones(1), mean[None], cov[None])

    @property
    def is_gaussian(self) -> bool:
        return len(self.weights) == 1

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


def gaussian_moments(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """MAD 3.1: the real distribution is N(0, I_dim)."""
    return np.zeros(dim), np.eye(dim)


def draw_gaussian(mean: np.ndarray, cov: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # Row i depends only on the i-th draw, so a draw of n is a prefix of a draw of m > n.
    chol = np.linalg.cholesky(cov)
    return mean + rng.standard_normal((n, mean.shape[0])) @ chol.T


TOY2D_MODES = np.array([(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], dtype=float)
TOY2D_STD = 0.05 ** 0.5  # the default of data.mode_std (MAD.md does not give MAD's appendix value)


def draw_toy2d(n: int, seq: np.random.SeedSequence, std: float = TOY2D_STD) -> np.ndarray:
    # Separate streams for modes and noise keep draws prefix-consistent.
    mode_seq, noise_seq = seq.spawn(2)
    modes = np.random.default_rng(mode_seq).integers(0, len(TOY2D_MODES), size=n)
    noise = np.random.default_rng(noise_seq).standard_normal((n, 2)) * std
    return TOY2D_MODES[modes] + noise


def toy2d_moments(std: float = TOY2D_STD) -> tuple[np.ndarray, np.ndarray]:
    mean = TOY2D_MODES.mean(0)
    cov = np.cov(TOY2D_MODES.T, bias=True) + std**2 * np.eye(2)
    return mean, cov


def toy2d_distribution(std: float = TOY2D_STD) -> RealDistribution:
    """The 25-mode grid as a mixture: equal weights, isotropic components of std ``std`` (data.mode_std)."""
    mean, cov = toy2d_moments(std)
    k = len(TOY2D_MODES)
    return RealDistribution(mean, cov, np.full(k, 1.0 / k), TOY2D_MODES.copy(),
                            np.tile(std**2 * np.eye(2), (k, 1, 1)))

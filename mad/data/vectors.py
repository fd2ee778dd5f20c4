"""Real distributions given in closed form: a Gaussian and MAD's 2-D 25-mode mixture."""
from __future__ import annotations

import numpy as np


def gaussian_moments(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """MAD 3.1: the real distribution is N(0, I_dim)."""
    return np.zeros(dim), np.eye(dim)


def draw_gaussian(mean: np.ndarray, cov: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # Row i depends only on the i-th draw, so a draw of n is a prefix of a draw of m > n.
    chol = np.linalg.cholesky(cov)
    return mean + rng.standard_normal((n, mean.shape[0])) @ chol.T


TOY2D_MODES = np.array([(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], dtype=float)
TOY2D_STD = 0.05 ** 0.5  # MAD appendix / the GAN literature's 25-Gaussians grid


def draw_toy2d(n: int, seq: np.random.SeedSequence) -> np.ndarray:
    # Separate streams for modes and noise keep draws prefix-consistent.
    mode_seq, noise_seq = seq.spawn(2)
    modes = np.random.default_rng(mode_seq).integers(0, len(TOY2D_MODES), size=n)
    noise = np.random.default_rng(noise_seq).standard_normal((n, 2)) * TOY2D_STD
    return TOY2D_MODES[modes] + noise


def toy2d_moments() -> tuple[np.ndarray, np.ndarray]:
    mean = TOY2D_MODES.mean(0)
    cov = np.cov(TOY2D_MODES.T, bias=True) + TOY2D_STD**2 * np.eye(2)
    return mean, cov

"""Real data: a training pool (finite array, or a distribution to draw from) and a held-out reference set.

Draws from the pool are named by a stream number (see ``loops.base``): stream s with n
samples is the first n of a seeded permutation of a finite pool, or the first n of a
seeded stream of draws from a distribution. So a smaller draw of a stream is always a
prefix of a larger one, and the same (seed, stream, n) gives the same samples on any node.

Fresh data on a finite pool (fresh_data loop): each generation takes a new random subset
of the training pool, drawn without replacement within the generation; subsets of
different generations may overlap. The reference set is held out and never drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mad import seeding
from mad.config import DataConfig, DataName
from mad.data import vectors


@dataclass
class RealPool:
    name: str
    x: Optional[np.ndarray] = None  # finite pool: uint8 NCHW images or float vectors
    y: Optional[np.ndarray] = None  # int64 labels, or None
    mean: Optional[np.ndarray] = None  # a Gaussian distribution instead of a finite pool
    cov: Optional[np.ndarray] = None
    num_classes: int = 0

    @property
    def size(self) -> Optional[int]:
        return None if self.x is None else len(self.x)

    @property
    def sample_shape(self) -> tuple:
        if self.x is not None:
            return tuple(self.x.shape[1:])
        return (2,) if self.name == DataName.toy2d.value else (len(self.mean),)

    def draw(self, seed: int, stream: int, n: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        seq = seeding.seed_sequence(seed, seeding.REAL, stream)
        if self.x is not None:
            if n > len(self.x):
                raise ValueError(f"asked for {n} real samples but the pool holds {len(self.x)}")
            idx = np.random.default_rng(seq).permutation(len(self.x))[:n]
            return self.x[idx], (None if self.y is None else self.y[idx])
        if self.name == DataName.toy2d.value:
            return vectors.draw_toy2d(n, seq), None
        return vectors.draw_gaussian(self.mean, self.cov, n, np.random.default_rng(seq)), None

    def class_histogram(self) -> Optional[np.ndarray]:
        if self.y is None or not self.num_classes:
            return None
        return np.bincount(self.y, minlength=self.num_classes) / len(self.y)


class DataUnavailableError(RuntimeError):
    """A data set that cannot be had here (e.g. a download without internet); the message says what to do."""


class DataError(ValueError):
    """Real data that cannot be used as given (an unreadable image, images of different sizes, a
    reference set larger than the data); the one-line message names the file or the key."""


def load_real(cfg: DataConfig, seed: int) -> tuple[RealPool, tuple[np.ndarray, Optional[np.ndarray]]]:
    """The training pool and the held-out reference set ``(x, y)`` for the metrics."""
    if cfg.name == DataName.gaussian:
        mean, cov = vectors.gaussian_moments(cfg.dim)
        pool = RealPool(cfg.name.value, mean=mean, cov=cov)
        ref_seq = seeding.seed_sequence(seed, seeding.REFERENCE)
        ref = vectors.draw_gaussian(mean, cov, cfg.n_reference, np.random.default_rng(ref_seq))
        return pool, (ref, None)
    if cfg.name == DataName.toy2d:
        mean, cov = vectors.toy2d_moments()
        pool = RealPool(cfg.name.value, mean=mean, cov=cov)
        return pool, (vectors.draw_toy2d(cfg.n_reference, seeding.seed_sequence(seed, seeding.REFERENCE)), None)
    from mad.data.images import load_images

    train_x, train_y, ref_x, ref_y, num_classes = load_images(cfg, seed)
    pool = RealPool(cfg.name.value, x=train_x, y=train_y, num_classes=num_classes)
    return pool, (ref_x, ref_y)

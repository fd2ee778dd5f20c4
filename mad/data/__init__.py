"""Real data: a training pool (finite array, or a distribution to draw from) and a held-out reference set.

A draw is named by a stream, a start position and a count (``loops.base.RealPart``); the
same (seed, stream, start, n) gives the same samples on any node.

Finite pool: stream s is one seeded order of the pool (a permutation keyed by the chain's
seed and s), and a draw is positions [start, start + n) of it. Every loop reads stream 0, so
a chain sees one order of its pool: generation 1 is its first n_init positions, and the
fresh-data loop's later draws are the following positions, pairwise disjoint and disjoint
from generation 1's set (sampling without replacement across the chain). Positions past the
pool size exist only when the config opts in with ``loop.allow_real_reuse``: position p then
lies in a further seeded order p // pool_size (orders 1, 2, ... each a new permutation), so
samples come back; ``seen_fraction`` says how many of a draw the chain trained on before.

Distribution (gaussian, toy2d): there is nothing to run out of. A draw starting at position 0
is the first n of a seeded sequence of draws (so a smaller draw is a prefix of a larger one,
as on a pool); a draw starting later is n new independent samples from a sequence keyed by
(stream, start). The loops never ask for overlapping positions with different starts.

The reference set is held out of the pool and never drawn for training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

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
    mode_std: float = vectors.TOY2D_STD  # toy2d: each mode's std (data.mode_std)

    @property
    def size(self) -> Optional[int]:
        return None if self.x is None else len(self.x)

    @property
    def sample_shape(self) -> tuple:
        if self.x is not None:
            return tuple(self.x.shape[1:])
        return (2,) if self.name == DataName.toy2d.value else (len(self.mean),)

    def draw(self, seed: int, stream: int, n: int, start: int = 0) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Positions [start, start + n) of real stream ``stream`` (see the module docstring)."""
        if self.x is not None:
            idx = pool_indices(len(self.x), seed, stream, start, n)
            return self.x[idx], (None if self.y is None else self.y[idx])
        # start 0 keeps the stream's own key, so generation 1 and the fixed set nest as on a pool
        seq = seeding.seed_sequence(seed, seeding.REAL, stream, *((start,) if start else ()))
        if self.name == DataName.toy2d.value:
            return vectors.draw_toy2d(n, seq, self.mode_std), None
        return vectors.draw_gaussian(self.mean, self.cov, n, np.random.default_rng(seq)), None

    def distribution(self) -> Optional[vectors.RealDistribution]:
        """The real distribution in closed form, for families' closed-form metrics; None for a finite pool."""
        if self.mean is None:
            return None
        if self.name == DataName.toy2d.value:
            return vectors.toy2d_distribution(self.mode_std)
        return vectors.RealDistribution.gaussian(self.mean, self.cov)

    def class_histogram(self) -> Optional[np.ndarray]:
        if self.y is None or not self.num_classes:
            return None
        return np.bincount(self.y, minlength=self.num_classes) / len(self.y)


def _order(pool_size: int, seed: int, stream: int, k: int) -> np.ndarray:
    # Order 0 is keyed as it always was, so runs within the pool keep their data; orders past it
    # (only with loop.allow_real_reuse) are further independent permutations.
    keys = (stream,) if k == 0 else (stream, k)
    return np.random.default_rng(seeding.seed_sequence(seed, seeding.REAL, *keys)).permutation(pool_size)


def pool_indices(pool_size: int, seed: int, stream: int, start: int, n: int,
                 orders: Optional[dict] = None) -> np.ndarray:
    """Indices into a finite pool of positions [start, start + n) of real stream ``stream``.

    Position p is entry p % pool_size of seeded order p // pool_size, so positions below the
    pool size are distinct samples and the positions after them wrap into new permutations.
    ``orders`` caches the permutations between calls with the same pool size and seed.
    """
    orders = {} if orders is None else orders
    pos = np.arange(start, start + n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    for k in np.unique(pos // pool_size):
        key = (stream, int(k))
        if key not in orders:
            orders[key] = _order(pool_size, seed, stream, int(k))
        sel = pos // pool_size == k
        out[sel] = orders[key][pos[sel] % pool_size]
    return out


def seen_fraction(pool_size: int, seed: int, earlier: Sequence[tuple[int, int, int]],
                  now: tuple[int, int, int]) -> float:
    """The fraction of draw ``now`` = (stream, start, n) whose pool samples lie in the ``earlier`` draws.

    ``earlier`` are the (stream, start, n) of every real set the chain trained on before. A pure
    function of positions and seeds, so a resumed run computes the same value. 0.0 for an empty draw.
    """
    stream, start, n = now
    if n <= 0:
        return 0.0
    orders: dict = {}
    before = [pool_indices(pool_size, seed, *part, orders=orders) for part in earlier if part[2] > 0]
    if not before:
        return 0.0
    idx = pool_indices(pool_size, seed, stream, start, n, orders=orders)
    return float(np.isin(idx, np.concatenate(before)).mean())


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
        std = float(cfg.mode_std)
        mean, cov = vectors.toy2d_moments(std)
        pool = RealPool(cfg.name.value, mean=mean, cov=cov, mode_std=std)
        return pool, (vectors.draw_toy2d(cfg.n_reference, seeding.seed_sequence(seed, seeding.REFERENCE), std), None)
    from mad.data.images import load_images

    train_x, train_y, ref_x, ref_y, num_classes = load_images(cfg, seed)
    pool = RealPool(cfg.name.value, x=train_x, y=train_y, num_classes=num_classes)
    return pool, (ref_x, ref_y)

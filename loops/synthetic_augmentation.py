"""Synthetic augmentation loop (MAD 2.2): a FIXED real set, the same every generation, plus synthetic."""
from __future__ import annotations

from typing import Optional

import numpy as np

from loops.base import FIXED_STREAM, Manifest, RealPart, first_generation, first_real, select_synthetic
from mad.config import LoopConfig, n_synth_at, resolved_counts


def real_part(gen: int, loop: LoopConfig) -> Optional[RealPart]:
    """The fixed set: positions [0, n_real) of the chain's real order, identical every generation >= 2.

    It nests with generation 1's set: a subset of it when n_real < n_init, generation 1's set plus
    n_real - n_init samples generation 1 never saw when n_real > n_init.
    """
    if gen == 1:
        return first_real(loop.n_init)
    n_real, _ = resolved_counts(loop)
    return RealPart(FIXED_STREAM, n_real, 0)


def next_training_set(gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    if gen == 1:
        return first_generation(loop.n_init)
    n_synth = n_synth_at(loop, gen)
    return Manifest(gen=gen, real=real_part(gen, loop),
                    synth=select_synthetic(gen, loop, n_synth, synth_sizes, rng))

"""Synthetic augmentation loop (MAD 2.2): a FIXED real set, the same every generation, plus synthetic."""
from __future__ import annotations

import numpy as np

from loops.base import FIXED_STREAM, Manifest, RealPart, first_generation, select_synthetic
from mad.config import LoopConfig, resolved_counts


def next_training_set(gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    if gen == 1:
        return first_generation(loop.n_init)
    n_real, n_synth = resolved_counts(loop)
    # Same stream as generation 1: the fixed set is a prefix of (or extends) the initial real set.
    return Manifest(gen=gen, real=RealPart(FIXED_STREAM, n_real),
                    synth=select_synthetic(gen, loop, n_synth, synth_sizes, rng))

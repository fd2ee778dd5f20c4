"""Fully synthetic loop (MAD 2.2): from generation 2 on, synthetic samples only."""
from __future__ import annotations

import numpy as np

from loops.base import Manifest, first_generation, select_synthetic
from mad.config import LoopConfig, resolved_counts


def next_training_set(gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    if gen == 1:
        return first_generation(loop.n_init)
    _, n_synth = resolved_counts(loop)
    return Manifest(gen=gen, real=None, synth=select_synthetic(gen, loop, n_synth, synth_sizes, rng))

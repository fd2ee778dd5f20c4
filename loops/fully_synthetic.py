"""Fully synthetic loop (MAD 2.2): from generation 2 on, synthetic samples only."""
from __future__ import annotations

from typing import Optional

import numpy as np

from loops.base import Manifest, RealPart, first_generation, first_real, select_synthetic
from mad.config import LoopConfig, n_synth_at


def real_part(gen: int, loop: LoopConfig) -> Optional[RealPart]:
    """Generation 1's real set, then no real data at all."""
    return first_real(loop.n_init) if gen == 1 else None


def next_training_set(gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    if gen == 1:
        return first_generation(loop.n_init)
    n_synth = n_synth_at(loop, gen)
    return Manifest(gen=gen, real=None, synth=select_synthetic(gen, loop, n_synth, synth_sizes, rng))

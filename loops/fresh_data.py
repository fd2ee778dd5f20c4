"""Fresh data loop (MAD 2.2, section 5): a FRESH draw of n_real real samples each generation, plus synthetic."""
from __future__ import annotations

import numpy as np

from loops.base import Manifest, RealPart, first_generation, select_synthetic
from mad.config import LoopConfig, resolved_counts


def next_training_set(gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    if gen == 1:
        return first_generation(loop.n_init)
    n_real, n_synth = resolved_counts(loop)
    # Stream = gen: an independent draw per generation (a new random subset on a finite pool).
    return Manifest(gen=gen, real=RealPart(gen, n_real),
                    synth=select_synthetic(gen, loop, n_synth, synth_sizes, rng))

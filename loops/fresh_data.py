"""Fresh data loop (MAD 2.2, section 5): n_real real samples never seen before each generation, plus synthetic."""
from __future__ import annotations

from typing import Optional

import numpy as np

from loops.base import FIXED_STREAM, Manifest, RealPart, first_generation, first_real, select_synthetic
from mad.config import LoopConfig, n_synth_at, resolved_counts


def real_part(gen: int, loop: LoopConfig) -> Optional[RealPart]:
    """The next n_real positions of the chain's real order that no earlier generation used.

    Sampling without replacement across the chain: on a finite pool these samples are disjoint from
    generation 1's set and from every earlier fresh draw (mad.config refuses a chain that would run
    past the pool unless loop.allow_real_reuse); from a distribution they are new independent draws.
    """
    if gen == 1:
        return first_real(loop.n_init)
    n_real, _ = resolved_counts(loop)
    return RealPart(FIXED_STREAM, n_real, loop.n_init + (gen - 2) * n_real)


def next_training_set(gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    if gen == 1:
        return first_generation(loop.n_init)
    n_synth = n_synth_at(loop, gen)
    return Manifest(gen=gen, real=real_part(gen, loop),
                    synth=select_synthetic(gen, loop, n_synth, synth_sizes, rng))

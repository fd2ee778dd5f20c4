"""Loop policies: one small pure module per loop kind.

Each exposes ``next_training_set(gen, synth_sizes, loop_cfg, rng) -> Manifest``: given the
generation, the sizes of the synthetic sets made so far and a seeded rng, it names the
next training set by reference (which positions of the chain's real order, which synthetic
sets) without touching data. ``real_part(gen, loop_cfg)`` is the real part alone: it depends on
the config only, so the real data of any generation can be named again later (on resume too).
"""
from __future__ import annotations

from loops import fresh_data, fully_synthetic, synthetic_augmentation
from typing import Optional

import numpy as np

from loops.base import FIXED_STREAM, Manifest, RealPart, SynthPart, subsample
from mad.config import LoopConfig, LoopKind

POLICIES = {
    LoopKind.fully_synthetic: fully_synthetic.next_training_set,
    LoopKind.synthetic_augmentation: synthetic_augmentation.next_training_set,
    LoopKind.fresh_data: fresh_data.next_training_set,
}


REAL_PARTS = {
    LoopKind.fully_synthetic: fully_synthetic.real_part,
    LoopKind.synthetic_augmentation: synthetic_augmentation.real_part,
    LoopKind.fresh_data: fresh_data.real_part,
}


def next_training_set(kind: LoopKind, gen: int, synth_sizes: dict[int, int], loop: LoopConfig,
                      rng: np.random.Generator) -> Manifest:
    """The loop policy's manifest; from generation 2 on, subsampled to ``loop.subsample_to`` (drawn from
    the same rng after the policy's own draws)."""
    manifest = POLICIES[kind](gen, synth_sizes, loop, rng)
    if gen > 1 and loop.subsample_to is not None:
        manifest = subsample(manifest, loop.subsample_to, rng)
    return manifest


def real_part(kind: LoopKind, gen: int, loop: LoopConfig) -> Optional[RealPart]:
    """The real part of generation ``gen``'s manifest (None: no real data), from the config alone."""
    return REAL_PARTS[kind](gen, loop)


__all__ = ["FIXED_STREAM", "Manifest", "RealPart", "SynthPart", "POLICIES", "next_training_set", "real_part"]

"""Loop policies: one small pure module per loop kind.

Each exposes ``next_training_set(gen, synth_sizes, loop_cfg, rng) -> Manifest``: given the
generation, the sizes of the synthetic sets made so far and a seeded rng, it names the
next training set by reference (which real draw, which synthetic sets) without touching data.
"""
from __future__ import annotations

from loops import fresh_data, fully_synthetic, synthetic_augmentation
from loops.base import FIXED_STREAM, Manifest, RealPart, SynthPart
from mad.config import LoopKind

POLICIES = {
    LoopKind.fully_synthetic: fully_synthetic.next_training_set,
    LoopKind.synthetic_augmentation: synthetic_augmentation.next_training_set,
    LoopKind.fresh_data: fresh_data.next_training_set,
}


def next_training_set(kind: LoopKind, *args, **kwargs) -> Manifest:
    return POLICIES[kind](*args, **kwargs)


__all__ = ["FIXED_STREAM", "Manifest", "RealPart", "SynthPart", "POLICIES", "next_training_set"]

"""Derived seeds: never global, always SeedSequence([seed, gen, stage, ...])."""
from __future__ import annotations

import numpy as np

# Stages of a generation; each gets its own independent stream.
TRAIN, SAMPLE, LOOP, REAL, REFERENCE, EVAL, STAGE = 1, 2, 3, 4, 5, 6, 7


def seed_sequence(seed: int, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *[int(k) for k in keys]])


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit integer seed for torch / libraries that take an int."""
    return int(seed_sequence(seed, *keys).generate_state(1, np.uint32)[0] >> 1)


def derive_seed64(seed: int, *keys: int) -> int:
    """A 63-bit integer seed, for torch.Generator (which takes 64 bits)."""
    return int(seed_sequence(seed, *keys).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, *keys))

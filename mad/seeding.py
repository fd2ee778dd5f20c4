"""Derived seeds: never global, always SeedSequence([seed, gen, stage, ...]).

numpy's SeedSequence sees its entropy as 32-bit words, which makes two kinds of key tuples equal:

* a key of 2**32 or more spills into a second word, so (2**32 * a + b, g, s) == (b, a, g, s);
* up to 4 words, trailing zero words are padding, so (a, 0) == (a) and (s, g, SAMPLE, 0) == (s, g, SAMPLE).

The first is refused here (every key is one word: ``seed_sequence`` raises, and ``mad.config`` refuses a
``seed`` of 2**32 or more in one line). The second cannot be refused without changing every stream
(shard 0, position 0 and the families' ``(seed, 0)`` stream end in 0), so the key forms in use are kept
apart by construction instead; ``tests/test_small_things.py`` records every key tuple a run's stages
derive and checks that no two of them are equal to numpy. The forms, from a chain's ``seed`` s:

* ``(s, gen, TRAIN | LOOP | STAGE)`` and ``(s, gen, SAMPLE, shard)``: a generation's stages (gen >= 1;
  the stage constants are never 0, so a 3-key form never loses a word);
* ``(s, REAL, stream[, start or k])``: real draws and pool orders; ``(s, REFERENCE)``, ``(s, STAGE)``:
  the reference set and the self-correction centres;
* inside a family, from the derived seed x it is given: ``(x, 0)``, ``(x, 1)``, ``(x, 2[, rank])``.
"""
from __future__ import annotations

import numpy as np

# Stages of a generation; each gets its own independent stream.
TRAIN, SAMPLE, LOOP, REAL, REFERENCE, EVAL, STAGE = 1, 2, 3, 4, 5, 6, 7

WORD = 2 ** 32  # every key is one 32-bit word of the SeedSequence's entropy


def seed_sequence(seed: int, *keys: int) -> np.random.SeedSequence:
    words = [int(seed), *[int(k) for k in keys]]
    for w in words:
        if not 0 <= w < WORD:
            raise ValueError(f"seed keys must be integers in [0, 2**32): a larger one spills into a second "
                             f"32-bit word and collides with a longer key tuple; got {tuple(words)}")
    return np.random.SeedSequence(words)


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit integer seed for torch / libraries that take an int."""
    return int(seed_sequence(seed, *keys).generate_state(1, np.uint32)[0] >> 1)


def derive_seed64(seed: int, *keys: int) -> int:
    """A 63-bit integer seed, for torch.Generator (which takes 64 bits)."""
    return int(seed_sequence(seed, *keys).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, *keys))

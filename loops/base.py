"""What every loop policy returns: a manifest of references, never the data itself."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mad.config import LoopConfig, SynthSource

# Stream 0 of the real pool is the "fixed" real set: generation 1 trains on its first
# n_init samples and the synthetic-augmentation loop reuses its first n_real every
# generation. Fresh draws use stream = gen, so each generation gets its own subset.
FIXED_STREAM = 0


@dataclass(frozen=True)
class RealPart:
    stream: int  # which seeded draw of the real pool (FIXED_STREAM or a generation index)
    n: int  # how many samples of that draw (a prefix, so smaller draws nest in larger ones)


@dataclass(frozen=True)
class SynthPart:
    gen: int  # the generation whose synthetic set is used
    n: int  # the size of that set
    indices: tuple  # which of its samples; () means all n of them


@dataclass(frozen=True)
class Manifest:
    gen: int
    real: RealPart | None
    synth: tuple = field(default_factory=tuple)  # tuple[SynthPart, ...]

    @property
    def n_real(self) -> int:
        return self.real.n if self.real else 0

    @property
    def n_synth(self) -> int:
        return sum(len(p.indices) or p.n for p in self.synth)

    def to_json(self) -> dict:
        return {
            "gen": self.gen,
            "real": asdict(self.real) if self.real else None,
            "synth": [{"gen": p.gen, "n": p.n, "indices": list(p.indices)} for p in self.synth],
        }


def first_generation(n_init: int) -> Manifest:
    """Generation 1 always trains on real data only (MAD: n_s^1 = 0)."""
    return Manifest(gen=1, real=RealPart(FIXED_STREAM, n_init), synth=())


def select_synthetic(gen: int, loop: LoopConfig, n_synth: int, synth_sizes: dict[int, int],
                     rng: np.random.Generator) -> tuple:
    """Which earlier synthetic sets enter generation ``gen`` (>= 2).

    ``last``: the n_synth samples of generation gen-1 (MAD's experiments).
    ``accumulate``: every earlier synthetic set, whole ((t-1) * n_synth samples; MAD's FFHQ
    augmentation, Gerstgrasser et al.'s accumulation).
    ``last_k``: the sets of the last k generations, whole.
    """
    earlier = [g for g in range(1, gen) if g in synth_sizes]
    if loop.synth_source == SynthSource.last:
        chosen = earlier[-1:]
    elif loop.synth_source == SynthSource.accumulate:
        chosen = earlier
    else:
        chosen = earlier[-loop.last_k:]
    parts = []
    for g in chosen:
        size = synth_sizes[g]
        if loop.synth_source == SynthSource.last and size > n_synth:
            idx = tuple(int(i) for i in np.sort(rng.choice(size, n_synth, replace=False)))
            parts.append(SynthPart(g, size, idx))
        else:
            parts.append(SynthPart(g, size, ()))
    return tuple(parts)

"""What every loop policy returns: a manifest of references, never the data itself."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mad.config import LoopConfig, SynthSource

# A chain reads its real data from one seeded order of the real pool (stream 0), by position:
# generation 1 trains on positions [0, n_init); the synthetic-augmentation loop reuses positions
# [0, n_real) every generation (the fixed set); the fresh-data loop's generation t takes the next
# n_real positions no earlier generation used, [n_init + (t-2) n_real, n_init + (t-1) n_real).
# On a finite pool distinct positions below the pool size are distinct samples, so fresh draws
# are disjoint from each other and from generation 1 (see mad.data for what lies beyond the pool).
FIXED_STREAM = 0


@dataclass(frozen=True)
class RealPart:
    stream: int  # which seeded order of the real pool (the loops all use FIXED_STREAM)
    n: int  # how many samples: positions start .. start + n - 1 of that order
    start: int = 0  # first position; parts starting at 0 nest (a smaller one is a prefix of a larger one)


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
    # loop.subsample_to: the positions kept of the assembled set (real part first, then the synthetic
    # parts in order), sorted; () keeps all of it
    subsample: tuple = ()

    @property
    def n_real(self) -> int:
        """Real samples trained on (after subsampling)."""
        full = self.real.n if self.real else 0
        if not self.subsample:
            return full
        return int(np.searchsorted(np.asarray(self.subsample), full))

    @property
    def n_synth(self) -> int:
        """Synthetic samples trained on (after subsampling)."""
        full = sum(len(p.indices) or p.n for p in self.synth)
        return len(self.subsample) - self.n_real if self.subsample else full

    def to_json(self) -> dict:
        out = {
            "gen": self.gen,
            "real": asdict(self.real) if self.real else None,
            "synth": [{"gen": p.gen, "n": p.n, "indices": list(p.indices)} for p in self.synth],
        }
        if self.subsample:  # only then: manifests of runs without it stay as they were
            out["subsample"] = list(self.subsample)
        return out


def subsample(manifest: Manifest, size: int, rng: np.random.Generator) -> Manifest:
    """Kazdan et al.'s accumulate-and-subsample: a uniform subset of ``size`` of the manifest's
    assembled set (real and synthetic parts together); the whole set when it holds no more."""
    from loops.stages import subsample_indices

    total = (manifest.real.n if manifest.real else 0) + sum(len(p.indices) or p.n for p in manifest.synth)
    if size >= total:
        return manifest
    keep = tuple(int(i) for i in subsample_indices(total, size, rng))
    return Manifest(manifest.gen, manifest.real, manifest.synth, keep)


def first_generation(n_init: int) -> Manifest:
    """Generation 1 always trains on real data only (MAD: n_s^1 = 0)."""
    return Manifest(gen=1, real=first_real(n_init), synth=())


def first_real(n_init: int) -> RealPart:
    """Generation 1's real set: the first n_init positions of the chain's real order."""
    return RealPart(FIXED_STREAM, n_init, 0)


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

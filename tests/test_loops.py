"""Loop policies name the right training set, by reference, for each kind and synthetic source."""
import numpy as np
import pytest

import loops
from loops.base import FIXED_STREAM
from mad.config import LoopConfig, LoopKind, SynthSource


def manifest(kind, gen, sizes, **kw):
    cfg = LoopConfig(kind=kind, n_init=100, **kw)
    return loops.next_training_set(kind, gen, sizes, cfg, np.random.default_rng(0))


@pytest.mark.parametrize("kind", list(LoopKind))
def test_generation_one_is_real_only(kind):
    m = manifest(kind, 1, {})
    assert m.real.stream == FIXED_STREAM and m.real.n == 100 and m.synth == ()


def test_fully_synthetic_uses_last_synthetic_set_only():
    m = manifest(LoopKind.fully_synthetic, 4, {1: 100, 2: 100, 3: 100}, n_real=50)
    assert m.real is None
    assert [(p.gen, p.n) for p in m.synth] == [(3, 100)]
    assert m.n_real == 0 and m.n_synth == 100


def test_augmentation_reuses_fixed_real_set():
    a = manifest(LoopKind.synthetic_augmentation, 2, {1: 100}, n_real=60)
    b = manifest(LoopKind.synthetic_augmentation, 5, {4: 100}, n_real=60)
    assert a.real == b.real and a.real.stream == FIXED_STREAM and a.real.n == 60


def test_fresh_data_takes_the_next_unused_positions_each_generation():
    parts = [manifest(LoopKind.fresh_data, g, {g - 1: 100}, n_real=60).real for g in range(1, 7)]
    assert all(p.stream == FIXED_STREAM for p in parts)
    # generation 1: [0, 100); then [100, 160), [160, 220), ...: back to back, never overlapping
    assert [(p.start, p.n) for p in parts] == [(0, 100), (100, 60), (160, 60), (220, 60), (280, 60), (340, 60)]


@pytest.mark.parametrize("kind", list(LoopKind))
def test_real_part_is_the_manifests_real_part(kind):
    cfg = LoopConfig(kind=kind, n_init=100, n_real=60)
    for g in range(1, 6):
        assert loops.real_part(kind, g, cfg) == manifest(kind, g, {g - 1: 100} if g > 1 else {}, n_real=60).real


def test_accumulate_and_last_k():
    sizes = {1: 100, 2: 100, 3: 100, 4: 100}
    acc = manifest(LoopKind.fully_synthetic, 5, sizes, synth_source=SynthSource.accumulate)
    assert [p.gen for p in acc.synth] == [1, 2, 3, 4] and acc.n_synth == 400
    lk = manifest(LoopKind.fully_synthetic, 5, sizes, synth_source=SynthSource.last_k, last_k=2)
    assert [p.gen for p in lk.synth] == [3, 4]


def test_manifest_is_json_ready():
    import json

    m = manifest(LoopKind.fresh_data, 3, {2: 100}, n_real=10)
    assert json.loads(json.dumps(m.to_json())) == {"gen": 3, "real": {"stream": 0, "n": 10, "start": 110},
                                                   "synth": [{"gen": 2, "n": 100, "indices": []}]}

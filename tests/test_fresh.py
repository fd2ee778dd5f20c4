"""Issue 10 item 1: fresh means never seen before. Checked on the indices the training task really used."""
import json

import numpy as np
import pytest

import loops
from conftest import run_cli
from mad.config import ConfigError, DataConfig, DataName, LoopConfig, LoopKind, load_config
from mad.data import RealPool, load_real, pool_indices, seen_fraction
from mad.driver import real_seen_frac
from mad.tasks import assemble_training_set

SYNTH_MARK = 255  # pixel (0, 1, 1) of a synthetic image; real images keep it 0


def index_pool(n: int) -> RealPool:
    """A pool of 2x2 images that encode their own index in base 256 (pixel 0: high, pixel 1: low)."""
    x = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return RealPool("digits", x=x, y=np.arange(n) % 10, num_classes=10)


def decode(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(np.int64) * 256 + x[:, 0, 0, 1]


def trained_real_indices(pool: RealPool, kind: LoopKind, loop: LoopConfig, seed: int) -> list[np.ndarray]:
    """Per generation, the pool indices of the real images assemble_training_set handed to training."""
    out, sizes, shards = [], {}, {}
    for gen in range(1, loop.generations + 1):
        m = loops.next_training_set(kind, gen, dict(sizes), loop, np.random.default_rng(gen))
        gens = [p.gen for p in m.synth]
        x, _ = assemble_training_set(pool, seed, m.to_json(), gens, [shards[g] for g in gens])
        real = x[x[:, 0, 1, 1] != SYNTH_MARK]
        assert len(real) == m.n_real and len(x) == m.n_real + m.n_synth
        out.append(decode(real))
        # this generation's "synthetic set" for the next one: marked images, labels 0
        n_synth = loop.n_synth or loop.n_init
        synth = np.zeros((n_synth, 1, 2, 2), dtype=np.uint8)
        synth[:, 0, 1, 1] = SYNTH_MARK
        shards[gen], sizes[gen] = [(synth, np.zeros(n_synth, dtype=np.int64))], n_synth
    return out


@pytest.mark.parametrize("seed", [0, 3])
def test_fresh_draws_are_pairwise_disjoint_and_disjoint_from_generation_one(seed):
    # exactly as many real samples as the chain needs: 100 + 6 x 40 = 340
    pool = index_pool(340)
    loop = LoopConfig(kind=LoopKind.fresh_data, generations=7, n_init=100, n_real=40, n_synth=30)
    idx = trained_real_indices(pool, LoopKind.fresh_data, loop, seed)
    assert [len(i) for i in idx] == [100] + [40] * 6
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            assert not set(idx[a]) & set(idx[b]), (a + 1, b + 1)
    assert sorted(np.concatenate(idx)) == list(range(340))  # the whole pool, each image once
    # a random order of the pool, not its first rows
    assert not np.array_equal(idx[0], np.arange(100))
    # and generation 1 is the same set in every loop kind (same seed)
    for kind in (LoopKind.fully_synthetic, LoopKind.synthetic_augmentation):
        assert np.array_equal(trained_real_indices(pool, kind, loop, seed)[0], idx[0])


@pytest.mark.parametrize("n_real", [60, 100, 150])
def test_augmentation_trains_on_the_identical_fixed_set_every_generation(n_real):
    pool = index_pool(400)
    loop = LoopConfig(kind=LoopKind.synthetic_augmentation, generations=5, n_init=100, n_real=n_real, n_synth=30)
    idx = trained_real_indices(pool, LoopKind.synthetic_augmentation, loop, seed=1)
    for later in idx[2:]:
        assert np.array_equal(later, idx[1])
    assert len(set(idx[1])) == n_real
    gen1, fixed = set(idx[0]), set(idx[1])
    # smaller: a subset of generation 1's set; larger: generation 1's set plus unseen samples
    assert fixed <= gen1 if n_real <= 100 else gen1 < fixed


def test_distributions_draw_new_samples_each_fresh_generation():
    pool, _ = load_real(DataConfig(name=DataName.gaussian, dim=3, n_reference=10), seed=0)
    loop = LoopConfig(kind=LoopKind.fresh_data, generations=4, n_init=50, n_real=20)
    draws = [pool.draw(0, p.stream, p.n, p.start) for p in
             (loops.real_part(LoopKind.fresh_data, g, loop) for g in range(1, 5))]
    rows = np.concatenate([x for x, _ in draws])
    assert len(np.unique(rows, axis=0)) == 50 + 3 * 20
    # the augmentation loop's fixed set nests with generation 1's, as on a pool
    aug = LoopConfig(kind=LoopKind.synthetic_augmentation, n_init=50, n_real=30)
    fixed = loops.real_part(LoopKind.synthetic_augmentation, 2, aug)
    np.testing.assert_array_equal(pool.draw(0, fixed.stream, fixed.n, fixed.start)[0], draws[0][0][:30])


DIGITS = ["data.name=digits", "model.family=diffusion", "metrics.features=raw"]


@pytest.mark.parametrize("kind,counts,ok", [
    # digits pool: 1797 - 500 (data.n_reference) = 1297
    ("fresh_data", ["loop.n_init=97", "loop.n_real=300"], True),  # 97 + 4 x 300 = 1297
    ("fresh_data", ["loop.n_init=98", "loop.n_real=300"], False),
    ("fresh_data", ["loop.real_fraction=0.5", "loop.n_total=600", "loop.n_init=98"], False),
    ("synthetic_augmentation", ["loop.n_init=100", "loop.n_real=1297"], True),
    ("synthetic_augmentation", ["loop.n_init=100", "loop.n_real=1298"], False),
    ("synthetic_augmentation", ["loop.n_init=1298", "loop.n_real=10"], False),
    ("fully_synthetic", ["loop.n_init=1297", "loop.n_real=5000"], True),  # n_real is not used
    ("fully_synthetic", ["loop.n_init=1298"], False),
])
def test_pool_check_counts_distinct_real_samples(kind, counts, ok):
    args = [*DIGITS, "sweep={}", f"loop.kind={kind}", "loop.generations=5", "loop.n_real=null", "loop.n_synth=null",
            *counts]
    if ok:
        load_config(None, args)
    else:
        with pytest.raises(ConfigError, match="holds 1297"):
            load_config(None, args)
        load_config(None, [*args, "loop.allow_real_reuse=true"])  # the explicit opt-in


def test_over_pool_config_is_refused_by_run_py_with_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"out={out}", "loop.n_init=400", "loop.n_real=300", "loop.generations=5")  # default: digits, 3 loops
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for words in ("loop.n_init", "loop.generations", "loop.n_real", "1600", "holds 1297", "loop.allow_real_reuse"):
        assert words in lines[0], lines[0]
    assert not out.exists()


def test_folder_pool_is_checked_once_loaded_before_anything_is_written(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(30):
        Image.fromarray(np.full((8, 8), i * 8, dtype=np.uint8)).save(root / f"{i:02d}.png")
    out = tmp_path / "run"
    args = [f"out={out}", "data.name=folder", f"data.root={root}", "data.n_reference=10", "metrics.features=raw",
            "loop.kind=fresh_data", "loop.n_init=10", "loop.n_real=4", "loop.generations=4", "sweep={}"]
    proc = run_cli(*args)  # 10 + 3 x 4 = 22 > the 20 training images
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds 20" in lines[0] and "22" in lines[0], proc.stderr
    assert not out.exists()


def test_pool_indices_wrap_into_new_orders_only_past_the_pool():
    first = pool_indices(10, 5, 0, 0, 10)
    assert sorted(first) == list(range(10))
    np.testing.assert_array_equal(pool_indices(10, 5, 0, 3, 4), first[3:7])  # positions, not draws
    second = pool_indices(10, 5, 0, 10, 10)
    assert sorted(second) == list(range(10)) and not np.array_equal(second, first)
    np.testing.assert_array_equal(pool_indices(10, 5, 0, 8, 4), np.concatenate([first[8:], second[:2]]))


def test_real_seen_frac_hand_computed():
    # pool of 10, fresh data with n_init = n_real = 5: generation 2 is the other half of the pool,
    # generation 3 onwards come back round (all 10 seen by then)
    fresh = LoopConfig(kind=LoopKind.fresh_data, generations=5, n_init=5, n_real=5, allow_real_reuse=True)
    cfg = load_config(None, ["sweep={}"])
    cfg.loop = fresh
    assert [real_seen_frac(cfg, g, 10) for g in range(1, 6)] == [0.0, 0.0, 1.0, 1.0, 1.0]
    # augmentation with n_init = 5, n_real = 10 on a pool of 10: half of the fixed set is generation 1's
    cfg.loop = LoopConfig(kind=LoopKind.synthetic_augmentation, generations=4, n_init=5, n_real=10)
    assert [real_seen_frac(cfg, g, 10) for g in range(1, 5)] == [0.0, 0.5, 1.0, 1.0]
    # fully synthetic: no real data after generation 1
    cfg.loop = LoopConfig(kind=LoopKind.fully_synthetic, generations=3, n_init=5)
    assert [real_seen_frac(cfg, g, 10) for g in range(1, 4)] == [0.0, None, None]
    # a draw that straddles two orders after 8 positions were seen: its 2 positions left in order 0
    # are unseen; its 2 in order 1 were seen unless they are the two order 0 had left
    first, second = pool_indices(10, 7, 0, 0, 10), pool_indices(10, 7, 0, 10, 2)
    expected = sum(int(i not in (first[8], first[9])) for i in second) / 4
    assert seen_fraction(10, 7, [(0, 0, 5), (0, 5, 3)], (0, 8, 4)) == expected


def test_tiny_digits_run_with_reuse_records_real_seen_frac(tmp_path):
    # 1797 - 1497 = 300 training digits; fresh data needs 200 + 2 x 100 = 400
    tiny = ["data.name=digits", "data.n_reference=1497", "model.family=diffusion", "model.channels=[8,16]",
            "model.num_train_timesteps=100", "train.steps=20", "train.batch_size=32", "sample.steps=5",
            "metrics.features=raw", "metrics.n_eval=50", "loop.kind=fresh_data", "loop.n_init=200",
            "loop.n_real=100", "loop.n_synth=50", "loop.generations=3", "report.html=false",
            "report.tensorboard=false", "sweep={}"]
    out = tmp_path / "run"
    refused = run_cli(*tiny, f"out={out}")
    assert refused.returncode == 2 and "holds 300" in refused.stderr and not out.exists(), refused.stderr[-2000:]
    proc = run_cli(*tiny, f"out={out}", "loop.allow_real_reuse=true", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # gen 2 takes the 100 digits gen 1 left; gen 3 starts a new order of a pool already all seen
    assert [(r["gen"], r["real_seen_frac"]) for r in recs] == [(1, 0.0), (2, 0.0), (3, 1.0)]
    # the manifests on disk name the positions the record speaks of
    from mad.artifacts import RunDir

    starts = [RunDir(out).read_manifest(recs[0]["chain"], g)["real"]["start"] for g in (1, 2, 3)]
    assert starts == [0, 200, 300]

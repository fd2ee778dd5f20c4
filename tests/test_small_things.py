"""Issue 21 item 12: small things a careful reader trips on (phase metric vs metrics.every, seed keys,
exactly balanced labels, the toy2d grid's mode std)."""
from __future__ import annotations

import numpy as np
import pytest

from mad import seeding
from mad.config import ConfigError, load_config

PHASE = "configs/experiment/gaussian_phase.yaml"
SMALL = ["sweep={loop.n_synth: [0, 25], loop.n_real: [50]}", "loop.generations=4"]


@pytest.mark.parametrize("extra", [["report.phase.metric=fid"], ["report.phase.metric=auto", "model.family=kde"],
                                   ["report.phase.metric=precision"]])
def test_a_sample_based_phase_metric_with_metrics_every_above_1_is_refused(extra):
    # fid is recorded every metrics.every-th generation only, and mad.phase drops a chain that lacks its
    # metric at any generation, so the phase diagram would have silently lost every chain
    with pytest.raises(ConfigError) as err:
        load_config(PHASE, [*SMALL, *extra, "metrics.every=2"])
    assert err.value.key == "metrics.every" and "metrics.every=1" in str(err.value)
    load_config(PHASE, [*SMALL, *extra, "metrics.every=1"])  # every generation: accepted


def test_metrics_every_above_1_stays_allowed_where_the_phase_diagram_does_not_need_it():
    load_config(PHASE, [*SMALL, "metrics.every=2"])  # w2 is closed-form: recorded every generation
    load_config(PHASE, [*SMALL, "report.phase.metric=w2_fit", "metrics.every=2"])  # and so is w2_fit
    load_config(PHASE, [*SMALL, "model.family=kde", "report.phase.metric=nll", "metrics.every=2"])  # kde's held-out nll
    load_config(PHASE, [*SMALL, "report.phase.metric=auto", "metrics.every=2"])  # auto = w2 for the Gaussian
    # no real-only chain: no phase diagram, nothing to drop
    load_config(PHASE, ["sweep={loop.n_synth: [25, 50]}", "report.phase.metric=fid", "metrics.every=2"])


# ----------------------------------------------------------------------------- seed keys
def _state(key: tuple) -> tuple:
    return tuple(np.random.SeedSequence(list(key)).generate_state(4))


def test_numpy_seedsequence_equates_what_the_seed_keys_must_keep_apart():
    # the two rules mad.seeding guards against, as numpy has them
    assert _state((5, 0)) == _state((5,)) and _state((3, 2, 2, 0)) == _state((3, 2, 2))
    assert _state((4 * 2 ** 32 + 7, 2, 1)) == _state((7, 4, 2, 1))  # seed 2**34 + 7, gen 2 = seed 7, gen 4, SAMPLE 1
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        seeding.seed_sequence(4 * 2 ** 32 + 7, 2, 1)
    with pytest.raises(ValueError):
        seeding.derive_seed(7, 2 ** 32)
    assert seeding.derive_seed(2 ** 32 - 1, 1, 1) >= 0  # the largest one-word seed is fine
    with pytest.raises(ConfigError) as err:
        load_config("configs/experiment/gaussian.yaml", ["sweep={}", f"seed={2 ** 32}"])
    assert err.value.key == "seed"
    with pytest.raises(ConfigError) as err:  # a swept seed is checked per chain
        load_config("configs/experiment/gaussian.yaml", [f"sweep={{seed: [0, {2 ** 34 + 7}]}}"])
    assert err.value.key == "seed"


def _derived_keys(monkeypatch, config, overrides) -> set:
    """Every key tuple the stages of the config's chains derive through mad.seeding, from generation 1
    to the last, through the functions the Ray stages and the chain blocks run (here in-process)."""
    from mad import blocks, tasks
    from mad.config import expand_sweep
    from mad.data import load_real

    seen = set()
    original = seeding.seed_sequence

    def recording(seed, *keys):
        seen.add((int(seed), *(int(k) for k in keys)))
        return original(seed, *keys)

    monkeypatch.setattr(seeding, "seed_sequence", recording)
    cfg = load_config(config, overrides)
    for _, c in expand_sweep(cfg):
        pool, (rx, ry) = load_real(c.data, cfg.seed)
        reference = tasks.prepare_reference(rx, ry, pool, c.metrics)
        chain = blocks.BlockChain(name="c", cfg=c, next_gen=1)
        while not chain.finished:
            blocks.run_generation(chain, pool, reference, pool.distribution(), True, device="cpu")
    return seen


@pytest.mark.parametrize("config, overrides", [
    # the Gaussian: real draws by position (fresh data past position 0), two sample shards, the
    # self-correction stage, 6 generations (generation numbers meet the REAL and REFERENCE constants)
    ("configs/experiment/gaussian.yaml",
     ["data.dim=2", "loop.generations=6", "loop.n_init=20", "metrics.n_eval=20", "data.n_reference=50",
      "resources.sample_shards=2", "correct.kind=kmeans", "correct.clusters=3",
      "sweep={loop.kind: [fully_synthetic, synthetic_augmentation, fresh_data], seed: [0, 1]}"]),
    # a finite pool that the fresh-data chain wraps (further permutations k = 1, 2) and a diffusion model
    # (the family's own (x, 0), (x, 1), (x, 2) streams, labels included)
    (None, ["data.n_reference=1767", "loop.allow_real_reuse=true", "loop.generations=3", "loop.n_init=30",
            "loop.n_real=10", "loop.n_synth=10", "model.channels=[8,16]", "model.num_train_timesteps=10",
            "train.steps=1", "train.batch_size=8", "sample.steps=1", "sample.batch_size=64", "metrics.features=raw",
            "metrics.n_eval=10", "metrics.k=3", "resources.sample_shards=2", "sweep={loop.kind: [fresh_data]}"]),
])
def test_the_seed_keys_a_run_derives_never_collide_in_numpy(monkeypatch, config, overrides):
    keys = _derived_keys(monkeypatch, config, overrides)
    lengths = {len(k) for k in keys}
    assert {2, 3, 4} <= lengths, lengths  # the forms of every arity were met
    assert any(k[-1] == 0 for k in keys)  # ... including those ending in 0, which numpy pads
    states: dict[tuple, tuple] = {}
    for key in sorted(keys):
        other = states.setdefault(_state(key), key)
        assert other == key, f"seed keys {other} and {key} give numpy the same stream"


# ----------------------------------------------------------------------------- the toy2d grid's mode std
def test_toy2d_mode_std_is_a_key_that_the_draws_the_mixture_and_the_mode_metrics_follow():
    from mad.data import load_real
    from mad.data.vectors import TOY2D_MODES
    from mad.metrics.modes import mode_metrics

    default = load_config(None, ["data.name=toy2d", "model.family=gmm", "metrics.features=raw"])
    assert default.data.mode_std == pytest.approx(0.05 ** 0.5)  # what the grid always used: records unchanged
    for std in (0.05 ** 0.5, 0.05):
        cfg = load_config(None, ["data.name=toy2d", "model.family=gmm", "metrics.features=raw",
                                 f"data.mode_std={std}", "data.n_reference=4000"])
        pool, (ref, _) = load_real(cfg.data, 0)
        x, _ = pool.draw(0, 0, 4000)
        for sample in (x, ref):
            nearest = TOY2D_MODES[np.argmin(((sample[:, None] - TOY2D_MODES[None]) ** 2).sum(-1), axis=1)]
            assert (sample - nearest).std() == pytest.approx(std, rel=0.05)
        real = pool.distribution()
        assert np.allclose(real.covs, std ** 2 * np.eye(2))
        assert np.allclose(pool.cov, np.cov(TOY2D_MODES.T, bias=True) + std ** 2 * np.eye(2))
        # 3 sigma of the mode metrics is 3 x data.mode_std: 0.4 off a mode is in at sqrt(0.05), out at 0.05
        off = TOY2D_MODES + 0.4
        assert mode_metrics(off, real)["high_quality_frac"] == (1.0 if std > 0.2 else 0.0)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.name=toy2d", "model.family=gmm", "metrics.features=raw", "data.mode_std=0"])
    assert err.value.key == "data.mode_std"

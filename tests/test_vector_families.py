"""The vector families gmm, kde and mlp_diffusion: shapes, MAD's bias lambda, save/reload, and run.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from mad import artifacts
from mad.config import (ConfigError, DataConfig, DataName, GMMConfig, KDEConfig, MLPDiffusionConfig, ModelConfig,
                        SampleConfig, Scheduler, TrainConfig, expand_sweep, load_config)
from mad.data import load_real
from mad.metrics.modes import mode_metrics
from mad.models import get_family

TRAIN = TrainConfig(steps=30, batch_size=64, lr=2e-3)


def model_cfg(family: str) -> ModelConfig:
    return ModelConfig(family=family, gmm=GMMConfig(components=5), kde=KDEConfig(),
                       mlp_diffusion=MLPDiffusionConfig(hidden=32, layers=2, num_train_timesteps=20))


@pytest.fixture(scope="module")
def toy2d():
    pool, (ref, _) = load_real(DataConfig(name=DataName.toy2d, n_reference=400), seed=0)
    x, _ = pool.draw(0, 0, 400)
    return pool, x, ref


@pytest.mark.parametrize("family", ["gmm", "kde", "mlp_diffusion"])
def test_train_sample_bias_and_reload(family, toy2d, tmp_path):
    pool, x, _ = toy2d
    fam, m = get_family(family), model_cfg(family)
    state = fam.train(x, None, 0, m, TRAIN, seed=3)
    ddim = Scheduler.ddim  # mlp_diffusion's lambda < 1 needs it, and both lambdas sample with it
    s1, y = fam.sample(state, 300, 0, (2,), m, SampleConfig(bias=1.0, steps=10, scheduler=ddim), seed=7)
    assert s1.shape == (300, 2) and y is None and np.isfinite(s1).all()
    # the same seed, lambda < 1: different samples, pulled towards the model's modes (less spread)
    s_half, _ = fam.sample(state, 300, 0, (2,), m, SampleConfig(bias=0.3, steps=10, scheduler=ddim), seed=7)
    assert not np.allclose(s1, s_half)
    if family != "mlp_diffusion":  # lambda scales a covariance / bandwidth: samples hug the centres closer
        centres = (state["means"] if family == "gmm" else state["points"]).numpy()

        def spread(s):
            return np.sqrt(((s[:, None] - centres[None]) ** 2).sum(-1)).min(1).mean()

        assert spread(s_half) < 0.7 * spread(s1)
    else:  # DDIM from N(0, lambda I): the samples shrink towards the data's centre
        assert np.linalg.norm(s_half - x.mean(0), axis=1).mean() < np.linalg.norm(s1 - x.mean(0), axis=1).mean()
    # the state survives safetensors as the driver stores it, and sampling from it is reproduced exactly
    artifacts.write_state(tmp_path / "model.safetensors", state)
    back = artifacts.read_state(tmp_path / "model.safetensors")
    assert set(back) == set(state)
    again, _ = fam.sample(back, 300, 0, (2,), m, SampleConfig(bias=1.0, steps=10, scheduler=ddim), seed=7)
    np.testing.assert_array_equal(again, s1)


TOY_MLP = ["data.name=toy2d", "model.family=mlp_diffusion", "metrics.features=raw", "sample.steps=8",
           "sweep={sample.bias: [1.0, 0.8, 0.5]}"]


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_every_lambda_of_an_mlp_diffusion_sweep_uses_the_configured_sampler(scheduler, toy2d):
    from diffusers import DDIMScheduler, DDPMScheduler

    from mad.models.mlp_diffusion import _make_scheduler

    args = [*TOY_MLP, f"sample.scheduler={scheduler}"]
    if scheduler == "ddpm":
        # ancestral sampling has no lambda < 1 here (the old code switched those chains to DDIM): refused
        with pytest.raises(ConfigError) as err:
            load_config(None, args)
        assert err.value.key == "sample.scheduler" and "use sample.scheduler=ddim" in str(err.value)
        fam, m = get_family("mlp_diffusion"), model_cfg("mlp_diffusion")
        state = fam.train(toy2d[1], None, 0, m, TrainConfig(steps=2, batch_size=64), seed=0)
        with pytest.raises(ValueError, match="use sample.scheduler=ddim"):
            fam.sample(state, 10, 0, (2,), m, SampleConfig(bias=0.5, scheduler=Scheduler.ddpm), seed=0)
        chains = expand_sweep(load_config(None, [*args, "sweep={}"]))  # lambda = 1 alone: ancestral
        want = DDPMScheduler
    else:
        chains = expand_sweep(load_config(None, args))
        assert sorted(c.sample.bias for _, c in chains) == [0.5, 0.8, 1.0]
        want = DDIMScheduler
    for _, c in chains:
        sched, stochastic = _make_scheduler(c.model, c.sample, 1.0)
        assert type(sched) is want and stochastic == (scheduler == "ddpm") and len(sched.timesteps) == 8


def test_gmm_recovers_the_grid_and_lambda_scales_covariances(toy2d):
    pool, x, _ = toy2d
    fam = get_family("gmm")
    m = ModelConfig(family="gmm", gmm=GMMConfig(components=25, n_init=2))
    state = fam.train(x, None, 0, m, None, seed=0)
    assert state["weights"].shape == (25,) and state["means"].shape == (25, 2) and state["covs"].shape == (25, 2, 2)
    s, _ = fam.sample(state, 2000, 0, (2,), m, SampleConfig(bias=1.0), seed=1)
    assert mode_metrics(s, pool.distribution())["modes_covered"] >= 20
    # diag/spherical/tied fits are stored as full covariances
    for kind in ("diag", "spherical", "tied"):
        st = fam.train(x, None, 0, ModelConfig(family="gmm", gmm=GMMConfig(components=4, covariance_type=kind)),
                       None, seed=0)
        assert st["covs"].shape == (4, 2, 2)


def test_kde_bandwidth_is_scaled_by_lambda():
    fam = get_family("kde")
    x = np.zeros((50, 3))
    m = ModelConfig(family="kde", kde=KDEConfig(bandwidth=2.0))
    state = fam.train(x, None, 0, m, None, seed=0)
    s1, _ = fam.sample(state, 20000, 0, (3,), m, SampleConfig(bias=1.0), seed=0)
    s2, _ = fam.sample(state, 20000, 0, (3,), m, SampleConfig(bias=0.25), seed=0)
    assert s1.std() == pytest.approx(2.0, rel=0.03)
    assert s2.std() == pytest.approx(0.5, rel=0.03)


def test_two_generations_of_each_vector_family_through_run_py(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("data.name=toy2d", "data.n_reference=100", "metrics.features=raw", "metrics.n_eval=100",
                   "loop.generations=2", "loop.n_init=100", "train.steps=20", "train.batch_size=50",
                   "sample.steps=5", "model.gmm.components=5", "model.mlp_diffusion.hidden=16",
                   "model.mlp_diffusion.num_train_timesteps=10", "sweep={}",
                   "sweep.model.family=[gmm,kde,mlp_diffusion]", "report.html=false", "report.tensorboard=false",
                   "ray.num_cpus=2", f"out={out}", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by = {(r["model.family"], r["gen"]) for r in recs}
    assert by == {(f, g) for f in ("gmm", "kde", "mlp_diffusion") for g in (1, 2)}
    for r in recs:  # toy2d: the mode metrics next to the sample-based ones
        assert 0 <= r["modes_covered"] <= 25 and 0.0 <= r["high_quality_frac"] <= 1.0 and "fid" in r


def test_mode_metrics_against_their_definition(toy2d):
    pool, _, ref = toy2d
    real = pool.distribution()
    m = mode_metrics(ref, real)  # real samples: every mode, and P(chi2_2 <= 9) = 98.9% within 3 sigma
    assert m["modes_covered"] == 25 and m["high_quality_frac"] > 0.95
    one_mode = real.means[7] + 0.1 * np.random.default_rng(0).standard_normal((200, 2))
    assert mode_metrics(one_mode, real) == {"modes_covered": 1.0, "high_quality_frac": 1.0}
    between = real.means[:5] + 1.0  # halfway between grid points: no mode within 3 sigma (0.67)
    assert mode_metrics(between, real) == {"modes_covered": 0.0, "high_quality_frac": 0.0}

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


def test_kde_at_lambda_has_kernel_variance_lambda_h2():
    """lambda scales the kernel VARIANCE, as N(mu, lambda Sigma) does: std h sqrt(lambda), not lambda h."""
    fam = get_family("kde")
    x = np.zeros((50, 3))
    h, lam = 2.0, 0.25
    m = ModelConfig(family="kde", kde=KDEConfig(bandwidth=h))
    state = fam.train(x, None, 0, m, None, seed=0)
    s1, _ = fam.sample(state, 20000, 0, (3,), m, SampleConfig(bias=1.0), seed=0)
    s2, _ = fam.sample(state, 20000, 0, (3,), m, SampleConfig(bias=lam), seed=0)
    # every point is 0, so a sample is the kernel noise itself: the same draws, scaled by sqrt(lambda)
    np.testing.assert_allclose(s2, np.sqrt(lam) * s1, rtol=1e-12)
    assert s1.var() == pytest.approx(h ** 2, rel=0.03)
    assert s2.var() == pytest.approx(lam * h ** 2, rel=0.03)  # 1.0; the old lambda-on-the-std gave 0.25


def test_kde_bandwidth_rules():
    """scott_std (the default): n^(-1/(d+4)) x mean std; scott: scikit-learn's unscaled rule."""
    from sklearn.neighbors import KernelDensity

    x = 3.0 * np.random.default_rng(1).standard_normal((200, 2))
    fam = get_family("kde")
    assert KDEConfig().rule.value == "scott_std"
    h_std = float(fam.train(x, None, 0, ModelConfig(family="kde", kde=KDEConfig()), None)["bandwidth"])
    h_sk = float(fam.train(x, None, 0, ModelConfig(family="kde", kde=KDEConfig(rule="scott")), None)["bandwidth"])
    assert h_sk == pytest.approx(KernelDensity(bandwidth="scott").fit(x).bandwidth_, rel=1e-12)
    assert h_std == pytest.approx(np.mean(x.std(axis=0, ddof=1)) * 200 ** (-1 / 6), rel=1e-12)
    assert h_std / h_sk == pytest.approx(3.0, rel=0.1)  # the data's scale, which the sklearn rule ignores


def test_heldout_nll_of_kde_and_gmm_against_scikit_learn(toy2d):
    """nll = mean -log p(held-out) under the sampling density; at lambda the kernel / component
    variances are scaled by lambda, which scikit-learn reproduces with h sqrt(lambda) / scaled covariances."""
    from scipy.stats import multivariate_normal
    from sklearn.neighbors import KernelDensity

    pool, x, ref = toy2d
    kde = get_family("kde")
    m = model_cfg("kde")
    state = kde.train(x, None, 0, m, None, seed=0)
    h = float(state["bandwidth"])
    for lam in (1.0, 0.3):
        want = -KernelDensity(bandwidth=h * np.sqrt(lam)).fit(x).score_samples(ref).mean()
        assert kde.heldout_metrics(state, lam, ref)["nll"] == pytest.approx(want, rel=1e-9)
    gmm = get_family("gmm")
    mg = model_cfg("gmm")
    st = gmm.train(x, None, 0, mg, None, seed=0)
    w, mu, cov = (st[k].numpy() for k in ("weights", "means", "covs"))
    for lam in (1.0, 0.3):
        dens = sum(w[k] * multivariate_normal(mu[k], lam * cov[k]).pdf(ref) for k in range(len(w)))
        assert gmm.heldout_metrics(st, lam, ref)["nll"] == pytest.approx(-np.log(dens).mean(), rel=1e-9)
    # a zero-width kernel has no density: null, not a number
    flat = kde.train(np.zeros((5, 2)), None, 0, model_cfg("kde"), None)
    assert kde.heldout_metrics(flat, 1.0, ref) == {"nll": None}


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
        # the families with a likelihood score the held-out reference set; the diffusion model has none
        assert ("nll" in r) == (r["model.family"] in ("gmm", "kde")), r
        assert r.get("nll") is None or np.isfinite(r["nll"])


def test_mode_metrics_against_their_definition(toy2d):
    pool, _, ref = toy2d
    real = pool.distribution()
    m = mode_metrics(ref, real)  # real samples: every mode, and P(chi2_2 <= 9) = 98.9% within 3 sigma
    assert m["modes_covered"] == 25 and m["high_quality_frac"] > 0.95
    one_mode = real.means[7] + 0.1 * np.random.default_rng(0).standard_normal((200, 2))
    assert mode_metrics(one_mode, real) == {"modes_covered": 1.0, "high_quality_frac": 1.0}
    between = real.means[:5] + 1.0  # halfway between grid points: no mode within 3 sigma (0.67)
    assert mode_metrics(between, real) == {"modes_covered": 0.0, "high_quality_frac": 0.0}

"""The Gaussian family against MAD's closed-form theory (section 3.1, appendix A)."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import digamma

from mad.config import Estimator, ModelConfig, SampleConfig
from mad.data import RealPool
from mad.data.vectors import RealDistribution
from mad.metrics import gaussian_w2
from mad.models import gaussian
from mad.report import expected_logdet_ratio, logdet_refit_term


def fully_synthetic_traces(lam: float, estimator: Estimator, n: int, gens: int, reps: int, dim: int = 2):
    """trace(Sigma_t)/trace(I) for t = 1..gens over independent replicate chains, through the family's code."""
    model, smp = ModelConfig(estimator=estimator), SampleConfig(bias=lam)
    pool = RealPool("gaussian", mean=np.zeros(dim), cov=np.eye(dim))
    out = np.zeros((reps, gens))
    for r in range(reps):
        x, _ = pool.draw(r, 0, n)
        for t in range(gens):
            state = gaussian.train(x, None, 0, model, seed=r)
            out[r, t] = np.trace(state["cov"].numpy()) / dim
            x, _ = gaussian.sample(state, n, 0, (dim,), model, smp, seed=10_000 * r + t)
    return out


@pytest.mark.parametrize("lam", [1.0, 0.8])
def test_expected_covariance_decays_like_lambda_power(lam):
    gens, reps, n = 6, 3000, 30
    tr = fully_synthetic_traces(lam, Estimator.unbiased, n, gens, reps)
    expected = lam ** np.arange(gens)  # E[Sigma_t] = lambda^(t-1) Sigma_1, E[Sigma_1] = I
    stderr = tr.std(axis=0) / np.sqrt(reps)
    assert np.all(np.abs(tr.mean(axis=0) - expected) < 4 * stderr + 1e-3), (tr.mean(0), expected)


def test_mle_estimator_shrinks_by_n_minus_one_over_n():
    gens, reps, n = 5, 3000, 10
    tr = fully_synthetic_traces(1.0, Estimator.mle, n, gens, reps)
    expected = ((n - 1) / n) ** np.arange(1, gens + 1)
    stderr = tr.std(axis=0) / np.sqrt(reps)
    assert np.all(np.abs(tr.mean(axis=0) - expected) < 4 * stderr + 1e-3)


def test_median_collapses_even_without_bias():
    # The mean stays flat (a martingale) but the typical chain collapses: MAD's almost-sure collapse.
    tr = fully_synthetic_traces(1.0, Estimator.unbiased, 5, 40, 400)
    assert np.median(tr[:, -1]) < 0.05 * np.median(tr[:, 0])


def test_sampling_applies_lambda_to_covariance():
    state = {"mean": torch.zeros(3, dtype=torch.float64), "cov": torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))}
    x, y = gaussian.sample(state, 200_000, 0, (3,), ModelConfig(), SampleConfig(bias=0.5), seed=0)
    assert y is None
    np.testing.assert_allclose(np.var(x, axis=0), [0.5, 2.0, 4.5], rtol=0.02)


def test_w2_closed_form():
    m1, m2 = np.zeros(2), np.array([3.0, 4.0])
    assert gaussian_w2(m1, np.eye(2), m2, np.eye(2)) == pytest.approx(5.0)
    # same mean, isotropic scales s1, s2: W2^2 = d (s1 - s2)^2
    assert gaussian_w2(m1, 4 * np.eye(2), m1, np.eye(2)) == pytest.approx(np.sqrt(2.0))


def test_closed_form_metrics_report_drift():
    state = {"mean": torch.tensor([0.3, 0.4], dtype=torch.float64), "cov": torch.eye(2, dtype=torch.float64) * 0.5}
    m = gaussian.closed_form_metrics(state, 1.0, RealDistribution.gaussian(np.zeros(2), np.eye(2)))
    assert m["trace_ratio"] == pytest.approx(0.5)
    assert m["mean_shift"] == pytest.approx(0.5)
    assert m["w2"] == pytest.approx(np.sqrt(0.25 + 2 * (np.sqrt(0.5) - 1) ** 2))


def test_real_draws_nest_and_repeat():
    pool = RealPool("gaussian", mean=np.zeros(4), cov=np.eye(4))
    a, _ = pool.draw(7, 0, 50)
    b, _ = pool.draw(7, 0, 80)
    c, _ = pool.draw(7, 3, 50)
    np.testing.assert_array_equal(a, b[:50])
    assert not np.allclose(a, c)


# ----------------------------------------------------------------------------- log det: the typical path
def fully_synthetic_logdets(lam: float, estimator: Estimator, n: int, gens: int, reps: int, dim: int,
                            seed0: int = 0) -> np.ndarray:
    """logdet_ratio of generations 1..gens over independent chains, as closed_form_metrics records it."""
    model, smp = ModelConfig(estimator=estimator), SampleConfig(bias=lam)
    pool = RealPool("gaussian", mean=np.zeros(dim), cov=np.eye(dim))
    out = np.zeros((reps, gens))
    real = RealDistribution.gaussian(np.zeros(dim), np.eye(dim))
    for r in range(seed0, seed0 + reps):
        x, _ = pool.draw(r, 0, n)
        for t in range(gens):
            state = gaussian.train(x, None, 0, model, seed=r)
            out[r - seed0, t] = gaussian.closed_form_metrics(state, lam, real)["logdet_ratio"]
            x, _ = gaussian.sample(state, n, 0, (dim,), model, smp, seed=10_000 * r + t)
    return out


@pytest.mark.parametrize("dim,n", [(1, 5), (3, 8)])
@pytest.mark.parametrize("estimator", [Estimator.unbiased, Estimator.mle])
@pytest.mark.parametrize("lam", [1.0, 0.8])
def test_expected_logdet_ratio_matches_simulation(dim, n, estimator, lam):
    """E[log det Sigma_t - log det Sigma_real] = c(n) + (t-1)(d log lambda + c(n)) against 2000 chains."""
    gens, reps = 4, 2000
    seed0 = 100_000 * dim + 10_000 * (estimator == Estimator.mle) + 1000 * (lam != 1.0)  # independent combos
    ld = fully_synthetic_logdets(lam, estimator, n, gens, reps, dim, seed0)
    expected = np.array(expected_logdet_ratio(dim, [n] * gens, lam, estimator == Estimator.mle))
    stderr = ld.std(axis=0, ddof=1) / np.sqrt(reps)
    assert np.all(np.abs(ld.mean(axis=0) - expected) < 4 * stderr), (ld.mean(0), expected, stderr)
    # the typical path falls every generation, even at lambda = 1 where E[trace_ratio] stays 1
    assert np.all(np.diff(expected) < 0)


def test_logdet_refit_term_formula():
    # d = 1, unbiased: E[log chi^2_{n-1}/(n-1)] = psi((n-1)/2) + log 2 - log(n-1)
    assert logdet_refit_term(5, 1) == pytest.approx(digamma(2.0) + math.log(2) - math.log(4), rel=1e-14)
    # psi at integers and half-integers in closed form: psi(1) = -gamma, psi(1/2) = -gamma - 2 log 2, psi(3/2) = psi(1/2) + 2
    g = 0.5772156649015329
    # d = 3, n = 4: chi^2 with 3, 2, 1 dof -> psi(3/2) + psi(1) + psi(1/2) + 3 log 2 - 3 log 3
    expected = (-g - 2 * math.log(2) + 2) + (-g) + (-g - 2 * math.log(2)) + 3 * math.log(2) - 3 * math.log(3)
    assert logdet_refit_term(4, 3) == pytest.approx(expected, rel=1e-13)
    assert logdet_refit_term(4, 3, mle=True) == pytest.approx(expected + 3 * math.log(3) - 3 * math.log(4), rel=1e-13)
    assert logdet_refit_term(3, 3) is None  # n <= d: a singular fit, log det = -inf
    # the chain: c(n_init), then + d log lambda + c(n_synth) per generation
    e = expected_logdet_ratio(2, [10, 6, 6], 0.5)
    step = 2 * math.log(0.5) + logdet_refit_term(6, 2)
    assert e == pytest.approx([logdet_refit_term(10, 2), logdet_refit_term(10, 2) + step,
                               logdet_refit_term(10, 2) + 2 * step], rel=1e-14)
    assert expected_logdet_ratio(2, [10, 2], 1.0) is None


def test_logdet_ratio_values_and_singular_fits():
    real_cov = np.diag([1.0, 2.0, 4.0])
    state = {"mean": torch.zeros(3, dtype=torch.float64), "cov": torch.diag(torch.tensor([0.5, 1.0, 8.0], dtype=torch.float64))}
    m = gaussian.closed_form_metrics(state, 1.0, RealDistribution.gaussian(np.zeros(3), real_cov))
    assert m["logdet_ratio"] == pytest.approx(math.log(0.5 * 1.0 * 8.0) - math.log(8.0), abs=1e-14)
    assert m["logdet_ratio_per_dim"] == pytest.approx(m["logdet_ratio"] / 3)
    # singular fits (log det = -inf) are recorded as None, which JSON writes as null
    x = np.random.default_rng(0).standard_normal((3, 5))  # 3 samples in 5 dims: rank 2
    singular = [gaussian.train(x, None, 0, ModelConfig())["cov"], torch.zeros(5, 5, dtype=torch.float64)]
    for cov in singular:
        m = gaussian.closed_form_metrics({"mean": torch.zeros(5, dtype=torch.float64), "cov": cov}, 1.0,
                                         RealDistribution.gaussian(np.zeros(5), np.eye(5)))
        assert m["logdet_ratio"] is None and m["logdet_ratio_per_dim"] is None
        assert math.isfinite(m["w2"]) and math.isfinite(m["trace_ratio"])
        assert '"logdet_ratio": null' in json.dumps(m, allow_nan=False)
    # a 1-D fit: log(var_t / var_real)
    state = {"mean": torch.zeros(1, dtype=torch.float64), "cov": torch.tensor([[0.25]], dtype=torch.float64)}
    assert gaussian.closed_form_metrics(state, 1.0, RealDistribution.gaussian(np.zeros(1), np.eye(1)))["logdet_ratio"] == pytest.approx(math.log(0.25))


def test_one_dimensional_chains_through_run_py(tmp_path):
    """data.dim = 1 (it crashed in clean-fid's sqrtm) and a singular fit (n_init = d = 3) through run.py."""
    from conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli("configs/experiment/gaussian.yaml", f"out={out}", "sweep={data.dim: [1, 3]}", "loop.n_init=3",
                   "loop.generations=3", "metrics.n_eval=200", "data.n_reference=300", "report.tensorboard=false",
                   "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_dim = {1: [r for r in recs if r["data.dim"] == 1], 3: [r for r in recs if r["data.dim"] == 3]}
    assert [r["gen"] for r in sorted(by_dim[1], key=lambda r: r["gen"])] == [1, 2, 3] and len(by_dim[3]) == 3
    for r in recs:
        assert math.isfinite(r["w2"]) and r["w2"] >= 0 and math.isfinite(r["fid"]), r
    assert all(math.isfinite(r["logdet_ratio"]) for r in by_dim[1])  # n = 3 > d = 1
    assert all(r["logdet_ratio"] is None for r in by_dim[3])  # n = 3 <= d = 3: singular, recorded as null
    assert (out / "report.html").is_file()

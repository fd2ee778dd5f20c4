"""The Gaussian family against MAD's closed-form theory (section 3.1, appendix A)."""
import numpy as np
import pytest
import torch

from mad.config import Estimator, ModelConfig, SampleConfig
from mad.data import RealPool
from mad.data.vectors import RealDistribution
from mad.metrics import gaussian_w2
from mad.models import gaussian


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

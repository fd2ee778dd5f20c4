"""FID and precision/recall/density/coverage against theory and the reference implementations
(clean-fid's Frechet distance, the ``prdc`` package), plus the driver-facing raw-feature path."""
import contextlib
import importlib
import io
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from mad.config import Features, MetricsConfig
from mad.metrics import (
    compute_knn_sq_radii,
    evaluate,
    feature_stats,
    fid_from_features,
    frechet_distance,
    fid_to_reference,
    frechet_distance_fast,
    gaussian_w2,
    prdc,
    prepare_reference,
    sqrt_psd,
)

prdc_ref = pytest.importorskip("prdc", reason="the prdc package is the dev-only reference (pip install -e '.[dev]')")


def reference_prdc(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        return prdc_ref.compute_prdc(real, fake, k)


# ----------------------------------------------------------------------------- FID
def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((400, 16)) @ np.diag(np.linspace(0.5, 3, 16))
    assert abs(fid_from_features(x, x)) < 1e-8
    mu, sigma = feature_stats(x)
    assert abs(frechet_distance_fast(mu, sigma, mu, sigma)) < 1e-8


def test_fid_of_two_gaussians_matches_closed_form():
    # N(0, I) vs N(m, s^2 I) in d=4: FD = |m|^2 + d (1 - s)^2 = 1.25 + 4 * 0.25 = 2.25
    rng = np.random.default_rng(1)
    d, n, s = 4, 100_000, 1.5
    m = np.array([1.0, 0.5, 0.0, 0.0])
    a = rng.standard_normal((n, d))
    b = m + s * rng.standard_normal((n, d))
    exact = float(m @ m + d * (1 - s) ** 2)
    # sampling std of the estimate is ~sqrt(4 |m|^2 (1 + s^2) / n) ~ 0.013; allow ~4.5 sigma
    fid = fid_from_features(a, b)
    assert abs(fid - exact) < 0.06, (fid, exact)
    # the closed form of the analytic parameters is exact
    assert frechet_distance(np.zeros(d), np.eye(d), m, s**2 * np.eye(d)) == pytest.approx(exact, rel=1e-12)
    assert gaussian_w2(np.zeros(d), np.eye(d), m, s**2 * np.eye(d)) == pytest.approx(math.sqrt(exact), rel=1e-12)


def _cleanfid_frechet(mu1, s1, mu2, s2) -> float:
    """clean-fid's own frechet_distance: the reference (it needs scipy < 1.18 for sqrtm(disp=...))."""
    import warnings

    from cleanfid.fid import frechet_distance as clean_frechet

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(np.real(clean_frechet(mu1, s1, mu2, s2)))


@pytest.mark.parametrize("n1,n2,d", [(300, 300, 2), (300, 300, 4), (400, 300, 64), (3000, 2000, 128)])
def test_frechet_matches_cleanfid(n1, n2, d):
    """Well-conditioned d >= 2: our eigenvalue path equals clean-fid's sqrtm to round-off."""
    rng = np.random.default_rng(d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = q * np.linspace(0.5, 2.0, d)  # a rotated, well-conditioned scale
    a = rng.standard_normal((n1, d)) @ w
    b = (1.1 * rng.standard_normal((n2, d)) + 0.2) @ w
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    assert np.linalg.cond(s1) < 1e3 and np.linalg.cond(s2) < 1e3
    expected = _cleanfid_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2, sqrt_psd(s1)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_fast(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # the per-generation path: Gram matrix of the generated features when n2 < d
    assert fid_to_reference(mu1, s1, sqrt_psd(s1), b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n1,n2,d,rank", [(300, 200, 128, 20), (12, 15, 256, 256), (40, 30, 7, 3), (5, 4, 50, 50)])
def test_frechet_exact_for_singular_covariances(n1, n2, d, rank):
    """Rank-deficient covariances (fewer samples or factors than dimensions). The independent exact
    value: with S = L L^T for any factors, Tr sqrt(S1^1/2 S2 S1^1/2) is the nuclear norm of L2^T L1."""
    rng = np.random.default_rng(d + rank)
    w = rng.standard_normal((rank, d))
    a = rng.standard_normal((n1, rank)) @ w
    b = (1.1 * rng.standard_normal((n2, rank)) + 0.2) @ w
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    assert np.linalg.matrix_rank(s1) < d and np.linalg.matrix_rank(s2) < d
    l1 = (a - mu1).T / np.sqrt(n1 - 1)  # S1 = L1 L1^T
    l2 = (b - mu2).T / np.sqrt(n2 - 1)
    nuclear = np.linalg.svd(l2.T @ l1, compute_uv=False).sum()
    exact = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * nuclear)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-11)
    assert fid_to_reference(mu1, s1, sqrt_psd(s1), b) == pytest.approx(exact, rel=1e-11)


def test_frechet_with_zero_covariances():
    """A point mass against a Gaussian: |mu1 - mu2|^2 + Tr S2; two point masses: |mu1 - mu2|^2."""
    rng = np.random.default_rng(3)
    for d in (1, 2, 5):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        g = rng.standard_normal((d, d))
        s2, zero = g @ g.T, np.zeros((d, d))
        diff2 = float((mu1 - mu2) @ (mu1 - mu2))
        assert frechet_distance(mu1, zero, mu2, s2) == pytest.approx(diff2 + np.trace(s2), rel=1e-12)
        assert frechet_distance(mu2, s2, mu1, zero) == pytest.approx(diff2 + np.trace(s2), rel=1e-12)
        assert frechet_distance(mu1, zero, mu2, zero) == pytest.approx(diff2, rel=1e-12)
        assert gaussian_w2(mu1, zero, mu1, zero) == 0.0


@pytest.mark.parametrize("mu1,var1,mu2,var2", [(0.0, 1.0, 0.0, 1.0), (0.3, 2.0, -1.2, 0.5), (5.0, 1e-12, 5.0, 1.0),
                                               (0.0, 0.0, 1.0, 0.0), (1e3, 4e6, -1e3, 9e6), (0.1, 1.0, 0.1, 1.0 + 1e-9)])
def test_frechet_in_one_dimension_is_the_closed_form(mu1, var1, mu2, var2):
    """d = 1 (scipy 1.17's sqrtm(disp=False) broke clean-fid here): (mu1 - mu2)^2 + (s1 - s2)^2."""
    exact = (mu1 - mu2) ** 2 + (math.sqrt(var1) - math.sqrt(var2)) ** 2
    got = frechet_distance(np.array([mu1]), np.array([[var1]]), np.array([mu2]), np.array([[var2]]))
    assert got == pytest.approx(exact, rel=1e-12, abs=1e-300)
    assert frechet_distance(mu1, var1, mu2, var2) == got  # scalars are 1-D Gaussians too
    assert gaussian_w2(mu1, var1, mu2, var2) == pytest.approx(math.sqrt(exact), rel=1e-12, abs=1e-300)


def test_fid_of_one_dimensional_features():
    """1-D raw features through every FID entry point: the closed form of the sample moments."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.0, 1.0, (500, 1)), rng.normal(0.5, 2.0, (300, 1))
    exact = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert fid_from_features(a, b) == pytest.approx(exact, rel=1e-12)
    mu, sigma = feature_stats(a)
    assert sigma.shape == (1, 1)
    assert fid_to_reference(mu, sigma, sqrt_psd(sigma), b) == pytest.approx(exact, rel=1e-12)
    assert fid_to_reference(mu, sigma, sqrt_psd(sigma), b[:2]) == pytest.approx(
        (a.mean() - b[:2].mean()) ** 2 + (a.std(ddof=1) - b[:2].std(ddof=1)) ** 2, rel=1e-12)


def test_evaluate_on_one_dimensional_data():
    """The driver's metrics path on d = 1 raw features: finite, and equal to the references."""
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((400, 1)), 0.5 * rng.standard_normal((300, 1)) + 0.3
    cfg = MetricsConfig(features=Features.raw, k=5)
    ref = prepare_reference(real, None, real, None, cfg, None)
    out = evaluate(ref, fake, None, cfg)
    assert all(math.isfinite(v) for v in out.values())
    exact = (real.mean() - fake.mean()) ** 2 + (real.std(ddof=1) - fake.std(ddof=1)) ** 2
    assert out["fid"] == pytest.approx(exact, rel=1e-12)
    theirs = reference_prdc(real, fake, 5)
    for key in ("precision", "recall", "density", "coverage"):
        assert out[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert out["coverage"] < 0.9  # a narrower fake set leaves the real tails uncovered: not a trivial all-ones


def test_frechet_bad_inputs():
    with pytest.raises(ValueError, match="different widths"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        fid_from_features(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(np.zeros((1, 3)))


# ----------------------------------------------------------------------------- prdc vs reference
def _sets(kind: str, n_real: int, n_fake: int, d: int, rng):
    if kind == "float64":
        return rng.standard_normal((n_real, d)), 1.2 * rng.standard_normal((n_fake, d)) + 0.2
    if kind == "float32":
        return (rng.standard_normal((n_real, d)).astype(np.float32),
                (0.8 * rng.standard_normal((n_fake, d))).astype(np.float32))
    if kind == "ties":  # integer grid: many exactly equal distances, duplicates, radius-0 balls
        return rng.integers(0, 3, (n_real, d)).astype(np.float64), rng.integers(0, 3, (n_fake, d)).astype(np.float64)
    if kind == "offset":  # norms >> distances: stresses the float32 error bound and exact refinement
        return ((rng.standard_normal((n_real, d)) + 1000).astype(np.float32),
                (rng.standard_normal((n_fake, d)) + 1000.3).astype(np.float32))
    if kind == "outlier":  # one far point: its huge norm widens the error bounds of every pair
        real, fake = rng.standard_normal((n_real, d)), rng.standard_normal((n_fake, d))
        real[0] *= 1e4
        fake[-1] += 1e3
        return real, fake
    if kind == "mixed":  # float32 real, float64 fake: prdc rounds each pass differently
        return rng.standard_normal((n_real, d)).astype(np.float32), rng.standard_normal((n_fake, d))
    raise AssertionError(kind)


# every approximate-pass dtype must give the reference's numbers; None is the automatic choice
GEMM_DTYPES = [None, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["float64", "float32", "ties", "offset", "outlier", "mixed"])
@pytest.mark.parametrize("n_real,n_fake,d,k", [(200, 150, 2, 5), (120, 300, 16, 3), (300, 250, 64, 10), (50, 40, 1, 1)])
def test_prdc_matches_reference_package(kind, n_real, n_fake, d, k, gemm_dtype):
    rng = np.random.default_rng(n_real * 7 + d + k)
    real, fake = _sets(kind, n_real, n_fake, d, rng)
    expected = reference_prdc(real, fake, k)
    got = prdc(real, fake, k, gemm_dtype=gemm_dtype)
    assert set(got) == {"precision", "recall", "density", "coverage"}
    for key in expected:
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(float(expected[key]), abs=1e-6), key


def _inception_like(n: int, d: int, seed: int, shift: float, scale: float) -> np.ndarray:
    """Non-negative 2048-d features with low-rank structure, like Inception pool features."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).standard_normal((32, d)).astype(np.float32) / np.sqrt(32)
    z = rng.standard_normal((n, 32)).astype(np.float32) * scale + shift
    return np.maximum(z @ w + 0.3 * rng.standard_normal((n, d)).astype(np.float32), 0)


@pytest.mark.parametrize("gemm_dtype", GEMM_DTYPES, ids=str)
def test_prdc_matches_reference_on_inception_like_features(gemm_dtype):
    """Full-width features, where distances concentrate and the error bounds are tested hardest."""
    real, fake = _inception_like(700, 2048, 0, 0.0, 1.0), _inception_like(600, 2048, 1, 0.1, 0.9)
    expected = {m: float(v) for m, v in reference_prdc(real, fake, 5).items()}
    assert prdc(real, fake, 5, gemm_dtype=gemm_dtype) == pytest.approx(expected, abs=1e-6)


def test_prdc_is_independent_of_chunking_and_accepts_tensors():
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((230, 8)).astype(np.float32), rng.standard_normal((170, 8)).astype(np.float32)
    whole = prdc(real, fake, 4)
    # ~5 rows per chunk: many chunks, partial last chunks
    assert prdc(real, fake, 4, chunk_elems=1000) == whole
    assert prdc(torch.from_numpy(real), torch.from_numpy(fake), 4) == whole
    assert whole == pytest.approx({k: float(v) for k, v in reference_prdc(real, fake, 4).items()}, abs=1e-6)


def test_prdc_gemm_dtype_choice():
    """Where float32 GEMMs may be lower precision (TF32/bf16 allowed) the automatic choice is never
    float32 (bfloat16 on CPUs with AMX, else float64), and asking for float32 there is refused;
    the results do not change."""
    mod = importlib.import_module("mad.metrics.prdc")
    rng = np.random.default_rng(8)
    real, fake = rng.standard_normal((120, 12)).astype(np.float32), rng.standard_normal((90, 12))
    expected = prdc(real, fake, 3)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert mod._approx_dtype(torch.device("cpu")) in (torch.bfloat16, torch.float64)
        assert prdc(real, fake, 3) == expected
        with pytest.raises(ValueError, match="highest"):
            prdc(real, fake, 3, gemm_dtype=torch.float32)
    finally:
        torch.set_float32_matmul_precision(before)
    assert mod._approx_dtype(torch.device("cpu")) in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="gemm_dtype must be one of"):
        prdc(real, fake, 3, gemm_dtype=torch.float16)
    assert expected == pytest.approx({k: float(v) for k, v in reference_prdc(real, fake, 3).items()}, abs=1e-6)


def test_precomputed_radii_match_the_reference_and_reuse():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((150, 6)), rng.standard_normal((140, 6)) + 0.3
    sq = compute_knn_sq_radii(real, 5)
    with contextlib.redirect_stdout(io.StringIO()):
        from prdc.prdc import compute_nearest_neighbour_distances

        expected = compute_nearest_neighbour_distances(real, 5)
    np.testing.assert_allclose(np.sqrt(sq), expected, rtol=1e-12)
    assert prdc(real, fake, 5, real_sq_radii=sq) == prdc(real, fake, 5)
    # the radii passed in are the ones used: larger balls admit more fakes
    wider = prdc(real, fake, 5, real_sq_radii=4 * sq)
    assert wider["precision"] > prdc(real, fake, 5)["precision"] and wider["coverage"] == 1.0


def test_precision_and_recall_of_a_set_against_itself_are_one():
    x = np.random.default_rng(5).standard_normal((300, 10))
    out = prdc(x, x, 5)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0


def test_precision_recall_separate_quality_from_diversity():
    """A collapsed generator (a narrow blob inside the real support) keeps precision, loses recall."""
    rng = np.random.default_rng(6)
    real = rng.standard_normal((500, 2))
    collapsed = 0.1 * rng.standard_normal((500, 2))
    out = prdc(real, collapsed, 5)
    assert out["precision"] > 0.95 and out["recall"] < 0.2 and out["coverage"] < 0.2


@pytest.mark.parametrize("real,fake,k,message", [
    (np.zeros((10, 3)), np.zeros((10, 4)), 2, "different widths: 3 vs 4"),
    (np.zeros((5, 3)), np.zeros((10, 3)), 5, "real: k-NN with k=5 needs at least k\\+1=6 samples, got 5"),
    (np.zeros((10, 3)), np.zeros((3, 3)), 3, "fake: k-NN with k=3 needs at least k\\+1=4 samples, got 3"),
    (np.array([[0.0, np.nan]] * 8), np.zeros((8, 2)), 2, "real: features contain NaN or inf"),
    (np.zeros((8, 2)), np.array([[np.inf, 0.0]] * 8), 2, "fake: features contain NaN or inf"),
    (np.zeros(8), np.zeros((8, 1)), 2, "real: features must be a 2-D"),
    (np.zeros((8, 2)), np.zeros((8, 2)), 0, "k must be a positive integer"),
])
def test_prdc_bad_inputs(real, fake, k, message):
    with pytest.raises(ValueError, match=message) as err:
        prdc(real, fake, k)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- driver-facing API (raw)
def test_prepare_reference_and_evaluate_on_raw_vectors():
    rng = np.random.default_rng(7)
    cfg = MetricsConfig(features=Features.raw, k=5)
    ref_x = rng.standard_normal((600, 3))
    ref = prepare_reference(ref_x, None, None, None, cfg, None)
    assert ref.features_kind == "raw" and ref.extractor_state is None and ref.class_hist is None
    same = evaluate(ref, ref_x, None, cfg)
    assert set(same) == {"fid", "kid", "kid_se", "precision", "recall", "density", "coverage"}
    assert all(type(v) is float for v in same.values())
    assert abs(same["fid"]) < 1e-8 and same["precision"] == 1.0 and same["recall"] == 1.0
    shifted = rng.standard_normal((600, 3)) + np.array([4.0, 0.0, 0.0])
    out = evaluate(ref, shifted, None, cfg)
    assert out["fid"] == pytest.approx(16.0, abs=1.5)  # |m|^2 = 16 up to sampling error
    assert out["precision"] < 0.6 and out["coverage"] < 0.2
    # identical to the standalone functions (cached radii and sqrt(sigma) change nothing)
    assert out["fid"] == pytest.approx(fid_from_features(ref_x, shifted), rel=1e-6)
    assert {k: out[k] for k in ("precision", "recall", "density", "coverage")} == prdc(ref_x, shifted, 5)
    # the reference travels through pickle (ray.put) unchanged
    assert evaluate(pickle.loads(pickle.dumps(ref)), shifted, None, cfg) == out
    # a different k recomputes the radii rather than reusing the cached ones
    out3 = evaluate(ref, shifted, None, MetricsConfig(features=Features.raw, k=3))
    assert out3["precision"] == prdc(ref_x, shifted, 3)["precision"]


def test_unknown_features_kind_and_mismatched_inputs():
    cfg = MetricsConfig(features="bogus")
    with pytest.raises(ValueError, match="unknown feature kind 'bogus'; choose one of raw, classifier, inception") as err:
        prepare_reference(np.zeros((10, 2)), None, None, None, cfg, None)
    assert "\n" not in str(err.value)
    ref = prepare_reference(np.random.default_rng(0).standard_normal((20, 2)), None, None, None, MetricsConfig(), None)
    with pytest.raises(ValueError, match="shape"):
        evaluate(ref, np.zeros((20, 3)), None, MetricsConfig())
    with pytest.raises(ValueError, match="prepared with 'raw'"):
        evaluate(ref, np.zeros((20, 2)), None, MetricsConfig(features=Features.classifier))


def test_importing_metrics_does_not_import_ray():
    code = "import sys, mad.metrics; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- w2 and w2_fit (Gaussian)
def test_w2_is_the_sampler_and_w2_fit_the_fitted_model():
    """w2 = W2(N(mu, lambda Sigma), real), w2_fit = W2(N(mu, Sigma), real); isotropic closed form
    W2^2 = |mu - mu_r|^2 + d (s - s_r)^2 with s the per-coordinate standard deviations."""
    from mad.data.vectors import RealDistribution
    from mad.models import gaussian

    d, var, lam = 3, 2.25, 0.36
    state = {"mean": torch.tensor([0.3, 0.0, 0.4], dtype=torch.float64),
             "cov": var * torch.eye(d, dtype=torch.float64)}
    real = RealDistribution.gaussian(np.zeros(d), np.eye(d))
    m = gaussian.closed_form_metrics(state, lam, real)
    assert m["w2"] == pytest.approx(math.sqrt(0.25 + d * (math.sqrt(lam * var) - 1) ** 2), rel=1e-12)
    assert m["w2_fit"] == pytest.approx(math.sqrt(0.25 + d * (math.sqrt(var) - 1) ** 2), rel=1e-12)
    one = gaussian.closed_form_metrics(state, 1.0, real)
    assert one["w2"] == one["w2_fit"] == m["w2_fit"]


@pytest.mark.usefixtures("ray_local")
def test_phase_metric_w2_fit_is_what_phase_csv_uses(tmp_path):
    """A fresh-data sweep with report.phase.metric=w2_fit: both distances recorded, phase.csv built on w2_fit."""
    import csv
    import json

    from mad.config import load_config
    from mad.driver import Driver

    cfg = load_config(None, ["data.name=gaussian", "data.dim=2", "model.family=gaussian", "metrics.features=raw",
                             "metrics.n_eval=20", "data.n_reference=50", "loop.kind=fresh_data", "loop.generations=4",
                             "loop.n_init=20", "loop.n_real=20", "sweep={}", "sweep.loop.n_synth=[0,20]",
                             "sweep.sample.bias=[1.0,0.5]", "report.phase.metric=w2_fit", "report.phase.last_k=2",
                             "report.html=false", "report.tensorboard=false", "report.progress=false",
                             f"out={tmp_path / 'run'}"])
    Driver(cfg, quiet=True).run()
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        if r["bias"] == 1.0:
            assert r["w2_fit"] == r["w2"]
        else:
            assert r["w2_fit"] != r["w2"]
    rows = list(csv.DictReader((tmp_path / "run" / "phase.csv").open()))
    assert {r["metric"] for r in rows} == {"w2_fit"} and len(rows) == 4
    for row in rows:  # the limit is the mean of w2_fit over the last 2 generations
        chain = [r for r in recs if r["bias"] == float(row["bias"]) and r["gen"] >= 2
                 and r["n_synth"] == int(row["n_synth"])]
        want = np.mean([r["w2_fit"] for r in chain if r["gen"] >= 3])
        assert float(row["limit"]) == pytest.approx(want, rel=1e-5)



# ----------------------------------------------------------------------------- KID and the real-vs-real floor
def _torch_fidelity_kid(a, b, subsets, m):
    tf = pytest.importorskip("torch_fidelity.metric_kid",
                             reason="torch-fidelity is the dev-only KID reference (pip install -e '.[dev]')")
    out = tf.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets,
                                    kid_subset_size=m, rng_seed=2020, verbose=False, kid_kernel="poly",
                                    kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
    return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


@pytest.mark.parametrize("full_kernel_max", [4096, 10])  # the indexed kernels, and torch-fidelity's per-subset way
def test_kid_equals_torch_fidelity_on_fixed_features(full_kernel_max, monkeypatch):
    import mad.metrics.mmd as kid_module

    monkeypatch.setattr(kid_module, "_FULL_KERNEL_MAX", full_kernel_max)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 24)) @ np.diag(np.linspace(0.5, 2.0, 24))
    b = 1.1 * rng.standard_normal((220, 24)) + 0.2
    for subsets, m in ((40, 60), (25, 220)):
        want = _torch_fidelity_kid(a, b, subsets, m)
        got = kid_module.kid(a, b, subsets=subsets, subset_size=m)
        assert got[0] == pytest.approx(want[0], rel=1e-6, abs=1e-12)
        assert got[1] == pytest.approx(want[1], rel=1e-6, abs=1e-12)


def test_evaluate_records_torch_fidelitys_kid_with_the_configured_subsets():
    rng = np.random.default_rng(4)
    ref_x = rng.standard_normal((400, 6))
    fake = 0.8 * rng.standard_normal((150, 6)) + 0.3
    cfg = MetricsConfig(features=Features.raw, n_eval=150, kid_subsets=30)  # subset size: half of 150
    out = evaluate(prepare_reference(ref_x, None, None, None, cfg, None), fake, None, cfg)
    want = _torch_fidelity_kid(ref_x, fake, 30, 75)
    assert out["kid"] == pytest.approx(want[0], rel=1e-6) and out["kid_se"] == pytest.approx(want[1], rel=1e-6)
    # a generated set of another size gets its own subsets (the reference's plan is for 150 rows)
    other = evaluate(prepare_reference(ref_x, None, None, None, cfg, None), fake[:100], None, cfg)
    assert other["kid"] == pytest.approx(_torch_fidelity_kid(ref_x, fake[:100], 30, 50)[0], rel=1e-6)
    off = MetricsConfig(features=Features.raw, n_eval=150, kid_subsets=0)
    assert "kid" not in evaluate(prepare_reference(ref_x, None, None, None, off, None), fake, None, off)


def test_floor_samples_are_real_and_disjoint_from_the_reference():
    from mad.config import DataConfig, DataName
    from mad.data import load_real
    from mad.tasks import floor_sample, prepare_reference as task_reference

    pool, (ref_x, _) = load_real(DataConfig(name=DataName.digits, n_reference=300), seed=0)
    floor = floor_sample(pool, 0, 300)
    pool_rows = {x.tobytes() for x in pool.x}
    floor_rows = {x.tobytes() for x in floor}
    assert floor_rows <= pool_rows and len(floor_rows) == 300  # 300 distinct real training-pool images
    assert not floor_rows & {x.tobytes() for x in ref_x}  # none of them in the reference set
    assert floor_sample(pool, 0, len(pool.x) + 1) is None
    cfg = MetricsConfig(features=Features.raw, n_eval=300)
    ref = task_reference(ref_x, None, pool, cfg, None, seed=0)
    assert ref.floor["fid_floor"] == pytest.approx(fid_from_features(ref_x.reshape(300, -1), floor.reshape(300, -1)),
                                                   rel=1e-6)
    assert ref.floor["kid_floor"] == pytest.approx(_torch_fidelity_kid(
        ref_x.reshape(300, -1).astype(np.float64), floor.reshape(300, -1).astype(np.float64), 100, 150)[0], rel=1e-6)


@pytest.mark.usefixtures("ray_local")
def test_the_real_vs_real_floor_is_in_records_summary_and_report(tmp_path):
    import csv
    import json

    from mad.config import load_config
    from mad.data import load_real
    from mad.driver import Driver
    from mad.tasks import floor_sample

    run = tmp_path / "run"
    cfg = load_config("configs/experiment/gaussian.yaml",
                      ["data.dim=3", "loop.generations=3", "loop.n_init=40", "metrics.n_eval=60", "data.n_reference=80",
                       "sweep={}", "sweep.seed=[0,1]", "seed=5", "report.tensorboard=false", "report.progress=false",
                       f"out={run}"])
    Driver(cfg, quiet=True).run()
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and len({r["fid_floor"] for r in recs}) == 1 and len({r["kid_floor"] for r in recs}) == 1
    pool, (ref_x, _) = load_real(cfg.data, 5)  # the run's seed picks the reference and the floor's draw
    floor = floor_sample(pool, 5, 60)
    assert recs[0]["fid_floor"] == pytest.approx(fid_from_features(ref_x, floor), rel=1e-6)
    assert recs[0]["kid_floor"] == pytest.approx(_torch_fidelity_kid(ref_x, floor, 100, 30)[0], rel=1e-6)
    rows = [r for r in csv.DictReader((run / "summary.csv").open()) if r["metric"] == "fid_floor"]
    assert len(rows) == 3 and all(float(r["mean"]) == pytest.approx(recs[0]["fid_floor"]) for r in rows)
    page = (run / "report.html").read_text()
    assert "real vs real: fid" in page and "real vs real: kid" in page


@pytest.mark.parametrize("override,message", [
    ("metrics.kid_subset_size=501", r"^metrics.kid_subset_size: must be null or in \[2, 500\]"),
    ("metrics.kid_subset_size=1", r"^metrics.kid_subset_size: must be null or in \[2, 500\]"),
    ("metrics.kid_subsets=-1", r"^metrics.kid_subsets: must be 0 \(no KID\) or positive"),
    ("model.kde.rule=silverman", r"^model.kde.rule: Invalid value 'silverman', expected one of \[scott_std, scott\]"),
])
def test_kid_and_kde_keys_are_checked_at_load_time(override, message):
    from mad.config import ConfigError, load_config

    base = ["data.name=toy2d", "model.family=kde", "metrics.features=raw", "sweep={}"]
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [*base, override])
    assert "\n" not in str(err.value)

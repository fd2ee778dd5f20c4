"""The loop stages of loops/stages.py against their definitions: Bradley-Terry choice, correction, subsampling."""
import numpy as np
import pytest

from loops import stages


def test_curation_follows_bradley_terry_choice_probabilities():
    rewards = np.array([0.0, 1.0, 2.0, -1.0])
    k, groups = 4, 40_000
    idx = stages.curate_indices(np.tile(rewards, groups), k, np.random.default_rng(0))
    assert len(idx) == groups and np.all(idx // k == np.arange(groups))  # one pick per group, from its group
    counts = np.bincount(idx % k, minlength=k)
    expected = np.exp(rewards) / np.exp(rewards).sum()
    # each count is binomial(groups, p): within 4 standard deviations
    sd = np.sqrt(groups * expected * (1 - expected))
    assert np.all(np.abs(counts - groups * expected) < 4 * sd), (counts, groups * expected)
    # a chi-square test of the whole vector (3 degrees of freedom; 16.3 is the 0.999 quantile)
    chi2 = (((counts - groups * expected) ** 2) / (groups * expected)).sum()
    assert chi2 < 16.3


def test_curation_with_equal_rewards_is_uniform_and_k1_keeps_everything():
    idx = stages.curate_indices(np.zeros(30_000), 3, np.random.default_rng(1))
    counts = np.bincount(idx % 3, minlength=3)
    assert counts.sum() == 10_000 and np.all(np.abs(counts - 10_000 / 3) < 4 * np.sqrt(10_000 * 2 / 9))
    assert np.array_equal(stages.curate_indices(np.arange(7.0), 1, np.random.default_rng(0)), np.arange(7))


def test_curation_record_counts_and_bad_input():
    x = np.arange(10)[:, None].astype(float)
    res = stages.curate(x, np.arange(10), np.arange(10.0), 3, np.random.default_rng(0))
    assert (res.produced, res.kept, res.changed) == (10, 3, 0)  # the 10th candidate forms no whole group
    assert np.array_equal(res.x[:, 0].astype(int), res.y)
    with pytest.raises(ValueError, match="finite"):
        stages.curate_indices(np.array([0.0, np.nan]), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 5 candidates"):
        stages.curate_indices(np.zeros(4), 5, np.random.default_rng(0))


def test_correction_identity_at_zero_and_centres_at_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    centres = np.array([[5.0, 0, 0], [-5.0, 0, 0]])
    same = stages.correct(x, None, centres, None, 0.0)
    assert same.x is x and same.changed == 0
    full = stages.correct(x, None, centres, None, 1.0)
    nearest = np.where(x[:, :1] > 0, centres[0], centres[1])
    assert np.allclose(full.x, nearest) and full.changed == 50
    half = stages.correct(x, None, centres, None, 0.5)
    assert np.allclose(half.x, (x + nearest) / 2)


def test_correction_uses_the_centres_of_the_samples_class_and_keeps_uint8():
    x = np.full((4, 1, 2, 2), 100, dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    centres = np.stack([np.zeros(4), np.full(4, 200.0)])
    out = stages.correct(x, y, centres, np.array([0, 1]), 1.0)
    assert out.x.dtype == np.uint8 and out.x.shape == x.shape
    assert np.all(out.x[y == 0] == 0) and np.all(out.x[y == 1] == 200)  # not simply the nearest centre
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stages.correct(x, y, centres, np.array([0, 1]), 1.5)


def test_kmeans_centres_per_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    x = rng.normal(size=(200, 2)) + np.where(y[:, None] == 0, -10.0, 10.0)
    centres, labels = stages.kmeans_centres(x, y, 3, seed=0)
    assert centres.shape == (6, 2) and list(labels) == [0, 0, 0, 1, 1, 1]
    assert np.all(centres[labels == 0] < 0) and np.all(centres[labels == 1] > 0)


def test_subsample_sizes_and_seeds():
    a = stages.subsample_indices(1000, 300, np.random.default_rng(5))
    b = stages.subsample_indices(1000, 300, np.random.default_rng(5))
    c = stages.subsample_indices(1000, 300, np.random.default_rng(6))
    assert len(a) == 300 and len(np.unique(a)) == 300 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(stages.subsample_indices(10, 50, np.random.default_rng(0)), np.arange(10))


def test_mixture_correction_replaces_a_share_gamma_by_the_nearest_centre_and_leaves_the_rest():
    """correct.mode=mixture (Gillman et al.'s theory's gamma): round(gamma n) of the samples, drawn from
    the stage's stream, become exactly their nearest centre of their own class; the others are returned
    as sampled, bit for bit. blend at the same gamma moves every sample instead."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    centre_labels = np.array([0, 0, 1, 1])
    x = rng.normal(size=(200, 2)) * 3 + 5
    y = rng.integers(0, 2, 200)
    for gamma in (0.0, 0.3, 1.0):
        res = stages.correct(x, y, centres, centre_labels, gamma, "mixture", np.random.default_rng(7))
        again = stages.correct(x, y, centres, centre_labels, gamma, "mixture", np.random.default_rng(7))
        assert np.array_equal(res.x, again.x)  # the stage's stream decides which
        moved = np.any(res.x != x, axis=1)
        assert moved.sum() == res.changed == round(gamma * 200)
        # by hand: the nearest centre of the sample's own class
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        d2[y[:, None] != centre_labels[None, :]] = np.inf
        nearest = centres[d2.argmin(1)]
        assert np.array_equal(res.x[moved], nearest[moved])
        assert np.array_equal(res.x[~moved], x[~moved])
        assert np.array_equal(res.y, y)
    blend = stages.correct(x, y, centres, centre_labels, 0.3)
    assert blend.changed == 200 and np.allclose(blend.x, x + 0.3 * (nearest - x))
    with pytest.raises(ValueError, match="rng"):
        stages.correct(x, y, centres, centre_labels, 0.3, "mixture")

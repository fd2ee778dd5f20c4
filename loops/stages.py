"""Loop stages between sampling and training: curation, self-correction, subsampling.

Pure numpy (and scikit-learn for k-means): no torch, no Ray, no files. Each stage takes the
synthetic samples a generation produced (and their labels and per-sample scores where it needs
them) plus a seeded rng, and returns what the next generation trains on together with counts
for the record: how many samples were produced, kept and changed.

- ``curate``: Ferbach et al. 2024, K-wise choice under a reward. The candidates come in groups of
  K; from each group one sample is kept with probability exp(r_i) / sum_j exp(r_j) (the
  Bradley-Terry / Plackett-Luce choice model), so n_keep kept samples need n_keep * K candidates.
- ``correct``: Gillman et al. 2024's MNIST self-correction: each sample moves a fraction gamma
  toward its nearest centre (k-means centres of the real pool, per class when labels exist).
- ``subsample``: Kazdan, Schaeffer et al.'s accumulate-then-subsample: a uniform subset of an
  assembled training set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class StageResult:
    x: np.ndarray
    y: Optional[np.ndarray]
    produced: int  # samples the stage received
    kept: int  # samples it returned
    changed: int  # returned samples that differ from their input (self-correction)

    def counts(self) -> dict[str, int]:
        return {"stage_produced": self.produced, "stage_kept": self.kept, "stage_changed": self.changed}


def choice_probabilities(rewards: np.ndarray) -> np.ndarray:
    """Bradley-Terry / Plackett-Luce first choice within each row of ``rewards`` (groups x K): softmax."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"rewards must be (groups, K), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    e = np.exp(r - r.max(axis=1, keepdims=True))  # shift per row: the same probabilities, no overflow
    return e / e.sum(axis=1, keepdims=True)


def curate_indices(rewards: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices kept from ``len(rewards)`` candidates taken in consecutive groups of ``k``: one per group,
    drawn with probability proportional to exp(reward). A trailing partial group is dropped."""
    rewards = np.asarray(rewards, dtype=np.float64).ravel()
    if k < 1:
        raise ValueError(f"curate.k must be at least 1, got {k}")
    groups = len(rewards) // k
    if groups == 0:
        raise ValueError(f"curation with k={k} needs at least {k} candidates, got {len(rewards)}")
    probs = choice_probabilities(rewards[: groups * k].reshape(groups, k))
    # inverse-CDF draw per group: one uniform each, so the stream does not depend on the rewards
    u = rng.random(groups)
    pick = np.minimum((probs.cumsum(axis=1) < u[:, None]).sum(axis=1), k - 1)
    return np.arange(groups) * k + pick


def curate(x: np.ndarray, y: Optional[np.ndarray], rewards: np.ndarray, k: int,
           rng: np.random.Generator) -> StageResult:
    idx = curate_indices(rewards, k, rng)
    return StageResult(x[idx], None if y is None else y[idx], produced=len(x), kept=len(idx), changed=0)


def kmeans_centres(x: np.ndarray, y: Optional[np.ndarray], n_clusters: int, seed: int
                   ) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """k-means centres of a real pool, ``n_clusters`` per class when labels are given (else overall).

    Returns (centres, their class labels or None), centres flattened to vectors.
    """
    from sklearn.cluster import KMeans

    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if n_clusters < 1:
        raise ValueError(f"correct.clusters must be at least 1, got {n_clusters}")
    if y is None:
        km = KMeans(n_clusters=min(n_clusters, len(flat)), n_init=4, random_state=seed).fit(flat)
        return km.cluster_centers_, None
    centres, labels = [], []
    for c in np.unique(y):
        part = flat[y == c]
        km = KMeans(n_clusters=min(n_clusters, len(part)), n_init=4, random_state=seed).fit(part)
        centres.append(km.cluster_centers_)
        labels.append(np.full(len(km.cluster_centers_), c))
    return np.concatenate(centres), np.concatenate(labels)


def correct(x: np.ndarray, y: Optional[np.ndarray], centres: np.ndarray, centre_labels: Optional[np.ndarray],
            strength: float, mode: str = "blend", rng: Optional[np.random.Generator] = None) -> StageResult:
    """Self-correction toward the nearest centre (of its own class when both the samples and the centres
    carry labels). ``blend``: every sample moves a fraction ``strength`` toward it (0 is the identity, 1
    returns the centres: Gillman et al.'s projection). ``mixture``: a share ``strength`` of the samples,
    drawn with ``rng``, is replaced by its nearest centre and the rest are left as sampled (the mixture
    of corrected and uncorrected distributions of their theory's gamma). Integer data (uint8 images) is
    rounded back and clipped to its dtype's range."""
    if not (0.0 <= strength <= 1.0):
        raise ValueError(f"correct.strength must be in [0, 1], got {strength}")
    if mode not in ("blend", "mixture"):
        raise ValueError(f"correct.mode must be blend or mixture, got {mode!r}")
    if mode == "mixture" and rng is None:
        raise ValueError("correct.mode=mixture draws the corrected share: it needs the stage's rng")
    shape, dtype = x.shape, x.dtype
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if strength == 0.0:
        return StageResult(x, y, produced=len(x), kept=len(x), changed=0)
    centres = np.asarray(centres, dtype=np.float64).reshape(len(centres), -1)
    if centres.shape[1] != flat.shape[1]:
        raise ValueError(f"centres have {centres.shape[1]} features, samples {flat.shape[1]}")
    d2 = (flat**2).sum(1)[:, None] - 2 * flat @ centres.T + (centres**2).sum(1)[None, :]
    if y is not None and centre_labels is not None:
        d2 = np.where(np.asarray(y)[:, None] == np.asarray(centre_labels)[None, :], d2, np.inf)
        missing = ~np.isfinite(d2).any(axis=1)
        if missing.any():
            raise ValueError(f"no centre for class {np.asarray(y)[missing][0]}")
    nearest = centres[np.argmin(d2, axis=1)]
    if mode == "mixture":
        moved = flat.copy()
        chosen = rng.choice(len(flat), int(round(strength * len(flat))), replace=False)
        moved[chosen] = nearest[chosen]
    else:
        moved = flat + strength * (nearest - flat)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        moved = np.clip(np.rint(moved), info.min, info.max)
    out = moved.astype(dtype).reshape(shape)
    changed = int(np.any(out.reshape(len(x), -1) != np.asarray(x).reshape(len(x), -1), axis=1).sum())
    return StageResult(out, y, produced=len(x), kept=len(x), changed=changed)


def subsample_indices(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform subset of ``size`` of ``n`` items (all of them when size >= n), in their original order."""
    if size < 1:
        raise ValueError(f"loop.subsample_to must be at least 1, got {size}")
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size, replace=False))

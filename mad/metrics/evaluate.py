"""The driver-facing metrics API: a reference prepared once per run, then scored per generation.

``prepare_reference`` computes everything about the held-out real set once (features, their
mean/covariance, k-NN radii, class histogram) and packs the feature extractor as plain numpy so
the result pickles cheaply through ``ray.put`` and workers rebuild it without touching disk.
``evaluate`` then only extracts the generated samples' features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mad.config import Features, MetricsConfig
from mad.metrics.features import (
    TrainedClassifier,
    inception_features,
    load_or_train_classifier,
    raw_features,
    reward_recipe,
    train_classifier,
)
from mad.metrics.frechet import feature_stats, fid_to_reference, frechet_distance, sqrt_psd
from mad.metrics.mmd import KIDPlan, default_subset_size, kid_plan, kid_score
from mad.metrics.prdc import compute_knn_sq_radii, prdc

__all__ = ["Reference", "prepare_reference", "evaluate", "extract_features", "class_metrics", "sample_confidence",
           "reward_confidence"]

KL_EPS = 1e-6  # smoothing so a class the generator never produces gives a finite KL


@dataclass
class Reference:
    """Everything about the held-out real set that the metrics need; picklable."""

    features_kind: str
    feats: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    class_hist: np.ndarray | None
    extractor_state: dict | None  # classifier weights as numpy, so workers rebuild it without disk
    sq_radii: np.ndarray | None = None  # squared k-NN radii of ``feats`` (reused by prdc)
    radii_k: int | None = None  # the k those radii were computed with
    sample_shape: tuple | None = None  # shape of one reference sample, to catch mismatched inputs
    sigma_sqrt: np.ndarray | None = None  # sqrt_psd(sigma), so FID costs one eigvalsh per generation
    heldout: np.ndarray | None = None  # vector data: the reference points themselves (float64), for held-out NLL
    kid_plan: KIDPlan | None = None  # KID's subsets for metrics.n_eval generated samples (None: no KID)
    # the floor: fid / kid of real samples disjoint from the reference set, as many as are scored
    floor: dict | None = None
    reward_state: dict | None = None  # curation's reward network (another seed, half the pool): not the judge


def _features_kind(cfg: MetricsConfig, x: Any) -> Features:
    value = cfg.features.value if isinstance(cfg.features, Features) else cfg.features
    try:
        kind = Features(value)
    except ValueError:
        choices = ", ".join(f.value for f in Features)
        raise ValueError(f"metrics.features: unknown feature kind {value!r}; choose one of {choices}") from None
    if kind == Features.auto:  # load_config resolves it from the data set; a direct call, from the samples
        return Features.raw if np.ndim(x) == 2 else Features.classifier
    return kind


_CLASSIFIERS: dict[str, TrainedClassifier] = {}  # per-process: rebuilt once per worker, not per call


def _classifier_from_state(state: dict) -> TrainedClassifier:
    key = state.get("key")
    clf = _CLASSIFIERS.get(key)
    if clf is None:
        clf = TrainedClassifier.from_state(state)
        if len(_CLASSIFIERS) >= 4:
            _CLASSIFIERS.pop(next(iter(_CLASSIFIERS)))
        _CLASSIFIERS[key] = clf
    return clf


def extract_features(kind: Features, x: Any, extractor_state: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(features, class probabilities or None) of samples ``x`` with the named extractor."""
    if kind == Features.raw:
        return raw_features(x), None
    if kind == Features.classifier:
        if not extractor_state or extractor_state.get("kind") != "classifier":
            raise ValueError("classifier features need the reference's classifier state (prepare_reference)")
        return _classifier_from_state(extractor_state).predict(x)
    if kind == Features.inception:
        return inception_features(x), None
    raise ValueError(f"metrics.features: unknown feature kind {kind!r}")  # pragma: no cover


def reward_confidence(reference: Reference, x: Any) -> np.ndarray:
    """Per sample: the max softmax probability of the curation reward's own network (another seed and
    half the pool, ``prepare_reference(reward=True)``), so curation does not optimise the judge that
    scores FID, precision and mean_confidence."""
    if reference.reward_state is None:
        raise ValueError("curate.reward=classifier_confidence needs the reward network; the reference was "
                         "prepared without it (prepare_reference(..., reward=True))")
    return _classifier_from_state(reference.reward_state).predict(x)[1].max(1)


def sample_confidence(reference: Reference, x: Any) -> np.ndarray:
    """Per sample: the max softmax probability of the reference's classifier (the metric
    ``mean_confidence`` is its mean over the scored samples)."""
    if reference.features_kind != Features.classifier.value:
        raise ValueError(f"per-sample confidence needs classifier features, the reference has "
                         f"{reference.features_kind!r}")
    _, probs = extract_features(Features.classifier, x, reference.extractor_state)
    return probs.max(1)


def _histogram(probs: np.ndarray) -> np.ndarray:
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1]).astype(np.float64)
    return counts / counts.sum()


def class_metrics(probs: np.ndarray, real_hist: np.ndarray, y: Any = None) -> dict[str, float]:
    """Class statistics of generated samples from the classifier's softmax outputs.

    class_entropy: entropy (nats) of the predicted-class histogram (log(10) = 2.303 is uniform over 10);
    class_kl: KL(real histogram || generated histogram), both smoothed by ``KL_EPS``;
    mean_confidence: mean of the max softmax probability;
    label_accuracy (only when labels ``y`` are given): how often the prediction equals the label
    the sample was generated for (conditional models)."""
    hist = _histogram(probs)
    nz = hist[hist > 0]
    p = (real_hist + KL_EPS) / (real_hist + KL_EPS).sum()
    q = (hist + KL_EPS) / (hist + KL_EPS).sum()
    out = {
        "class_entropy": float(-(nz * np.log(nz)).sum()),
        "class_kl": float((p * np.log(p / q)).sum()),
        "mean_confidence": float(probs.max(1).mean()),  # = sample_confidence(...).mean()
    }
    if y is not None:
        labels = np.asarray(y).reshape(-1)
        if len(labels) != len(probs):
            raise ValueError(f"got {len(labels)} labels for {len(probs)} samples")
        out["label_accuracy"] = float(np.mean(probs.argmax(1) == labels))
    return out


def _kid_plan_for(feats: np.ndarray, n2: int, cfg: MetricsConfig) -> KIDPlan | None:
    """KID's subsets for ``n2`` generated rows against the reference ``feats`` (None: no KID configured,
    or too few rows for two per subset)."""
    if cfg.kid_subsets <= 0 or min(len(feats), n2) < 2:
        return None
    return kid_plan(feats, n2, cfg.kid_subsets, _subset_size(len(feats), n2, cfg))


def _subset_size(n1: int, n2: int, cfg: MetricsConfig) -> int:
    m = default_subset_size(n1, n2) if cfg.kid_subset_size is None else cfg.kid_subset_size
    return max(2, min(m, n1, n2))


def _classifier(x: Any, y: Any, num_classes: int | None, cfg: MetricsConfig, state: dict | None,
                use_cache: bool, seed: int = 0, epochs: int | None = None) -> TrainedClassifier:
    epochs = cfg.classifier_epochs if epochs is None else epochs
    if state is not None:
        clf = TrainedClassifier.from_state(state)
    elif use_cache:
        clf = load_or_train_classifier(x, y, num_classes, cfg.cache_dir, epochs=epochs, seed=seed)
    else:
        clf = train_classifier(x, y, num_classes, epochs=epochs, seed=seed)
    _CLASSIFIERS[clf.key] = clf
    return clf


def prepare_reference(ref_x: Any, ref_y: Any, train_x: Any, train_y: Any, cfg: MetricsConfig,
                      num_classes: int | None, classifier_state: dict | None = None,
                      use_cache: bool = True, floor_x: Any = None, reward: bool = False,
                      reward_state: dict | None = None) -> Reference:
    """Features and statistics of the held-out reference set, computed once per run.

    With ``features=classifier`` the classifier is ``classifier_state`` when given (the driver
    read it from its cache), else trained on ``train_x``/``train_y``: through ``cfg.cache_dir``
    when ``use_cache`` (a direct call), without touching disk when not (inside a task, whose
    result's ``extractor_state`` the driver caches). The reference class histogram is the
    classifier's own predictions on ``ref_x``: generated samples are judged by the same
    instrument, so its few errors cancel instead of showing up as a KL.

    ``floor_x``: real samples disjoint from ``ref_x`` (``metrics.n_eval`` of them), scored once like a
    generated set: ``fid_floor`` and ``kid_floor`` are what a perfect model would get at this sample
    size (FID's small-sample bias), added to every scored generation's record.

    ``reward``: also the curation reward's network (``reward_state`` when the driver's cache held it),
    ``mad.metrics.features.reward_recipe``: the same recipe with another seed on half of the
    training pool, as many optimiser steps as the judge."""
    kind = _features_kind(cfg, ref_x)
    state: dict | None = None
    class_hist: np.ndarray | None = None
    if kind == Features.classifier:
        clf = _classifier(train_x, train_y, num_classes, cfg, classifier_state, use_cache)
        state = clf.state()
        feats, probs = clf.predict(ref_x)
        class_hist = _histogram(probs)
    elif kind == Features.inception:
        state = {"kind": "inception"}
        feats, _ = extract_features(kind, ref_x, state)
    else:
        feats, _ = extract_features(kind, ref_x, None)
    mu, sigma = feature_stats(feats)
    k = int(cfg.k)
    sq_radii = compute_knn_sq_radii(feats, k) if len(feats) > k else None
    shape = tuple(np.shape(ref_x)[1:])
    heldout = np.asarray(ref_x, dtype=np.float64) if len(shape) == 1 else None
    reward_net = None
    if reward and kind == Features.classifier:
        rx, ry, seed, epochs = reward_recipe(train_x, train_y, cfg.classifier_epochs)
        reward_net = _classifier(rx, ry, num_classes, cfg, reward_state, use_cache, seed=seed, epochs=epochs).state()
    ref = Reference(kind.value, feats, mu, sigma, class_hist, state, sq_radii, k, shape, sqrt_psd(sigma),
                    heldout=heldout, kid_plan=_kid_plan_for(feats, int(cfg.n_eval), cfg),
                    reward_state=reward_net)
    if floor_x is not None and len(floor_x) >= 2:
        floor_feats, _ = extract_features(kind, floor_x, state)
        ref.floor = {"fid_floor": fid_to_reference(mu, sigma, ref.sigma_sqrt, floor_feats)}
        kid_out = _kid(ref, floor_feats, cfg)
        if kid_out is not None:
            ref.floor["kid_floor"] = kid_out[0]
    return ref


def _kid(reference: Reference, feats: np.ndarray, cfg: MetricsConfig) -> tuple[float, float] | None:
    """(kid, kid_se) of generated ``feats``: the reference's plan when it fits this many rows, else a new one."""
    if cfg.kid_subsets <= 0:
        return None
    plan = reference.kid_plan
    if plan is None or not plan.fits(len(feats), cfg.kid_subsets, _subset_size(len(reference.feats), len(feats), cfg)):
        plan = _kid_plan_for(reference.feats, len(feats), cfg)
    return None if plan is None else kid_score(plan, reference.feats, feats)


def evaluate(reference: Reference, x: Any, y: Any, cfg: MetricsConfig) -> dict[str, Any]:
    """Metrics of generated samples ``x`` (labels ``y`` or None) against the prepared reference:
    fid, kid and kid_se (unless ``metrics.kid_subsets=0``), fid_floor and kid_floor (when the reference
    has a floor), precision, recall, density, coverage; with classifier features also class_entropy,
    class_kl, mean_confidence (and label_accuracy when ``y`` is given) and ``class_hist``, the
    predicted-class fractions as a list. Plain floats otherwise."""
    kind = _features_kind(cfg, x)
    if kind.value != reference.features_kind:
        raise ValueError(f"metrics.features is {kind.value!r} but the reference was prepared with "
                         f"{reference.features_kind!r}")
    # Inception resizes and converts to RGB, so only the other kinds need the reference's shape
    if (kind != Features.inception and reference.sample_shape is not None
            and tuple(np.shape(x)[1:]) != tuple(reference.sample_shape)):
        raise ValueError(f"generated samples have shape {tuple(np.shape(x)[1:])} per sample, "
                         f"the reference has {tuple(reference.sample_shape)}")
    feats, probs = extract_features(kind, x, reference.extractor_state)
    if len(feats) < 2:
        raise ValueError(f"need at least 2 generated samples, got {len(feats)}")
    k = int(cfg.k)
    radii = reference.sq_radii if reference.radii_k == k else None
    if feats.shape[1] != reference.mu.shape[0]:
        raise ValueError(f"generated features have width {feats.shape[1]}, the reference {reference.mu.shape[0]}")
    if reference.sigma_sqrt is not None:
        fid = fid_to_reference(reference.mu, reference.sigma, reference.sigma_sqrt, feats)
    else:  # a Reference built by hand, without the precomputed square root
        fid = frechet_distance(reference.mu, reference.sigma, *feature_stats(feats))
    out = {"fid": fid}
    kid_out = _kid(reference, feats, cfg)
    if kid_out is not None:
        out["kid"], out["kid_se"] = kid_out
    if reference.floor:
        out.update(reference.floor)
    out.update(prdc(reference.feats, feats, k, real_sq_radii=radii))
    if probs is not None and reference.class_hist is not None:
        out.update(class_metrics(probs, reference.class_hist, y))
        # the whole histogram too, for the report's class x generation heatmap (a list, not a metric)
        out["class_hist"] = [round(float(v), 6) for v in _histogram(probs)]
    return {key: v if isinstance(v, list) else float(v) for key, v in out.items()}

"""Metrics of generated samples against real data: FID (the Frechet distance, checked against clean-fid's),
KID (the unbiased kernel MMD^2, checked against torch-fidelity's),
precision/recall (Kynkaenniemi et al. 2019), density/coverage (Naeem et al. 2020), and the
feature networks they are computed in (raw, a small classifier, Inception-v3).

Importing this package does not import Ray (workers and tests use it without a cluster).
"""
from mad.metrics.evaluate import Reference, class_metrics, evaluate, extract_features, prepare_reference
from mad.metrics.features import (
    INSTALL_HINT,
    ClassifierNet,
    TrainedClassifier,
    classifier_cache_key,
    inception_features,
    inception_weights_path,
    load_inception,
    load_or_train_classifier,
    raw_features,
    train_classifier,
)
from mad.metrics.frechet import (
    feature_stats,
    fid_from_features,
    fid_from_stats,
    frechet_distance,
    fid_to_reference,
    frechet_distance_fast,
    gaussian_w2,
    sqrt_psd,
)
from mad.metrics.mmd import kid
from mad.metrics.prdc import compute_knn_sq_radii, prdc

__all__ = [
    "Reference", "prepare_reference", "evaluate", "extract_features", "class_metrics",
    "prdc", "compute_knn_sq_radii", "kid",
    "feature_stats", "frechet_distance", "frechet_distance_fast", "fid_to_reference", "sqrt_psd", "fid_from_features", "fid_from_stats", "gaussian_w2",
    "ClassifierNet", "TrainedClassifier", "train_classifier", "load_or_train_classifier",
    "classifier_cache_key", "raw_features", "inception_features", "inception_weights_path",
    "load_inception", "INSTALL_HINT",
]

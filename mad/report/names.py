"""Metric names as a reader sees them: which keys of a metrics.jsonl line are metrics, in what order
they are shown, their titles (with the feature space a sample-based metric was computed in), which
way is good, and which are drawn on a log axis by default.

The one place these live: the report, the console table, the driver's progress line and the
TensorBoard tracker all read them from here. No import beyond the standard library.
"""
from __future__ import annotations

from typing import Any, Optional

# Keys of a metrics.jsonl line that describe the line rather than measure the model.
# Dotted keys (the sweep assignment) are never metrics either, nor are non-numbers (class_hist).
NON_METRIC_KEYS = frozenset({"chain", "loop", "seed", "bias", "gen", "n_real", "n_synth", "synth_size", "wall_s",
                             "time", "family", "data", "index", "name", "real_seen_frac", "class_hist",
                             "stage_produced", "stage_kept", "stage_changed",
                             # companions of a metric, drawn in its panel rather than as their own
                             "fid_floor", "kid_floor", "kid_se"})
# A metric -> the key of its real-vs-real floor (the same metric of real samples disjoint from the
# reference set, as many as are scored): drawn as a horizontal line in the metric's panel.
FLOORS = {"fid": "fid_floor", "kid": "kid_floor"}
COMPANION_KEYS = ("fid_floor", "kid_floor", "kid_se")  # not panels, but in summary.csv
CLASS_HIST_KEY = "class_hist"  # the generated samples' predicted-class fractions (classifier features)
METRIC_ORDER = ("fid", "kid", "precision", "recall", "density", "coverage", "w2", "w2_fit", "trace_ratio",
                "logdet_ratio", "logdet_ratio_per_dim", "mean_shift", "class_entropy", "class_kl", "mean_confidence", "label_accuracy",
                "nll")
TABLE_METRICS = ("fid", "precision", "recall", "w2", "trace_ratio")  # the headline numbers, in this order
PAPER_METRICS = ("fid", "precision", "recall")  # the panels of the MAD-style paper figure
HEATMAP_PREFERENCE = ("fid", "w2")

# Titles. {features} is replaced by the feature space for metrics computed on features.
TITLES = {
    "fid": "FID ({features})", "kid": "KID ({features})", "precision": "precision ({features})", "recall": "recall ({features})",
    "density": "density ({features})", "coverage": "coverage ({features})",
    "w2": "W2 to the real distribution",  # of the sampler N(μ, λΣ)
    "w2_fit": "W2 of the fit N(μ, Σ), no λ",
    "trace_ratio": "tr Σ_t / tr Σ_real", "logdet_ratio": "log det Σ_t − log det Σ_real",
    "logdet_ratio_per_dim": "(log det Σ_t − log det Σ_real) / d", "mean_shift": "‖μ_t − μ_real‖",
    "class_entropy": "class entropy (nats)", "class_kl": "KL(real classes ‖ generated classes)",
    "mean_confidence": "classifier confidence", "label_accuracy": "label accuracy", "wall_s": "wall time (s)",
    "nll": "held-out NLL (nats per sample)",
    "fid_floor": "FID of real vs real ({features})", "kid_floor": "KID of real vs real ({features})",
    "kid_se": "KID's std over subsets ({features})",
}
FEATURE_SPACES = {"raw": "raw data", "classifier": "LeNet features", "inception": "Inception features"}

LOWER_IS_BETTER = frozenset({"fid", "kid", "w2", "w2_fit", "class_kl", "nll", "wall_s"})
HIGHER_IS_BETTER = frozenset({"precision", "recall", "density", "coverage", "class_entropy", "mean_confidence",
                              "label_accuracy"})
HINTS = {  # shown next to the panel titles so a reader knows which way is good
    "fid": "lower is better", "kid": "lower is better, 0 = real", "w2": "lower is better", "w2_fit": "lower is better", "class_kl": "lower is better",
    "mean_shift": "0 is ideal", "trace_ratio": "1 is ideal", "logdet_ratio": "0 is ideal",
    "logdet_ratio_per_dim": "0 is ideal", "precision": "quality, higher is better",
    "recall": "diversity, higher is better", "density": "higher is better", "coverage": "higher is better",
    "class_entropy": "higher = classes more even", "mean_confidence": "higher is better",
    "label_accuracy": "higher is better", "wall_s": "seconds", "nll": "lower is better",
}
METRIC_HINTS = HINTS  # the name the report used before this module

# Positive quantities that shrink geometrically: a log y axis by default (each panel can switch).
# The log-det ratios are logarithms already: their linear axis is a log scale of the determinant.
LOG_Y_METRICS = frozenset({"trace_ratio", "w2", "w2_fit"})


def feature_space(config: Optional[dict]) -> Optional[str]:
    """The run's ``metrics.features`` as words ("LeNet features"), or None when unknown."""
    metrics = config.get("metrics") if isinstance(config, dict) else None
    kind = metrics.get("features") if isinstance(metrics, dict) else None
    if kind is None:
        return None
    return FEATURE_SPACES.get(str(kind), f"{kind} features")


def title(metric: str, features: Optional[str] = None) -> str:
    """A metric's display title: "FID (LeNet features)"; the bare key for a metric with no title."""
    text = TITLES.get(metric)
    if text is None:
        return metric
    if "{features}" in text:
        return text.replace(" ({features})", "") if features is None else text.format(features=features)
    return text


def hint(metric: str) -> Optional[str]:
    return HINTS.get(metric)


def lower_is_better(metric: str) -> Optional[bool]:
    """True / False where one direction is better, None where a value is ideal (1, 0) or unknown."""
    if metric in LOWER_IS_BETTER:
        return True
    if metric in HIGHER_IS_BETTER:
        return False
    return None


def log_by_default(metric: str) -> bool:
    return metric in LOG_Y_METRICS


def is_metric(key: str, value: Any) -> bool:
    """Whether a metrics.jsonl field is a metric: not bookkeeping, not a sweep key, a number."""
    return (key not in NON_METRIC_KEYS and "." not in key and not isinstance(value, bool)
            and isinstance(value, (int, float)))

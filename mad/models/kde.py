"""A Gaussian kernel density estimate: the family Kazdan et al. (2024) study self-consuming loops with.

The model is its training set: ``train`` stores the points and a bandwidth ``h`` (the kernel's std):
``model.kde.bandwidth`` when set, else ``model.kde.rule``: ``scott_std`` (the default) is Scott's rule
``n^(-1/(d+4))`` times the data's per-coordinate std averaged over coordinates, ``scott`` is
scikit-learn's ``KernelDensity(bandwidth="scott")``, the bare ``n^(-1/(d+4))`` in data units (what
Kazdan et al. use). ``sample`` picks training points uniformly with replacement and adds kernel noise.

MAD's sampling bias lambda scales the kernel's variance, as N(mu, lambda Sigma) does the Gaussian's:
the kernel is ``N(0, lambda h^2 I)`` (std ``h sqrt(lambda)``), so lambda -> 0 resamples the training
points themselves (pure memorisation, the quality-over-diversity end).
``heldout_metrics`` gives ``nll``, the mean negative log-likelihood (nats per sample) of held-out real
points under that sampling density, Kazdan et al.'s metric.
State: ``points`` (n, d) and ``bandwidth`` (a scalar tensor, h), float64.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from mad.config import BandwidthRule, ModelConfig, SampleConfig


def scott_bandwidth(x: np.ndarray) -> float:
    """Scott's rule scaled by the data: n^(-1/(d+4)) times the mean per-coordinate std (rule ``scott_std``)."""
    n, d = x.shape
    std = float(np.mean(x.std(axis=0, ddof=1))) if n > 1 else 1.0
    return std * n ** (-1.0 / (d + 4))


def sklearn_scott_bandwidth(x: np.ndarray) -> float:
    """scikit-learn's ``bandwidth="scott"``: n^(-1/(d+4)), not scaled by the data (rule ``scott``)."""
    n, d = x.shape
    return n ** (-1.0 / (d + 4))


RULES = {BandwidthRule.scott_std: scott_bandwidth, BandwidthRule.scott: sklearn_scott_bandwidth}


def train(x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model: ModelConfig, train=None,
          seed: int = 0, init_state=None, progress: bool = False, device=None) -> dict[str, torch.Tensor]:
    """Keep the points of ``x`` (n, d) and the kernel bandwidth; there is nothing to fit or fine-tune."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"kde needs vectors (n >= 1, d), got shape {x.shape}")
    h = model.kde.bandwidth if model.kde.bandwidth is not None else RULES[BandwidthRule(model.kde.rule)](x)
    return {"points": torch.from_numpy(np.ascontiguousarray(x)), "bandwidth": torch.tensor(float(h), dtype=torch.float64)}


def kernel_std(state: dict[str, torch.Tensor], bias: float) -> float:
    """The sampling kernel's std at lambda = ``bias``: h sqrt(lambda) (variance lambda h^2)."""
    return float(state["bandwidth"]) * math.sqrt(bias)


def sample(state: dict[str, torch.Tensor], n: int, num_classes: int, sample_shape, model: ModelConfig,
           sample: SampleConfig, seed: int, class_probs=None, progress: bool = False, device=None
           ) -> tuple[np.ndarray, None]:
    """``n`` draws from the KDE with kernel N(0, lambda h^2 I) (lambda = ``sample.bias``)."""
    points = state["points"].numpy()
    s = kernel_std(state, sample.bias)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(points), size=n)
    return points[idx] + s * rng.standard_normal((n, points.shape[1])), None


def log_density(state: dict[str, torch.Tensor], bias: float, x: np.ndarray) -> Optional[np.ndarray]:
    """log p(x) per row of ``x`` under the sampling density (kernel variance lambda h^2); None when
    the kernel has zero width (a point mass has no density)."""
    points = state["points"].numpy()
    s = kernel_std(state, bias)
    if not s > 0:
        return None
    x = np.asarray(x, dtype=np.float64)
    d = points.shape[1]
    out = np.empty(len(x))
    sq_p = (points ** 2).sum(1)
    for i in range(0, len(x), 256):  # chunks of held-out points: a (256, n) distance matrix at a time
        xc = x[i:i + 256]
        sq = np.clip((xc ** 2).sum(1)[:, None] + sq_p[None, :] - 2 * xc @ points.T, 0.0, None)
        a = -sq / (2 * s * s)
        m = a.max(1, keepdims=True)
        out[i:i + 256] = m[:, 0] + np.log(np.exp(a - m).sum(1))
    return out - math.log(len(points)) - 0.5 * d * math.log(2 * math.pi * s * s)


def heldout_metrics(state: dict[str, torch.Tensor], bias: float, x: np.ndarray) -> dict[str, Optional[float]]:
    """``nll``: mean negative log-likelihood (nats per sample) of held-out points ``x`` under the sampling density."""
    logp = log_density(state, bias, x)
    return {"nll": None if logp is None else float(-logp.mean())}

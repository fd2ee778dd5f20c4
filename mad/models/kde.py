"""A Gaussian kernel density estimate: the family Kazdan et al. (2024) study self-consuming loops with.

The model is its training set: ``train`` stores the points and a bandwidth ``h`` (``model.kde.bandwidth``,
or Scott's rule ``h = n^(-1/(d+4))`` times the data's per-coordinate std averaged over coordinates);
``sample`` picks training points uniformly with replacement and adds ``N(0, h^2 I)`` kernel noise.

MAD's sampling bias lambda scales the bandwidth: the kernel is ``N(0, (lambda h)^2 I)``, so lambda -> 0
resamples the training points themselves (pure memorisation, the quality-over-diversity end).
State: ``points`` (n, d) and ``bandwidth`` (a scalar tensor), float64.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mad.config import ModelConfig, SampleConfig


def scott_bandwidth(x: np.ndarray) -> float:
    n, d = x.shape
    std = float(np.mean(x.std(axis=0, ddof=1))) if n > 1 else 1.0
    return std * n ** (-1.0 / (d + 4))


def train(x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model: ModelConfig, train=None,
          seed: int = 0, init_state=None, progress: bool = False, device=None) -> dict[str, torch.Tensor]:
    """Keep the points of ``x`` (n, d) and the kernel bandwidth; there is nothing to fit or fine-tune."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 1:
        raise ValueError(f"kde needs vectors (n >= 1, d), got shape {x.shape}")
    h = model.kde.bandwidth if model.kde.bandwidth is not None else scott_bandwidth(x)
    return {"points": torch.from_numpy(np.ascontiguousarray(x)), "bandwidth": torch.tensor(float(h), dtype=torch.float64)}


def sample(state: dict[str, torch.Tensor], n: int, num_classes: int, sample_shape, model: ModelConfig,
           sample: SampleConfig, seed: int, class_probs=None, progress: bool = False, device=None
           ) -> tuple[np.ndarray, None]:
    """``n`` draws from the KDE with bandwidth lambda h (lambda = ``sample.bias``)."""
    points = state["points"].numpy()
    h = float(state["bandwidth"]) * sample.bias
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(points), size=n)
    return points[idx] + h * rng.standard_normal((n, points.shape[1])), None

"""A Gaussian mixture model (scikit-learn ``GaussianMixture``), the family of Shumailov et al.'s GMM study.

``model.gmm`` sets the number of components, the covariance type and EM's budget. The fit is
stored as full covariances whatever ``covariance_type`` (tied, diag and spherical expanded), so
sampling is one code path and the state is plain tensors: ``weights`` (K,), ``means`` (K, d),
``covs`` (K, d, d), float64.

MAD's sampling bias lambda scales every component's covariance: components are drawn by their
weights, then ``x ~ N(mu_k, lambda Sigma_k)``, the mixture analogue of the Gaussian family's
``N(mu, lambda Sigma)``. ``heldout_metrics`` gives ``nll``, the mean negative log-likelihood (nats per
sample) of held-out real points under that sampling mixture (at lambda = 1: ``-GaussianMixture.score``).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from mad.config import ModelConfig, SampleConfig


def _full_covariances(covs: np.ndarray, kind: str, k: int, d: int) -> np.ndarray:
    if kind == "full":
        return covs
    if kind == "tied":
        return np.tile(covs, (k, 1, 1))
    if kind == "diag":
        return np.stack([np.diag(c) for c in covs])
    return covs[:, None, None] * np.eye(d)  # spherical: one variance per component


def train(x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model: ModelConfig, train=None,
          seed: int = 0, init_state=None, progress: bool = False, device=None) -> dict[str, torch.Tensor]:
    """EM fit of ``model.gmm.components`` Gaussians to vectors ``x`` (n, d); labels are ignored.

    ``init_state`` (``train.init=previous``) starts EM from the previous generation's fit when it
    has as many components.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"gmm needs vectors (n >= 2, d), got shape {x.shape}")
    cfg = model.gmm
    k = min(int(cfg.components), len(x))  # EM cannot place more components than samples
    init = {}
    if init_state is not None and len(init_state["weights"]) == k and cfg.covariance_type == "full":
        covs = init_state["covs"].numpy()
        init = {"weights_init": init_state["weights"].numpy(), "means_init": init_state["means"].numpy(),
                "precisions_init": np.linalg.inv(covs)}
    gm = GaussianMixture(n_components=k, covariance_type=cfg.covariance_type, max_iter=cfg.max_iter,
                         n_init=cfg.n_init, reg_covar=cfg.reg_covar, random_state=seed, **init)
    gm.fit(x)
    covs = _full_covariances(gm.covariances_, cfg.covariance_type, k, x.shape[1])
    return {"weights": torch.from_numpy(np.ascontiguousarray(gm.weights_, dtype=np.float64)),
            "means": torch.from_numpy(np.ascontiguousarray(gm.means_, dtype=np.float64)),
            "covs": torch.from_numpy(np.ascontiguousarray(covs, dtype=np.float64))}


def sample(state: dict[str, torch.Tensor], n: int, num_classes: int, sample_shape, model: ModelConfig,
           sample: SampleConfig, seed: int, class_probs=None, progress: bool = False, device=None
           ) -> tuple[np.ndarray, None]:
    """``n`` vectors from the mixture with every covariance scaled by lambda = ``sample.bias``."""
    weights = state["weights"].numpy()
    means = state["means"].numpy()
    covs = sample.bias * state["covs"].numpy()
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(weights), size=n, p=weights / weights.sum())
    z = rng.standard_normal((n, means.shape[1]))
    # eigen-factors, not Cholesky: a collapsed component is singular and must still sample
    w, v = np.linalg.eigh(covs)
    factors = v * np.sqrt(np.clip(w, 0.0, None))[:, None, :]
    return means[comp] + np.einsum("nij,nj->ni", factors[comp], z), None


def log_density(state: dict[str, torch.Tensor], bias: float, x: np.ndarray) -> Optional[np.ndarray]:
    """log p(x) per row of ``x`` under the sampling mixture (covariances scaled by lambda = ``bias``);
    None when a component with positive weight is singular (no density)."""
    weights = state["weights"].numpy()
    means = state["means"].numpy()
    covs = bias * state["covs"].numpy()
    x = np.asarray(x, dtype=np.float64)
    d = means.shape[1]
    comp = np.empty((len(x), len(weights)))
    for k in range(len(weights)):
        try:
            chol = np.linalg.cholesky((covs[k] + covs[k].T) / 2)
        except np.linalg.LinAlgError:
            return None
        z = np.linalg.solve(chol, (x - means[k]).T)  # L^-1 (x - mu): its squared norm is the Mahalanobis term
        log_det = 2 * np.log(np.diag(chol)).sum()
        log_w = math.log(weights[k]) if weights[k] > 0 else -np.inf
        comp[:, k] = log_w - 0.5 * ((z ** 2).sum(0) + log_det + d * math.log(2 * math.pi))
    m = comp.max(1, keepdims=True)
    return m[:, 0] + np.log(np.exp(comp - m).sum(1))


def heldout_metrics(state: dict[str, torch.Tensor], bias: float, x: np.ndarray) -> dict[str, Optional[float]]:
    """``nll``: mean negative log-likelihood (nats per sample) of held-out points ``x`` under the sampling mixture."""
    logp = log_density(state, bias, x)
    return {"nll": None if logp is None or not np.isfinite(logp).all() else float(-logp.mean())}

"""Divergence is an error, not a data point.

A model whose training loss, weights or samples went non-finite (NaN or inf) would otherwise be
scored like any other generation (all-black images get an FID, precision 1, recall 0) and train
the next generation. The tasks raise :class:`DivergedError` instead; the driver stops that chain,
records the failure in the run directory and lets the other chains carry on.

No Ray and no torch import here: the tasks, the model families and the driver all use it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np


class DivergedError(RuntimeError):
    """Something of a generation went non-finite. ``what`` says what, ``key`` the config key most
    likely to blame (or None). Both travel in ``args``, so the error pickles through Ray intact."""

    def __init__(self, what: str, key: Optional[str] = None):
        super().__init__(what, key)
        self.what = what
        self.key = key

    def __str__(self) -> str:
        return f"{self.what}" + (f" (likely key: {self.key})" if self.key else "")


def likely_key(family: Any) -> Optional[str]:
    """The config key to lower first when a family's model diverges."""
    name = getattr(family, "name", None) or getattr(family, "value", family)
    return "train.lr" if str(name) in ("diffusion", "mlp_diffusion", "gan") else None


def _finite(a: Any) -> bool:
    if hasattr(a, "detach"):  # a torch tensor: checked without importing torch
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    return not np.issubdtype(a.dtype, np.inexact) or bool(np.isfinite(a).all())


def check_state(state: Mapping[str, Any], family: Any) -> None:
    """Raise DivergedError naming the first weight tensor that holds NaN or inf."""
    for name in sorted(state):
        if not _finite(state[name]):
            raise DivergedError(f"the trained weights are non-finite (NaN/inf in {name})", likely_key(family))


def check_samples(x: Any, family: Any) -> None:
    """Raise DivergedError when float samples hold NaN or inf (uint8 images cannot)."""
    if not _finite(x):
        raise DivergedError("the samples are non-finite (NaN/inf)", likely_key(family))

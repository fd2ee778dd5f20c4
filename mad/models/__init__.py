"""Model families. Each module exposes ``train(...) -> state`` and ``sample(state, ...) -> (x, y)``.

A state is a flat dict of CPU tensors, so every family saves through safetensors.
"""
from __future__ import annotations

from types import ModuleType

from mad.config import Family


# The fewest training samples one fit of each family needs: a Gaussian's covariance needs 2;
# a diffusion model trains on any non-empty set. Here rather than in the family modules so that
# config validation can ask without importing torch.
_MIN_TRAIN_SAMPLES = {Family.gaussian: 2, Family.diffusion: 1}


def min_train_samples(family: Family) -> int:
    return _MIN_TRAIN_SAMPLES[Family(family)]


def get_family(family: Family) -> ModuleType:
    if family == Family.gaussian:
        from mad.models import gaussian

        return gaussian
    if family == Family.diffusion:
        from mad.models import diffusion

        return diffusion
    raise ValueError(f"model.family: unknown family {family!r}")

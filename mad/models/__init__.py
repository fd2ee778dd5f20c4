"""Model families. Each module exposes ``train(...) -> state`` and ``sample(state, ...) -> (x, y)``.

A state is a flat dict of CPU tensors, so every family saves through safetensors.
"""
from __future__ import annotations

from types import ModuleType

from mad.config import Family


def get_family(family: Family) -> ModuleType:
    if family == Family.gaussian:
        from mad.models import gaussian

        return gaussian
    if family == Family.diffusion:
        from mad.models import diffusion

        return diffusion
    raise ValueError(f"model.family: unknown family {family!r}")

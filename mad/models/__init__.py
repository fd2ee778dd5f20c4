"""Model families, behind one contract (``mad.models.protocol.ModelFamily``) and one registry.

``get_family(name)`` returns the family ``model.family`` names: built-in (gaussian, diffusion,
gmm, kde, mlp_diffusion, gan), registered in this process (``register``), or installed by another
package through the ``mad.families`` entry-point group. A state is a flat dict of CPU tensors,
so every family saves through safetensors.
"""
from __future__ import annotations

from mad.models.protocol import FamilyBase, HasClosedForm, ModelFamily, RealDistribution
from mad.models.registry import (ENTRY_POINT_GROUP, UnknownFamilyError, get_family, known_families, register,
                                 unregister)

__all__ = ["ENTRY_POINT_GROUP", "FamilyBase", "HasClosedForm", "ModelFamily", "RealDistribution",
           "UnknownFamilyError", "get_family", "known_families", "register", "unregister"]


# The fewest training samples one fit of a family needs (a covariance needs 2); asked by config
# validation, so it lives here rather than in the family modules (no torch import). Others: 1.
_MIN_TRAIN_SAMPLES = {"gaussian": 2, "gmm": 2, "kde": 2}


def min_train_samples(family) -> int:
    return _MIN_TRAIN_SAMPLES.get(str(getattr(family, "value", family)), 1)

"""The contract of a model family: what the driver, the Ray tasks and the config need from one.

A family is any object (a class instance, or a module) with the attributes and methods of
:class:`ModelFamily`. The registry (``mad.models.registry``) maps ``model.family`` to one; the
driver, ``mad.remote`` and ``mad.tasks`` only ever call through this contract, so a family in
another package works with ``model.family=<name>`` once it is registered (``register``) or
declared in the ``mad.families`` entry-point group.

Data kinds: ``"vectors"`` are float arrays of shape (n, d) (``data.name`` gaussian, toy2d);
``"images"`` are uint8 arrays (n, C, H, W) with int64 labels or None (digits, MNIST, ...).

A *state* is what ``train`` returns and ``sample`` takes: a flat ``dict[str, torch.Tensor]`` of
CPU tensors, so the driver saves it with safetensors and reloads it for resume or
``train.init=previous``; it must hold everything sampling needs (no pickles, no side files).

Determinism: ``train`` and ``sample`` must depend only on their arguments (the seed included),
because Ray may retry a task on another node and identical generations are shared between chains.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from mad.data.vectors import RealDistribution

VECTORS = "vectors"
IMAGES = "images"
DATA_KINDS = (VECTORS, IMAGES)

State = dict  # dict[str, torch.Tensor], flat, CPU, contiguous


@runtime_checkable
class ModelFamily(Protocol):
    """A generative model family.

    Attributes
    ----------
    name:
        What ``model.family`` names it by.
    data_kinds:
        The data kinds it accepts, a subset of ``("vectors", "images")``; the config refuses
        other data at load time.
    supports_data_parallel:
        Whether ``train`` can run inside a torch.distributed process group (``train.num_workers > 1``,
        Ray Train DDP; see ``mad.distributed``). False refuses ``train.num_workers > 1``.
    cheap:
        True when a whole generation (train + sample) costs milliseconds, so the driver may run
        many chains of it in one task and skip step-level progress bars.
    config_class:
        The dataclass of its own config section, or None. A built-in family's section is a field of
        ``ModelConfig`` named after it (``model.gmm``); a plug-in family's section is
        ``model.options``, which the config turns into an instance of ``config_class`` at load time
        with strict checking of unknown keys and types.
    """

    name: str
    data_kinds: Tuple[str, ...]
    supports_data_parallel: bool
    cheap: bool
    config_class: Optional[type]

    def train(self, x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model_cfg: Any, train_cfg: Any,
              seed: int, init_state: Optional[State] = None, progress: bool = False,
              device: Optional[str] = None) -> State:
        """Fit a model to ``x`` (labels ``y``, or None when the data or ``model.conditional`` has none).

        ``model_cfg`` is the whole ``ModelConfig`` (its family section included), ``train_cfg`` the
        ``TrainConfig``. ``init_state`` is the previous generation's state under ``train.init=previous``.
        """
        ...

    def sample(self, state: State, n: int, num_classes: int, sample_shape: tuple, model_cfg: Any,
               sample_cfg: Any, seed: int, class_probs: Optional[np.ndarray] = None, progress: bool = False,
               device: Optional[str] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Draw ``n`` samples of shape ``sample_shape`` and their labels (or None).

        MAD's sampling bias is ``sample_cfg.bias`` = lambda in (0, 1]: 1 samples the fitted model
        as it is; lambda < 1 must trade diversity for quality in the family's own way (scaled
        covariance, bandwidth, latent scale, guidance, truncation). ``num_classes`` is 0 when the
        samples carry no labels; ``class_probs`` weights the classes when it is not None.
        """
        ...


@runtime_checkable
class HasClosedForm(Protocol):
    """The optional part of the contract: metrics computed from the state itself, not from samples."""

    def closed_form_metrics(self, state: State, bias: float, real: RealDistribution) -> dict:
        """Metrics of the model's sampling distribution (at ``bias``) against ``real``; floats by name."""
        ...


@runtime_checkable
class HasHeldoutMetrics(Protocol):
    """Optional too: metrics of the state on held-out real points (the reference set of vector data)."""

    def heldout_metrics(self, state: State, bias: float, x: np.ndarray) -> dict:
        """E.g. ``nll``, the mean negative log-likelihood of ``x`` under the sampling density at ``bias``."""
        ...


class FamilyBase:
    """Defaults for a plug-in family class; subclass it and override ``train``/``sample``.

    Not required: any object with the attributes of :class:`ModelFamily` will do.
    """

    name: str = ""
    data_kinds: Tuple[str, ...] = (VECTORS,)
    supports_data_parallel: bool = False
    cheap: bool = False
    config_class: Optional[type] = None

    def train(self, x, y, num_classes, model_cfg, train_cfg, seed, init_state=None, progress=False, device=None):
        raise NotImplementedError

    def sample(self, state, n, num_classes, sample_shape, model_cfg, sample_cfg, seed, class_probs=None,
               progress=False, device=None):
        raise NotImplementedError

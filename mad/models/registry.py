"""The family registry: ``model.family`` name -> an object satisfying ``ModelFamily``.

Three sources, looked up in this order:

1. families registered in this process with :func:`register` (tests, notebooks, a launcher script);
2. the built-in families (``gaussian``, ``diffusion``, ``gmm``, ``kde``, ``mlp_diffusion``, ``gan``), whose
   modules are imported only when a generation trains or samples, so loading a config stays fast;
3. the Python entry-point group ``mad.families``: a package declares
   ``[project.entry-points."mad.families"] myfam = "mypkg.family:FAMILY"`` and
   ``model.family=myfam`` works once it is installed, with no edit to ``mad/``.

The driver resolves the family once and hands the object to the Ray tasks (Ray pickles it by
reference to its module), so a family registered in the driver process reaches the workers too,
as long as its module is importable there.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable, Optional

from mad.models.protocol import DATA_KINDS, IMAGES, VECTORS, ModelFamily

ENTRY_POINT_GROUP = "mad.families"

_REQUIRED = ("name", "data_kinds", "supports_data_parallel", "cheap", "config_class", "train", "sample")


class UnknownFamilyError(ValueError):
    """``model.family`` names no registered, built-in or installed family; the message lists the known ones."""


class ModuleFamily:
    """A family whose code is a module with ``train``/``sample`` (and maybe ``closed_form_metrics`` and
    ``heldout_metrics``).

    The module is imported on first use, not at lookup, so that validating a config does not
    import torch, diffusers or scikit-learn. Pickles as its names only.
    """

    def __init__(self, name: str, module: str, data_kinds: tuple[str, ...], *, cheap: bool = False,
                 supports_data_parallel: bool = False, config_class: Optional[type] = None,
                 closed_form: bool = False, heldout: bool = False):
        self.name = name
        self.module = module
        self.data_kinds = tuple(data_kinds)
        self.cheap = cheap
        self.supports_data_parallel = supports_data_parallel
        self.config_class = config_class
        self._closed_form = closed_form
        self._heldout = heldout

    def _impl(self):
        return importlib.import_module(self.module)

    def train(self, *args: Any, **kwargs: Any):
        return self._impl().train(*args, **kwargs)

    def sample(self, *args: Any, **kwargs: Any):
        return self._impl().sample(*args, **kwargs)

    @property
    def closed_form_metrics(self) -> Callable[..., dict]:
        # absent (AttributeError) unless the module has closed forms, as the protocol's optional part says
        if not self._closed_form:
            raise AttributeError(f"family {self.name!r} has no closed-form metrics")
        return self._impl().closed_form_metrics

    @property
    def heldout_metrics(self) -> Callable[..., dict]:
        # absent unless the module scores held-out real points (a likelihood), as closed_form_metrics
        if not self._heldout:
            raise AttributeError(f"family {self.name!r} has no held-out metrics")
        return self._impl().heldout_metrics

    def __repr__(self) -> str:
        return f"ModuleFamily({self.name!r}, {self.module!r})"


def _builtins() -> dict[str, ModelFamily]:
    from mad import config as c

    return {
        "gaussian": ModuleFamily("gaussian", "mad.models.gaussian", (VECTORS,), cheap=True, closed_form=True),
        "diffusion": ModuleFamily("diffusion", "mad.models.diffusion", (IMAGES,), supports_data_parallel=True),
        "gmm": ModuleFamily("gmm", "mad.models.gmm", (VECTORS,), cheap=True, config_class=c.GMMConfig,
                            heldout=True),
        "kde": ModuleFamily("kde", "mad.models.kde", (VECTORS,), cheap=True, config_class=c.KDEConfig,
                            heldout=True),
        "mlp_diffusion": ModuleFamily("mlp_diffusion", "mad.models.mlp_diffusion", (VECTORS,),
                                      config_class=c.MLPDiffusionConfig),
        "gan": ModuleFamily("gan", "mad.models.gan", (IMAGES,), config_class=c.GANConfig),
    }


_registered: dict[str, ModelFamily] = {}
_BUILTIN: Optional[dict[str, ModelFamily]] = None


def builtin_names() -> list[str]:
    return sorted(_builtin_table())


def _builtin_table() -> dict[str, ModelFamily]:
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = _builtins()
    return _BUILTIN


def check_family(obj: Any, where: str) -> ModelFamily:
    """``obj`` if it has every member of the contract, else a one-line ValueError naming what is missing."""
    missing = [m for m in _REQUIRED if not hasattr(obj, m)]
    if missing:
        raise ValueError(f"{where} is not a model family: it lacks {', '.join(missing)} (see mad/models/protocol.py)")
    bad = [k for k in obj.data_kinds if k not in DATA_KINDS]
    if bad or not obj.data_kinds:
        raise ValueError(f"{where}: data_kinds must be a non-empty subset of {DATA_KINDS}, got {tuple(obj.data_kinds)}")
    return obj


def register(name: str, family: Any, *, replace: bool = False) -> ModelFamily:
    """Make ``model.family=<name>`` resolve to ``family`` in this process."""
    check_family(family, f"family {name!r}")
    if not replace and (name in _registered or name in _builtin_table()):
        raise ValueError(f"a family named {name!r} exists already (pass replace=True to override it)")
    _registered[name] = family
    return family


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    # read on every lookup miss, not cached: a package installed while the process runs is seen
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_families() -> list[str]:
    """Every name ``model.family`` accepts now: registered, built-in and installed."""
    return sorted(set(_registered) | set(_builtin_table()) | set(_entry_points()))


def get_family(name: Any) -> ModelFamily:
    """The family ``model.family`` names; :class:`UnknownFamilyError` (one line) when there is none."""
    name = str(getattr(name, "value", name))
    if name in _registered:
        return _registered[name]
    table = _builtin_table()
    if name in table:
        return table[name]
    eps = _entry_points()
    if name in eps:
        try:
            obj = eps[name].load()
        except Exception as err:  # a broken plug-in: say which, in one line
            raise ValueError(f"family {name!r} (entry point {eps[name].value}) failed to load: "
                             f"{type(err).__name__}: {err}".replace("\n", " ")) from None
        return check_family(obj, f"family {name!r} (entry point {eps[name].value})")
    raise UnknownFamilyError(f"unknown family {name!r}; known families: {', '.join(known_families())}")

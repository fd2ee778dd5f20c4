"""Typed configuration: dataclass schemas, loading, validation.

This is the only module that imports OmegaConf. Everything downstream receives
plain dataclasses (``OmegaConf.to_object``), never a DictConfig.

Precedence: dataclass defaults < YAML file < ``dotted.key=value`` overrides.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the key, before any compute starts.
"""
from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A bad configuration; ``str(err)`` is one line that names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


# ----------------------------------------------------------------------------- choices
class DataName(str, Enum):
    gaussian = "gaussian"
    toy2d = "toy2d"
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    folder = "folder"


class _FamilyName(str):
    """A built-in family's name: a plain string that also has ``.value``, as when Family was an Enum."""

    @property
    def value(self) -> str:
        return str(self)


class Family:
    """Names of the built-in families. ``model.family`` is a string checked against the registry
    (``mad.models.registry``) at load time, so families from other packages are accepted too."""

    gaussian = _FamilyName("gaussian")
    diffusion = _FamilyName("diffusion")
    gmm = _FamilyName("gmm")
    kde = _FamilyName("kde")
    mlp_diffusion = _FamilyName("mlp_diffusion")
    gan = _FamilyName("gan")


class Estimator(str, Enum):
    unbiased = "unbiased"
    mle = "mle"


class LoopKind(str, Enum):
    fully_synthetic = "fully_synthetic"
    synthetic_augmentation = "synthetic_augmentation"
    fresh_data = "fresh_data"


class SynthSource(str, Enum):
    last = "last"
    accumulate = "accumulate"
    last_k = "last_k"


class TrainInit(str, Enum):
    scratch = "scratch"
    previous = "previous"


class Scheduler(str, Enum):
    ddim = "ddim"
    ddpm = "ddpm"


class ClassBalance(str, Enum):
    uniform = "uniform"
    real = "real"


class Features(str, Enum):
    raw = "raw"
    classifier = "classifier"
    inception = "inception"


class KeepModels(str, Enum):
    all = "all"
    last = "last"


# ----------------------------------------------------------------------------- schema
@dataclass
class DataConfig:
    name: DataName = DataName.gaussian
    dim: int = 2  # Gaussian: dimension of the real distribution N(0, I_dim)
    root: str = "data"  # torchvision download folder, or the image folder for name=folder
    resolution: Optional[int] = None  # image side in pixels; None keeps the native size
    n_reference: int = 500  # held-out real samples for the metrics; never used for training
    labels: bool = True  # folder: take class labels from sub-folder names


@dataclass
class GMMConfig:
    """``model.gmm``: scikit-learn GaussianMixture; lambda scales the component covariances."""

    components: int = 25
    covariance_type: str = "full"  # full, tied, diag, spherical (scikit-learn's names)
    max_iter: int = 100
    n_init: int = 1
    reg_covar: float = 1e-6


@dataclass
class KDEConfig:
    """``model.kde``: a Gaussian kernel density estimate (Kazdan et al.); lambda scales the bandwidth."""

    bandwidth: Optional[float] = None  # kernel std in data units; None: Scott's rule n^(-1/(d+4)) x data std


@dataclass
class MLPDiffusionConfig:
    """``model.mlp_diffusion``: a DDPM on vectors with an MLP denoiser and a sinusoidal time embedding."""

    hidden: int = 128
    layers: int = 3
    time_embed_dim: int = 32
    num_train_timesteps: int = 100
    input_freqs: int = 16  # Fourier features per coordinate of the input (sharp modes need them)
    input_scale: float = 10.0  # the highest of those frequencies, on standardised data; 0: raw coordinates


@dataclass
class GANConfig:
    """``model.gan``: a DCGAN on images; lambda is the truncation psi in latent space (z -> psi z)."""

    latent_dim: int = 32
    width: int = 32  # channels of the last generator / first discriminator layer


@dataclass
class ModelConfig:
    # a string, not an enum: any family the registry knows (built-in, registered, or installed
    # through the mad.families entry points); each family reads its own section below
    family: str = Family.gaussian
    estimator: Estimator = Estimator.unbiased  # Gaussian covariance estimator
    # diffusion (diffusers UNet2DModel + DDPMScheduler)
    conditional: bool = True  # class-conditional when the data has labels
    channels: List[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    attention: bool = False
    num_train_timesteps: int = 1000  # T
    label_dropout: float = 0.1  # for classifier-free guidance
    gmm: GMMConfig = field(default_factory=GMMConfig)
    kde: KDEConfig = field(default_factory=KDEConfig)
    mlp_diffusion: MLPDiffusionConfig = field(default_factory=MLPDiffusionConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    # a plug-in family's own section: free-form in YAML, turned into its config_class at load time
    options: Any = None


@dataclass
class TrainConfig:
    init: TrainInit = TrainInit.scratch
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    num_workers: int = 1  # >1: data-parallel with Ray Train's TorchTrainer


@dataclass
class SampleConfig:
    bias: float = 1.0  # MAD's lambda in (0, 1]; 1 = unbiased
    scheduler: Scheduler = Scheduler.ddim
    steps: int = 50
    batch_size: int = 256
    class_balance: ClassBalance = ClassBalance.uniform


@dataclass
class LoopConfig:
    kind: LoopKind = LoopKind.fully_synthetic
    generations: int = 5
    n_init: int = 1000  # real samples in generation 1
    n_real: Optional[int] = None  # real samples per later generation (None: n_init; ignored by fully_synthetic)
    n_synth: Optional[int] = None  # synthetic samples per later generation (None: n_init)
    synth_source: SynthSource = SynthSource.last
    last_k: int = 1
    # Alternative to n_real/n_synth: a total per generation and the real share of it.
    real_fraction: Optional[float] = None
    n_total: Optional[int] = None
    # A finite pool refuses a chain that needs more distinct real samples than it holds; true lets
    # real samples come back (each record's real_seen_frac then says how many were seen before).
    allow_real_reuse: bool = False


@dataclass
class MetricsConfig:
    features: Features = Features.raw
    n_eval: int = 500  # generated samples scored each generation
    k: int = 5  # k-NN for precision/recall/density/coverage (MAD: 5)
    cache_dir: str = ".cache/mad"  # classifier weights and reference statistics
    classifier_epochs: int = 30


@dataclass
class ResourcesConfig:
    train_cpus: float = 1.0
    train_gpus: float = 0.0
    sample_cpus: float = 1.0
    sample_gpus: float = 0.0
    sample_shards: int = 1  # a synthetic set is sampled by this many parallel tasks
    eval_cpus: float = 1.0
    eval_gpus: float = 0.0
    max_retries: int = 3  # Ray retries of a task whose worker died
    # Compute a generation whose inputs are identical across chains (generation 1 of chains that differ
    # only in loop kind, say) once and share it; the records are the same either way.
    share_identical: bool = True


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: $RAY_ADDRESS, else a local Ray started on the fly
    num_cpus: Optional[int] = None  # local Ray only
    temp_dir: Optional[str] = None  # local Ray only; default: <tmp>/mad-ray


@dataclass
class ArtifactsConfig:
    keep_models: KeepModels = KeepModels.all


@dataclass
class ReportConfig:
    html: bool = True  # rewrite report.html after every generation
    tensorboard: bool = True
    progress: bool = True  # progress bars and the per-generation table on the console


@dataclass
class Config:
    out: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # dotted key -> list of values; the cartesian product gives independent chains
    sweep: Dict[str, List[Any]] = field(default_factory=dict)


# Keys whose value differs between chains but not the science, so resume may ignore them.
_RESUME_IGNORED = ("report", "ray", "resources")

FINITE_POOL_SIZES = {  # training pool sizes of the finite real data sets (reference set excluded)
    DataName.digits: 1797,
    DataName.mnist: 60000,
    DataName.fashion_mnist: 60000,
    DataName.cifar10: 50000,
}


# ----------------------------------------------------------------------------- loading
def _omegaconf():
    from omegaconf import OmegaConf  # the only import of OmegaConf in the project

    return OmegaConf


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _convert_error(err: Exception) -> ConfigError:
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", "") or ""
        msg = getattr(err, "msg", None) or str(err).split("\n")[0]
        msg = msg.split("\n")[0]
        if "Key '" in msg and "not in" in msg:
            msg = "unknown key"
        elif "Invalid value" in msg and "valid values" in msg.lower():
            msg = _one_line(msg)
        return ConfigError(str(key), _one_line(msg))
    return ConfigError("", _one_line(str(err)))


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[List[str]] = None) -> Config:
    """Load ``path`` (default ``configs/default.yaml``) over the schema, apply overrides, validate."""
    OmegaConf = _omegaconf()
    import yaml  # omegaconf depends on PyYAML

    base = OmegaConf.structured(Config)
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError("config", f"no such file: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(str(path), f"malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "malformed YAML: the top level must be a mapping of keys")
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(raw))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(item, "an override must look like dotted.key=value")
            key, value = item.split("=", 1)
            if key == "sweep":  # replace the whole grid, e.g. sweep={} runs a single chain
                parsed = yaml.safe_load(value)
                if not isinstance(parsed, dict):
                    raise ConfigError(key, "takes a mapping, e.g. sweep={} or sweep={seed: [0, 1]}")
                merged.sweep = parsed
                continue
            if key.startswith("sweep."):
                # sweep keys are themselves dotted: sweep.loop.kind=[a,b] sweeps "loop.kind"
                parsed = yaml.safe_load(value)
                if not isinstance(parsed, list):
                    raise ConfigError(key, "a sweep takes a list of values, e.g. [1,2]")
                merged.sweep[key[len("sweep."):]] = parsed
                continue
            _check_key_exists(merged, key)
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([f"{key}={value}"]))
        cfg: Config = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as err:  # omegaconf raises several types; all become one line
        raise _convert_error(err) from None
    cfg.model.options = family_options(cfg.model)
    validate(cfg)
    return cfg


def _family(name: str):
    from mad.models.registry import get_family  # the registry imports this module: import late

    try:
        return get_family(name)
    except ValueError as err:
        raise ConfigError("model.family", _one_line(str(err))) from None


def family_options(model: "ModelConfig") -> Any:
    """``model.options`` as an instance of the family's ``config_class`` (strict keys and types).

    Only plug-in families have options; a built-in family's section is its own field of ModelConfig.
    """
    from mad.models.registry import builtin_names

    options = model.options
    name = str(model.family)
    if name in builtin_names():
        if options is not None:
            raise ConfigError("model.options", f"is for plug-in families; {name} reads model.{name} or the flat model keys")
        return None
    cls = getattr(_family(name), "config_class", None)
    if cls is None or isinstance(options, cls):
        return options
    OmegaConf = _omegaconf()
    try:
        node = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(options or {}))
        return OmegaConf.to_object(node)
    except Exception as err:
        e = _convert_error(err)
        raise ConfigError(f"model.options.{e.key}" if e.key else "model.options", e.problem) from None


def _check_key_exists(node: Any, dotted: str) -> None:
    parts = dotted.split(".")
    cur = node
    for i, part in enumerate(parts):
        if part == "sweep" and i == 0 and len(parts) > 1:
            return
        if parts[:i] == ["model"] and part == "options":
            return  # a plug-in family's section: checked against its config_class once the family is known
        if not hasattr(cur, "keys") or part not in cur:
            raise ConfigError(dotted, "unknown key")
        cur = cur[part]


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain, YAML-ready dict (enums as their values)."""

    def conv(obj: Any) -> Any:
        if is_dataclass(obj):
            return {f.name: conv(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, Enum):
            return obj.value
        if isinstance(obj, str):
            return str(obj)  # Family names are a str subclass, which YAML's safe dumper refuses
        if isinstance(obj, dict):
            return {k: conv(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [conv(v) for v in obj]
        return obj

    return conv(cfg)


def to_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def science_dict(cfg: Config) -> Dict[str, Any]:
    """The part of the config that decides results (what resume compares)."""
    d = config_to_dict(cfg)
    for key in _RESUME_IGNORED:
        d.pop(key, None)
    return d


def science_of_yaml(text: str) -> Dict[str, Any]:
    """``science_dict`` of a stored config.yaml (as the driver wrote it), for the resume check."""
    import yaml

    d = yaml.safe_load(text) or {}
    for key in _RESUME_IGNORED:
        d.pop(key, None)
    # a section added to the schema after the run was written (model.gmm, ...) takes its defaults,
    # which reproduce what the run did, so such a run still resumes
    defaults = science_dict(Config())
    if isinstance(d.get("model"), dict):
        for key, value in defaults["model"].items():
            if isinstance(value, dict) or key == "options":
                d["model"].setdefault(key, value)
    return d


# ----------------------------------------------------------------------------- sweeps
def get_dotted(cfg: Any, key: str) -> Any:
    cur = cfg
    for part in key.split("."):
        if not hasattr(cur, part):
            raise ConfigError(key, "unknown key")
        cur = getattr(cur, part)
    return cur


def set_dotted(cfg: Config, key: str, value: Any) -> Config:
    """A copy of ``cfg`` with ``key`` set, type-checked through the schema."""
    OmegaConf = _omegaconf()
    node = OmegaConf.structured(cfg)
    try:
        _check_key_exists(node, key)
        OmegaConf.update(node, key, value, merge=False)
        return OmegaConf.to_object(node)
    except ConfigError:
        raise
    except Exception as err:
        e = _convert_error(err)
        raise ConfigError(f"sweep.{key}", e.problem) from None


def expand_sweep(cfg: Config) -> List[tuple[Dict[str, Any], Config]]:
    """Cartesian product of ``cfg.sweep``: a list of (assignment, chain config)."""
    keys = list(cfg.sweep)
    if not keys:
        return [({}, cfg)]
    values = [cfg.sweep[k] for k in keys]
    chains = []
    for combo in itertools.product(*values):
        chain_cfg = copy.deepcopy(cfg)
        chain_cfg.sweep = {}
        assignment = dict(zip(keys, combo))
        for k, v in assignment.items():
            chain_cfg = set_dotted(chain_cfg, k, v)
        chains.append((assignment, chain_cfg))
    return chains


# ----------------------------------------------------------------------------- validation
def resolved_counts(loop: LoopConfig) -> tuple[int, int]:
    """(n_real, n_synth) per generation t >= 2, after defaults and real_fraction."""
    if loop.real_fraction is not None:
        n_real = int(round(loop.real_fraction * loop.n_total))
        n_synth = loop.n_total - n_real
    else:
        n_real = loop.n_real if loop.n_real is not None else loop.n_init
        n_synth = loop.n_synth if loop.n_synth is not None else loop.n_init
    if loop.kind == LoopKind.fully_synthetic:
        n_real = 0
    return n_real, n_synth


def validate(cfg: Config) -> None:
    """Ranges and relations, checked once for the base config and for every sweep chain."""
    if not isinstance(cfg.sweep, dict):
        raise ConfigError("sweep", "must map dotted keys to lists of values")
    for key, vals in cfg.sweep.items():
        if key.startswith("sweep") or key in ("out",):
            raise ConfigError(f"sweep.{key}", "cannot be swept")
        try:
            get_dotted(cfg, key)
        except ConfigError:
            raise ConfigError(f"sweep.{key}", "unknown key") from None
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"sweep.{key}", "must be a non-empty list of values")
    for _, chain in expand_sweep(cfg):
        _validate_one(chain)


def _positive(key: str, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")


def _validate_one(cfg: Config) -> None:
    loop, s, d, m = cfg.loop, cfg.sample, cfg.data, cfg.model
    if not (0.0 < s.bias <= 1.0):
        raise ConfigError("sample.bias", f"must be in (0, 1], got {s.bias}")
    for key in ("generations", "n_init", "n_real", "n_synth", "last_k", "n_total"):
        _positive(f"loop.{key}", getattr(loop, key))
    if loop.real_fraction is not None or loop.n_total is not None:
        if loop.n_real is not None or loop.n_synth is not None:
            raise ConfigError("loop.real_fraction", "give either loop.real_fraction with loop.n_total, or loop.n_real/loop.n_synth, not both")
        if loop.real_fraction is None or loop.n_total is None:
            raise ConfigError("loop.real_fraction", "loop.real_fraction and loop.n_total go together")
        if not (0.0 <= loop.real_fraction <= 1.0):
            raise ConfigError("loop.real_fraction", f"must be in [0, 1], got {loop.real_fraction}")
    n_real, n_synth = resolved_counts(loop)
    if loop.kind != LoopKind.fully_synthetic and loop.real_fraction is None and n_real <= 0:
        raise ConfigError("loop.n_real", f"must be positive, got {n_real}")
    if loop.kind == LoopKind.fully_synthetic and n_synth <= 0:
        raise ConfigError("loop.n_synth", "the fully synthetic loop needs synthetic samples")
    if loop.synth_source == SynthSource.last_k and loop.last_k < 1:
        raise ConfigError("loop.last_k", "must be at least 1")
    for key in ("dim", "n_reference", "resolution"):
        _positive(f"data.{key}", getattr(d, key))
    for key in ("n_eval", "k", "classifier_epochs"):
        _positive(f"metrics.{key}", getattr(cfg.metrics, key))
    for key in ("steps", "batch_size", "lr", "num_workers"):
        _positive(f"train.{key}", getattr(cfg.train, key))
    if cfg.train.num_workers > cfg.train.batch_size:
        raise ConfigError("train.num_workers", f"{cfg.train.num_workers} workers need train.batch_size >= "
                          f"{cfg.train.num_workers} (every worker needs a sample per step)")
    family = _family(m.family)
    if cfg.train.num_workers > 1 and not family.supports_data_parallel:
        raise ConfigError("train.num_workers", f"model.family={m.family} does not support data-parallel training")
    if not (0.0 <= cfg.train.ema_decay < 1.0):
        raise ConfigError("train.ema_decay", f"must be in [0, 1), got {cfg.train.ema_decay}")
    for key in ("steps", "batch_size"):
        _positive(f"sample.{key}", getattr(s, key))
    _positive("model.num_train_timesteps", m.num_train_timesteps)
    _positive("model.layers_per_block", m.layers_per_block)
    if not m.channels or any(c <= 0 for c in m.channels):
        raise ConfigError("model.channels", "must be a non-empty list of positive widths")
    if not (0.0 <= m.label_dropout < 1.0):
        raise ConfigError("model.label_dropout", f"must be in [0, 1), got {m.label_dropout}")
    if s.scheduler == Scheduler.ddim and s.steps > m.num_train_timesteps:
        raise ConfigError("sample.steps", f"must be at most model.num_train_timesteps ({m.num_train_timesteps})")
    _positive("resources.sample_shards", cfg.resources.sample_shards)
    if cfg.resources.max_retries < 0:
        raise ConfigError("resources.max_retries", "must be at least 0")
    # family / data compatibility
    kind = data_kind(d.name)
    vector_data = kind == "vectors"
    if kind not in family.data_kinds:
        raise ConfigError("model.family", f"{m.family} takes {' or '.join(family.data_kinds)} data, got "
                                          f"data.name={d.name.value} ({kind})")
    _validate_sections(m)
    if cfg.metrics.features != Features.raw and vector_data:
        raise ConfigError("metrics.features", f"{cfg.metrics.features.value} needs image data; use raw for {d.name.value}")
    # finite real pools (a folder's size is known once loaded: the driver calls check_real_pool then)
    pool = FINITE_POOL_SIZES.get(d.name)
    if pool is not None:
        if d.name == DataName.digits:
            if d.n_reference >= pool:
                raise ConfigError("data.n_reference", f"must leave training data out of the {pool} digits")
            check_real_pool(cfg, pool - d.n_reference, f"digits training pool ({pool} minus data.n_reference="
                                                       f"{d.n_reference})")
        else:
            check_real_pool(cfg, pool, f"{d.name.value} training pool")


VECTOR_DATA = (DataName.gaussian, DataName.toy2d)


def data_kind(name: DataName) -> str:
    """The data kind of a data set, as families declare what they accept: "vectors" or "images"."""
    return "vectors" if name in VECTOR_DATA else "images"


def _validate_sections(m: ModelConfig) -> None:
    """Ranges of the built-in families' sections (checked whatever the family, as the flat keys are)."""
    for key in ("components", "max_iter", "n_init", "reg_covar"):
        _positive(f"model.gmm.{key}", getattr(m.gmm, key))
    kinds = ("full", "tied", "diag", "spherical")
    if m.gmm.covariance_type not in kinds:
        raise ConfigError("model.gmm.covariance_type", f"must be one of {', '.join(kinds)}, got {m.gmm.covariance_type!r}")
    _positive("model.kde.bandwidth", m.kde.bandwidth)
    for key in ("latent_dim", "width"):
        _positive(f"model.gan.{key}", getattr(m.gan, key))
    if m.mlp_diffusion.input_scale < 0 or m.mlp_diffusion.input_freqs < 0:
        raise ConfigError("model.mlp_diffusion.input_scale", "input_scale and input_freqs must be at least 0")
    for key in ("hidden", "layers", "time_embed_dim", "num_train_timesteps"):
        _positive(f"model.mlp_diffusion.{key}", getattr(m.mlp_diffusion, key))
    if m.mlp_diffusion.time_embed_dim % 2:
        raise ConfigError("model.mlp_diffusion.time_embed_dim", f"must be even (sine and cosine halves), got "
                                                                f"{m.mlp_diffusion.time_embed_dim}")


def real_samples_needed(loop: LoopConfig) -> tuple[int, str]:
    """How many distinct real samples a chain trains on over its generations, and the keys that decide it.

    Fresh data: n_init + (G-1) n_real (every later draw unseen); synthetic augmentation:
    max(n_init, n_real) (one fixed set nested with generation 1's); fully synthetic: n_init.
    """
    n_real, _ = resolved_counts(loop)
    later = loop.generations - 1
    n_real_key = "(loop.real_fraction * loop.n_total)" if loop.real_fraction is not None else "loop.n_real"
    if loop.kind == LoopKind.fresh_data and later > 0:
        return (loop.n_init + later * n_real,
                f"loop.n_init + (loop.generations - 1) * {n_real_key} = {loop.n_init} + {later} x {n_real}")
    if loop.kind == LoopKind.synthetic_augmentation and later > 0:
        return max(loop.n_init, n_real), f"max(loop.n_init, {n_real_key}) = max({loop.n_init}, {n_real})"
    return loop.n_init, f"loop.n_init = {loop.n_init}"


def check_real_pool(cfg: Config, pool_size: int, pool_name: str) -> None:
    """Refuse a chain that needs more distinct real samples than its finite pool holds, unless it opts in."""
    need, formula = real_samples_needed(cfg.loop)
    if need > pool_size and not cfg.loop.allow_real_reuse:
        key, expr = formula.split(" = ", 1)
        raise ConfigError(key, f"the {cfg.loop.kind.value} loop needs {need} distinct real samples ({expr}) but the "
                               f"{pool_name} holds {pool_size}; lower them, or set loop.allow_real_reuse=true "
                               f"to let real samples come back")

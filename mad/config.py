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


class Family(str, Enum):
    gaussian = "gaussian"
    diffusion = "diffusion"


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


class KeepSamples(str, Enum):
    all = "all"  # samples.npz and preview.npz of every generation
    last = "last"  # only the latest generation's (what resume needs); earlier ones are deleted
    none = "none"  # none; resume redraws the last synthetic set from the saved model and its seed


# Families whose saved state redraws a generation's samples exactly (same derived seed), so a run
# that keeps no samples (artifacts.samples=none) can still resume.
REDRAWABLE_FAMILIES = frozenset({Family.gaussian})


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
class ModelConfig:
    family: Family = Family.gaussian
    estimator: Estimator = Estimator.unbiased  # Gaussian covariance estimator
    # diffusion (diffusers UNet2DModel + DDPMScheduler)
    conditional: bool = True  # class-conditional when the data has labels
    channels: List[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    attention: bool = False
    num_train_timesteps: int = 1000  # T
    label_dropout: float = 0.1  # for classifier-free guidance


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


@dataclass
class MetricsConfig:
    features: Features = Features.raw
    n_eval: int = 500  # generated samples scored each generation
    k: int = 5  # k-NN for precision/recall/density/coverage (MAD: 5)
    cache_dir: str = ".cache/mad"  # classifier weights and reference statistics
    classifier_epochs: int = 30
    # Sample-based metrics (FID, PRDC, class metrics) every k-th generation and at the last one;
    # 0 = never. Closed-form metrics (the Gaussian's w2) are computed every generation regardless.
    every: int = 1


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
    # Cheap families (mad/models: CHEAP = True) run blocks of chains in one task: null = sized
    # automatically (chains / CPUs, capped), an int = chains per block, 0 = one task per stage as for
    # every other family.
    block_size: Optional[int] = None


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: $RAY_ADDRESS, else a local Ray started on the fly
    num_cpus: Optional[int] = None  # local Ray only
    temp_dir: Optional[str] = None  # local Ray only; default: <tmp>/mad-ray


@dataclass
class ArtifactsConfig:
    keep_models: KeepModels = KeepModels.all
    samples: KeepSamples = KeepSamples.all


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
    validate(cfg)
    return cfg


def _check_key_exists(node: Any, dotted: str) -> None:
    parts = dotted.split(".")
    cur = node
    for i, part in enumerate(parts):
        if part == "sweep" and i == 0 and len(parts) > 1:
            return
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
    if cfg.train.num_workers > 1 and m.family != Family.diffusion:
        raise ConfigError("train.num_workers", "data-parallel training needs model.family=diffusion")
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
    if cfg.resources.block_size is not None and cfg.resources.block_size < 0:
        raise ConfigError("resources.block_size", f"must be null, 0 (no blocks) or positive, got {cfg.resources.block_size}")
    if cfg.metrics.every < 0:
        raise ConfigError("metrics.every", f"must be 0 (never) or positive, got {cfg.metrics.every}")
    if cfg.artifacts.samples != KeepSamples.all and loop.synth_source != SynthSource.last:
        raise ConfigError("artifacts.samples", f"{cfg.artifacts.samples.value} needs loop.synth_source=last "
                          f"({loop.synth_source.value} reads earlier synthetic sets again)")
    if cfg.artifacts.samples == KeepSamples.none and m.family not in REDRAWABLE_FAMILIES:
        raise ConfigError("artifacts.samples", f"none needs a family whose saved state redraws its samples "
                          f"exactly (gaussian), got {m.family.value}")
    if cfg.resources.max_retries < 0:
        raise ConfigError("resources.max_retries", "must be at least 0")
    # family / data compatibility
    vector_data = d.name in (DataName.gaussian, DataName.toy2d)
    if m.family == Family.gaussian and not vector_data:
        raise ConfigError("model.family", f"gaussian needs data.name gaussian or toy2d, got {d.name.value}")
    if m.family == Family.diffusion and vector_data:
        raise ConfigError("model.family", f"diffusion needs an image data set, got data.name={d.name.value}")
    if cfg.metrics.features != Features.raw and vector_data:
        raise ConfigError("metrics.features", f"{cfg.metrics.features.value} needs image data; use raw for {d.name.value}")
    # finite real pools
    pool = FINITE_POOL_SIZES.get(d.name)
    if pool is not None:
        pool -= d.n_reference if d.name == DataName.digits else 0
        if loop.n_init > pool:
            raise ConfigError("loop.n_init", f"{loop.n_init} is larger than the real training pool of {d.name.value} ({pool})")
        if n_real > pool:
            raise ConfigError("loop.n_real", f"{n_real} is larger than the real training pool of {d.name.value} ({pool})")
        if d.name == DataName.digits and d.n_reference >= 1797:
            raise ConfigError("data.n_reference", "must leave training data out of the 1797 digits")

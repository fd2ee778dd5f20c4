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
import math
import os
import re
import typing
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


class BandwidthRule(str, Enum):
    scott_std = "scott_std"  # n^(-1/(d+4)) times the data's per-coordinate std averaged over coordinates
    scott = "scott"  # scikit-learn's KernelDensity(bandwidth="scott"): n^(-1/(d+4)), unscaled (Kazdan et al.)


class Features(str, Enum):
    raw = "raw"
    classifier = "classifier"
    inception = "inception"


class Reward(str, Enum):
    none = "none"
    classifier_confidence = "classifier_confidence"  # the metrics' classifier: max softmax probability


class CorrectKind(str, Enum):
    none = "none"
    kmeans = "kmeans"


class SynthSchedule(str, Enum):
    constant = "constant"  # n_synth every generation
    linear = "linear"  # from n_synth at generation 2 to n_synth_final at the last generation


class KeepModels(str, Enum):
    all = "all"
    last = "last"


class PhaseBaseline(str, Enum):
    sweep = "sweep"  # the real-only curve d_real(n) from the sweep's own n_synth = 0 chains
    auto = "auto"  # add real-only chains on a grid from the smallest n_real to the largest n_real + n_synth


class Band(str, Enum):
    mean_std = "mean_std"
    median_iqr = "median_iqr"


class Tracker(str, Enum):
    none = "none"
    mlflow = "mlflow"  # MLflow with a local store (SQLite): no server, works offline


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
class GMMConfig:
    """``model.gmm``: scikit-learn GaussianMixture; lambda scales the component covariances."""

    components: int = 25
    covariance_type: str = "full"  # full, tied, diag, spherical (scikit-learn's names)
    max_iter: int = 100
    n_init: int = 1
    reg_covar: float = 1e-6


@dataclass
class KDEConfig:
    """``model.kde``: a Gaussian kernel density estimate (Kazdan et al.); lambda scales the kernel variance."""

    bandwidth: Optional[float] = None  # kernel std h in data units; None: ``rule``
    rule: BandwidthRule = BandwidthRule.scott_std  # the bandwidth when ``bandwidth`` is None


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
    # init=previous, generations >= 2: fine-tune the previous weights with these (null: steps / lr);
    # ignored with init=scratch (Bertrand et al. 2024)
    finetune_steps: Optional[int] = None
    finetune_lr: Optional[float] = None


@dataclass
class SampleConfig:
    bias: float = 1.0  # MAD's lambda in (0, 1]; 1 = unbiased
    scheduler: Scheduler = Scheduler.ddim
    steps: int = 50
    # clip the predicted x0 to [-1, 1] at every step (diffusers' clip_sample); see BENCHMARKS.md, "Sampler"
    clip: bool = True
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
    # Alternative to n_real/n_synth: a total per generation and the real share of it (fully synthetic:
    # n_total synthetic samples, so every loop of a sweep trains on as many samples).
    real_fraction: Optional[float] = None
    n_total: Optional[int] = None
    # A finite pool refuses a chain that needs more distinct real samples than it holds; true lets
    # real samples come back (each record's real_seen_frac then says how many were seen before).
    allow_real_reuse: bool = False
    # n_synth per generation: constant, or linear from n_synth (generation 2) to n_synth_final (the last)
    n_synth_schedule: SynthSchedule = SynthSchedule.constant
    n_synth_final: Optional[int] = None
    # generations >= 2: a uniform subset of this size of the assembled real + synthetic set (Kazdan et
    # al.'s accumulate-and-subsample with synth_source=accumulate); null keeps all of it
    subsample_to: Optional[int] = None


@dataclass
class CurateConfig:
    """``curate``: Ferbach et al. 2024's K-wise choice. Each kept synthetic sample is chosen from k
    candidates with probability proportional to exp(beta * reward), so k x n_synth are sampled."""

    reward: Reward = Reward.none
    k: int = 4
    beta: float = 1.0  # inverse temperature of the choice (the reward's scale)


@dataclass
class CorrectConfig:
    """``correct``: Gillman et al. 2024's self-correction. Each kept synthetic sample moves a fraction
    ``strength`` toward its nearest k-means centre of the chain's generation-1 real set (per class
    when the samples carry labels)."""

    kind: CorrectKind = CorrectKind.none
    strength: float = 0.5
    clusters: int = 10  # centres per class (or overall, without labels)


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
    # Compute a generation whose inputs are identical across chains (generation 1 of chains that differ
    # only in loop kind, say) once and share it; the records are the same either way.
    share_identical: bool = True
    # Cheap families (mad/models: CHEAP = True) run blocks of chains in one task: null = sized
    # automatically (chains / CPUs, capped), an int = chains per block, 0 = one task per stage as for
    # every other family.
    block_size: Optional[int] = None


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: $RAY_ADDRESS, else a local Ray started on the fly
    num_cpus: Optional[int] = None  # local Ray only
    temp_dir: Optional[str] = None  # local Ray only: its files go to <temp_dir or tmp>/mad-ray-<uid>/<random>, removed at exit


@dataclass
class ArtifactsConfig:
    keep_models: KeepModels = KeepModels.all
    samples: KeepSamples = KeepSamples.all


@dataclass
class PhaseConfig:
    """The fresh-data phase diagram (phase.csv, MAD section 5); see mad/phase.py."""
    metric: str = "auto"  # the distance: auto = w2 when recorded (Gaussians), else fid
    last_k: int = 10  # the limit averages each chain's last K generations
    baseline_bias: Optional[float] = None  # real-only curve at this lambda; None: each cell's own lambda
    baseline: PhaseBaseline = PhaseBaseline.sweep  # auto: measure d_real(n) over the whole range n_e can take


@dataclass
class ReportConfig:
    html: bool = True  # rewrite report.html after every generation
    band: Band = Band.mean_std  # what a group of seeds draws: mean +- std, or median with the interquartile band
    tensorboard: bool = True
    progress: bool = True  # progress bars and the per-generation table on the console
    tracker: Tracker = Tracker.none  # also log every chain to an experiment tracker (see mad/tracking.py)
    tracker_dir: Optional[str] = None  # the tracker's store; null: RUN_DIR/mlflow
    phase: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass
class Config:
    out: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    correct: CorrectConfig = field(default_factory=CorrectConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # dotted key -> list of values; the cartesian product gives independent chains
    sweep: Dict[str, List[Any]] = field(default_factory=dict)


# Keys whose value differs between chains but not the science, so resume may ignore them.
# ``out`` too: a run directory resumes wherever it is and however its path is spelled.
_RESUME_IGNORED = ("out", "report", "ray", "resources")

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
    raw = _read_yaml_mapping(path)
    unresolved: Dict[str, str] = {}
    _check_shape(raw, Config, "", unresolved)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(raw))
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(item, "an override must look like dotted.key=value")
            key, value = item.split("=", 1)
            _check_override(key, value, unresolved)
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
    _set_unresolved(cfg, unresolved)
    return cfg


def _read_yaml_mapping(path: Path) -> dict:
    """The config file as a dict; a binary, empty or non-mapping file is a ConfigError naming the file."""
    import yaml

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not a text YAML file (it is not UTF-8; a binary file?)") from None
    if "\x00" in text:
        raise ConfigError(str(path), "not a text YAML file (it holds NUL bytes; a binary file?)")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(str(path), f"malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    # An empty file is refused rather than run: it would silently run the schema defaults, which
    # are not configs/default.yaml. Running without a CONFIG argument runs configs/default.yaml.
    if raw is None:
        raise ConfigError(str(path), "holds no keys (an empty config); give keys, or omit the file to run "
                                     "configs/default.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "malformed YAML: the top level must be a mapping of keys")
    return raw


# ----------------------------------------------------------------------------- interpolations
# OmegaConf interpolations are allowed in exactly one form, ``${oc.env:VAR}`` or
# ``${oc.env:VAR,default}``, and only in path keys, so that a config can follow a machine's data
# or scratch folder. Everything written (config.yaml, report.html, the dry-run print) keeps the
# unresolved form: the environment's values never travel with a run directory or a shared report.
# Other interpolations (key references, other resolvers) are refused: they buy little and make
# "what did this run use" depend on more than the file.
INTERPOLATION_KEYS = ("out", "data.root", "metrics.cache_dir", "ray.temp_dir")
_ENV_INTERPOLATION = re.compile(r"\$\{oc\.env:[A-Za-z_][A-Za-z0-9_]*(,[^${}]*)?\}")
_UNRESOLVED_ATTR = "_unresolved"  # on a Config: dotted key -> the value as written, before resolution


def _check_interpolation(key: str, value: Any, unresolved: Dict[str, str]) -> None:
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_interpolation(key, v, unresolved)
        return
    if not isinstance(value, str) or "${" not in value:
        if key in INTERPOLATION_KEYS:
            unresolved.pop(key, None)  # a later plain value replaces an earlier interpolation
        return
    if key not in INTERPOLATION_KEYS or "${" in _ENV_INTERPOLATION.sub("", value):
        raise ConfigError(key, "interpolation not allowed here: only ${oc.env:VAR} or ${oc.env:VAR,default}, "
                               f"and only in {', '.join(INTERPOLATION_KEYS)}")
    unresolved[key] = value


def _set_unresolved(cfg: Config, unresolved: Dict[str, str]) -> None:
    object.__setattr__(cfg, _UNRESOLVED_ATTR, dict(unresolved))


def _apply_unresolved(d: Dict[str, Any], cfg: Any) -> Dict[str, Any]:
    for key, value in getattr(cfg, _UNRESOLVED_ATTR, {}).items():
        node = d
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return d


# ----------------------------------------------------------------------------- shape of the input
def _check_shape(raw: dict, schema: Any, prefix: str, unresolved: Dict[str, str]) -> None:
    """Sections must be mappings and leaves must not be: named here, before OmegaConf's merge
    would say "Cannot merge incompatible container types" without the key."""
    names = {f.name: f for f in fields(schema)}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or key not in names:
            raise ConfigError(str(dotted), "unknown key")
        section = _dataclass_type(schema, key)
        if section is not None:
            if not isinstance(value, dict):
                raise ConfigError(dotted, f"is a section of keys (e.g. {dotted}.{fields(section)[0].name}: ...), "
                                          f"got {value!r}")
            _check_shape(value, section, dotted + ".", unresolved)
        elif dotted == "sweep":
            if not isinstance(value, dict):
                raise ConfigError("sweep", "must map dotted keys to lists of values")
            for k, v in value.items():
                _check_interpolation(f"sweep.{k}", v, unresolved)
        else:
            if isinstance(value, dict):
                raise ConfigError(dotted, f"takes a value, not a mapping of keys ({value!r})")
            _check_interpolation(dotted, value, unresolved)


def _dataclass_type(schema: Any, name: str) -> Optional[type]:
    default = next(f for f in fields(schema) if f.name == name).default_factory  # type: ignore[misc]
    if callable(default):
        probe = default()
        if is_dataclass(probe):
            return type(probe)
    return None


def _check_override(key: str, value: str, unresolved: Dict[str, str]) -> None:
    parts = key.split(".")
    if parts[0] == "sweep":
        _check_interpolation(key, value, unresolved)
        return
    schema: Any = Config
    for part in parts:
        if not is_dataclass(schema) or part not in {f.name for f in fields(schema)}:
            return  # unknown keys are named by _check_key_exists
        schema = _dataclass_type(schema, part)
    if schema is not None:
        raise ConfigError(key, f"is a section of keys; set one of them, e.g. {key}.{fields(schema)[0].name}=...")
    _check_interpolation(key, value, unresolved)


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

    return yaml.safe_dump(_apply_unresolved(config_to_dict(cfg), cfg), sort_keys=False)


def science_dict(cfg: Config) -> Dict[str, Any]:
    """The part of the config that decides results (what resume compares)."""
    d = _apply_unresolved(config_to_dict(cfg), cfg)
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
    # (and so do keys added later: curate, correct, loop.subsample_to, train.finetune_steps, ...)
    _fill_defaults(d, science_dict(Config()))
    return d


def _fill_defaults(d: Dict[str, Any], defaults: Dict[str, Any]) -> None:
    for key, value in defaults.items():
        if key == "sweep":
            continue
        if key not in d:
            d[key] = value
        elif isinstance(value, dict) and isinstance(d[key], dict):
            _fill_defaults(d[key], value)


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


def _field_type(cls: type, name: str) -> Any:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints[name]


_HINTS: Dict[type, Dict[str, Any]] = {}
_MISSING = object()


def _fast_value(hint: Any, value: Any) -> Any:
    """The value OmegaConf would store for ``value`` in a field typed ``hint``, when that is obvious
    (an int for an int, a float or int for a float, ...); ``_MISSING`` when OmegaConf must decide."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return _MISSING
        hint = args[0]
    t = type(value)
    if hint is int:
        return value if t is int else _MISSING
    if hint is float:
        return float(value) if t is float or t is int else _MISSING
    if hint is bool or hint is str:
        return value if t is hint else _MISSING
    if isinstance(hint, type) and issubclass(hint, Enum) and isinstance(value, hint):
        return value
    return _MISSING


def _checked_values(cfg: Config, key: str, values: List[Any]) -> List[Any]:
    """``values`` of sweep key ``key`` converted and type-checked as the schema types them.

    Plain values of the field's own type pass straight through; anything else (a string for an
    enum or an int, a list, ...) goes through OmegaConf once, as ``set_dotted`` would."""
    parts = key.split(".")
    owner = cfg
    for part in parts[:-1]:
        owner = getattr(owner, part)
    hint = _field_type(type(owner), parts[-1]) if is_dataclass(owner) else Any
    out: List[Any] = []
    node = None
    for value in values:
        fast = _fast_value(hint, value)
        if fast is not _MISSING:
            out.append(fast)
            continue
        OmegaConf = _omegaconf()
        if node is None:
            node = OmegaConf.structured(cfg)
        try:
            OmegaConf.update(node, key, value, merge=False)
            stored = OmegaConf.select(node, key)
            out.append(OmegaConf.to_object(stored) if OmegaConf.is_config(stored) else stored)
        except Exception as err:
            raise ConfigError(f"sweep.{key}", _convert_error(err).problem) from None
    return out


_LEAVES = {int, float, bool, str, type(None)}  # grows by the Enum types met
_NESTED: Dict[type, tuple] = {}  # dataclass -> its fields that can hold containers


def _nested_fields(cls: type) -> tuple:
    names = _NESTED.get(cls)
    if names is None:
        names = []
        for name, hint in typing.get_type_hints(cls).items():
            args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            if any(is_dataclass(a) or typing.get_origin(a) in (list, dict) or a in (list, dict, Any)
                   for a in (hint, *args)):
                names.append(name)
        names = _NESTED[cls] = tuple(names)
    return names


def _copy_tree(obj: Any) -> Any:
    """A deep copy of a config tree (dataclasses, lists, dicts, immutable leaves), many times
    faster than ``copy.deepcopy``: the schema's type hints say which fields can hold containers."""
    t = type(obj)
    if t in _LEAVES:
        return obj
    if isinstance(obj, Enum):
        _LEAVES.add(t)
        return obj
    if t is list:
        return [v if type(v) in _LEAVES else _copy_tree(v) for v in obj]
    if t is dict:
        return {k: v if type(v) in _LEAVES else _copy_tree(v) for k, v in obj.items()}
    if hasattr(t, "__dataclass_fields__"):
        new = object.__new__(t)
        d = obj.__dict__.copy()
        for k in _nested_fields(t):
            v = d[k]
            if type(v) not in _LEAVES:
                d[k] = _copy_tree(v)
        new.__dict__ = d
        return new
    return copy.deepcopy(obj)


def _with_values(cfg: Config, assignment: Dict[str, Any], deep: bool) -> Config:
    """``cfg`` with the (already checked) ``assignment`` set and no sweep. ``deep=False`` shares every
    section it does not change with ``cfg`` (only for read-only use, e.g. validation)."""
    chain = object.__new__(Config)
    chain.__dict__.update(cfg.__dict__)
    chain.sweep = {}  # set before copying: the grid itself can be large
    if deep:
        chain = _copy_tree(chain)
    for key, value in assignment.items():
        parts = key.split(".")
        parent = chain
        for part in parts[:-1]:
            child = getattr(parent, part)
            if not deep:  # copy along the path so ``cfg`` itself is never changed
                child = object.__new__(type(child))
                child.__dict__.update(getattr(parent, part).__dict__)
                setattr(parent, part, child)
            parent = child
        setattr(parent, parts[-1], _copy_tree(value) if deep else value)
    return chain


def _expand(cfg: Config, deep: bool) -> List[tuple[Dict[str, Any], Config]]:
    keys = list(cfg.sweep)
    if not keys:
        return [({}, cfg)]
    raw = [list(cfg.sweep[k]) for k in keys]
    checked = [_checked_values(cfg, k, vals) for k, vals in zip(keys, raw)]
    chains = []
    # The assignment keeps the values as written (chain names and records show them so);
    # the chain config holds them converted to the schema's types.
    for combo in itertools.product(*(range(len(v)) for v in raw)):
        assignment = {k: raw[i][j] for i, (k, j) in enumerate(zip(keys, combo))}
        typed = {k: checked[i][j] for i, (k, j) in enumerate(zip(keys, combo))}
        chains.append((assignment, _with_values(cfg, typed, deep)))
    return chains


def expand_sweep(cfg: Config) -> List[tuple[Dict[str, Any], Config]]:
    """Cartesian product of ``cfg.sweep``: a list of (assignment, chain config).

    Same result as setting each swept key with ``set_dotted`` on a copy of ``cfg`` per chain, but
    each swept value is type-checked once, not once per chain: 10,000 chains take well under a
    second. Every chain config is an independent copy."""
    return _expand(cfg, deep=True)


# ----------------------------------------------------------------------------- validation
def resolved_counts(loop: LoopConfig) -> tuple[int, int]:
    """(n_real, n_synth) per generation t >= 2, after defaults and real_fraction.

    With ``real_fraction`` and ``n_total`` every loop trains on n_total samples per generation: a
    share real_fraction of them real, the rest synthetic, and the fully synthetic loop (no real data)
    n_total synthetic samples, so that the loops of one sweep compare like with like."""
    if loop.real_fraction is not None:
        n_real = int(round(loop.real_fraction * loop.n_total))
        n_synth = loop.n_total - n_real
        if loop.kind == LoopKind.fully_synthetic:
            return 0, loop.n_total
    else:
        n_real = loop.n_real if loop.n_real is not None else loop.n_init
        n_synth = loop.n_synth if loop.n_synth is not None else loop.n_init
    if loop.kind == LoopKind.fully_synthetic:
        n_real = 0
    return n_real, n_synth


def n_synth_at(loop: LoopConfig, gen: int) -> int:
    """Synthetic samples in generation ``gen``'s (>= 2) training set under ``loop.n_synth_schedule``:
    linear runs from n_synth at generation 2 to n_synth_final at the last generation, rounded."""
    _, n_synth = resolved_counts(loop)
    if loop.n_synth_schedule == SynthSchedule.linear and loop.n_synth_final is not None:
        frac = (gen - 2) / max(1, loop.generations - 2)
        n_synth = int(round(n_synth + frac * (loop.n_synth_final - n_synth)))
    return n_synth


def stage_configured(cfg: Config) -> bool:
    """Does a stage (curation, self-correction) run between sampling and training?"""
    return cfg.curate.reward != Reward.none or cfg.correct.kind != CorrectKind.none


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
    chains = [chain for _, chain in _expand(cfg, deep=False)]
    for chain in chains:
        _validate_one(chain)
    if cfg.report.phase.baseline == PhaseBaseline.auto and not any(
            c.loop.kind == LoopKind.fresh_data for c in chains):
        raise ConfigError("report.phase.baseline", "auto adds real-only chains to a fresh-data sweep; "
                                                   "no chain here has loop.kind=fresh_data")


def _positive(key: str, value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")


def _check_finite(obj: Any, prefix: str = "") -> None:
    """NaN and infinity pass every ``<=`` / ``<`` range check, so they are refused first, for every
    float key of the schema (walked generically: a new float key is covered without listing it)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            _check_finite(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")


def _check_sizes(cfg: Config) -> None:
    """Sizes the metrics and the model family need, known from the config alone, so that a run
    that would fail after Ray starts is refused before anything is written."""
    m, d, loop = cfg.metrics, cfg.data, cfg.loop
    if m.n_eval < 2:
        raise ConfigError("metrics.n_eval", f"must be at least 2 (FID needs a covariance), got {m.n_eval}")
    if m.k >= m.n_eval:
        raise ConfigError("metrics.k", f"must be smaller than metrics.n_eval ({m.n_eval}): the k-NN of a "
                                       f"generated sample needs k others, got {m.k}")
    if m.k >= d.n_reference:
        raise ConfigError("metrics.k", f"must be smaller than data.n_reference ({d.n_reference}): the k-NN "
                                       f"radii of the reference set need k others, got {m.k}")
    from mad.models import min_train_samples  # the family says what one fit needs

    need = min_train_samples(cfg.model.family)
    if loop.n_init < need:
        raise ConfigError("loop.n_init", f"model.family={cfg.model.family} needs at least {need} "
                                         f"training samples, got {loop.n_init}")
    if loop.generations > 1:
        n_real, n_synth = resolved_counts(loop)
        if n_real + n_synth < need:
            key = "loop.n_total" if loop.real_fraction is not None else "loop.n_synth"
            raise ConfigError(key, f"later generations train on {n_real + n_synth} samples; "
                                   f"model.family={cfg.model.family} needs at least {need}")
        n_last = n_real + n_synth_at(loop, loop.generations)
        if n_last < need:
            raise ConfigError("loop.n_synth_final", f"the last generation trains on {n_last} samples; "
                                                    f"model.family={cfg.model.family} needs at least {need}")
        if loop.subsample_to is not None and loop.subsample_to < need:
            raise ConfigError("loop.subsample_to", f"model.family={cfg.model.family} needs at least {need} "
                                                   f"training samples, got {loop.subsample_to}")


def _validate_one(cfg: Config) -> None:
    loop, s, d, m = cfg.loop, cfg.sample, cfg.data, cfg.model
    _check_finite(cfg)
    if cfg.seed < 0:
        raise ConfigError("seed", f"must be at least 0 (numpy seeds are non-negative), got {cfg.seed}")
    for key in ("train_cpus", "train_gpus", "sample_cpus", "sample_gpus", "eval_cpus", "eval_gpus"):
        if getattr(cfg.resources, key) < 0:
            raise ConfigError(f"resources.{key}", f"must be at least 0, got {getattr(cfg.resources, key)}")
    if cfg.train.weight_decay < 0:
        raise ConfigError("train.weight_decay", f"must be at least 0, got {cfg.train.weight_decay}")
    _positive("ray.num_cpus", cfg.ray.num_cpus)
    if not (0.0 < s.bias <= 1.0):
        raise ConfigError("sample.bias", f"must be in (0, 1], got {s.bias}")
    for key in ("generations", "n_init", "n_real", "last_k", "n_total"):
        _positive(f"loop.{key}", getattr(loop, key))
    # n_synth = 0: real data only after generation 1 (the real-only baseline of MAD's phase diagram)
    if loop.n_synth is not None and loop.n_synth < 0:
        raise ConfigError("loop.n_synth", f"must be positive, or 0 for real data only, got {loop.n_synth}")
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
    _validate_stages(cfg)
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
    if s.steps > m.num_train_timesteps:
        raise ConfigError("sample.steps", f"must be at most model.num_train_timesteps ({m.num_train_timesteps})")
    _positive("resources.sample_shards", cfg.resources.sample_shards)
    _positive("report.phase.last_k", cfg.report.phase.last_k)
    pb = cfg.report.phase.baseline_bias
    if pb is not None and not (0.0 < pb <= 1.0):
        raise ConfigError("report.phase.baseline_bias", f"must be in (0, 1] or null, got {pb}")
    if cfg.report.tracker == Tracker.mlflow:
        import importlib.util

        missing = [m for m in ("mlflow", "sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError("report.tracker", f"mlflow needs {', '.join(missing)}, not installed here: "
                                                "pip install 'mad[mlflow]' (or report.tracker=none)")
    if cfg.resources.block_size is not None and cfg.resources.block_size < 0:
        raise ConfigError("resources.block_size", f"must be null, 0 (no blocks) or positive, got {cfg.resources.block_size}")
    if cfg.metrics.every < 0:
        raise ConfigError("metrics.every", f"must be 0 (never) or positive, got {cfg.metrics.every}")
    if cfg.artifacts.samples != KeepSamples.all and loop.synth_source != SynthSource.last:
        raise ConfigError("artifacts.samples", f"{cfg.artifacts.samples.value} needs loop.synth_source=last "
                          f"({loop.synth_source.value} reads earlier synthetic sets again)")
    if cfg.artifacts.samples == KeepSamples.none and m.family not in REDRAWABLE_FAMILIES:
        raise ConfigError("artifacts.samples", f"none needs a family whose saved state redraws its samples "
                          f"exactly (gaussian), got {m.family}")
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

    _check_sizes(cfg)

def _validate_stages(cfg: Config) -> None:
    """The loop stages' keys: curation, self-correction, subsampling, the n_synth schedule, fine-tuning."""
    loop, t = cfg.loop, cfg.train
    _positive("loop.subsample_to", loop.subsample_to)
    if loop.n_synth_schedule == SynthSchedule.linear:
        if loop.n_synth_final is None:
            raise ConfigError("loop.n_synth_final", "loop.n_synth_schedule=linear needs loop.n_synth_final "
                                                    "(n_synth at the last generation)")
        if loop.n_synth_final < 0 or (loop.n_synth_final == 0 and loop.kind == LoopKind.fully_synthetic):
            raise ConfigError("loop.n_synth_final", f"must be positive (or 0 for a loop with real data), "
                                                    f"got {loop.n_synth_final}")
    elif loop.n_synth_final is not None:
        raise ConfigError("loop.n_synth_final", "only with loop.n_synth_schedule=linear")
    _positive("train.finetune_steps", t.finetune_steps)
    _positive("train.finetune_lr", t.finetune_lr)
    _positive("curate.k", cfg.curate.k)
    _positive("curate.beta", cfg.curate.beta)
    if cfg.curate.reward == Reward.classifier_confidence and cfg.metrics.features != Features.classifier:
        raise ConfigError("curate.reward", "classifier_confidence scores samples with the metrics' classifier: "
                                           f"needs metrics.features=classifier, got {cfg.metrics.features.value}")
    if not (0.0 <= cfg.correct.strength <= 1.0):
        raise ConfigError("correct.strength", f"must be in [0, 1], got {cfg.correct.strength}")
    _positive("correct.clusters", cfg.correct.clusters)
    if cfg.correct.kind != CorrectKind.none and cfg.correct.clusters > loop.n_init:
        raise ConfigError("correct.clusters", f"k-means of the {loop.n_init} real samples of generation 1 "
                                              f"(loop.n_init) cannot have {cfg.correct.clusters} centres")


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

"""Typed configuration: dataclass schemas, loading, validation.

This is the only module that imports OmegaConf. Everything downstream receives
plain dataclasses (``OmegaConf.to_object``), never a DictConfig.

Precedence: dataclass defaults < YAML file < ``dotted.key=value`` overrides.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the key, before any compute starts.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
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
    uniform = "uniform"  # each label drawn uniformly at random
    real = "real"  # each label drawn from the real pool's class histogram
    exact = "exact"  # exactly n / K labels per class, shuffled (MAD's DDPM code); see mad.models.diffusion


class BandwidthRule(str, Enum):
    scott_std = "scott_std"  # n^(-1/(d+4)) times the data's per-coordinate std averaged over coordinates
    scott = "scott"  # scikit-learn's KernelDensity(bandwidth="scott"): n^(-1/(d+4)), unscaled (Kazdan et al.)


class Features(str, Enum):
    raw = "raw"
    classifier = "classifier"
    inception = "inception"
    auto = "auto"  # classifier for image data with labels, raw otherwise (resolved when the config loads)


class Reward(str, Enum):
    none = "none"
    classifier_confidence = "classifier_confidence"  # the metrics' classifier: max softmax probability


class CorrectKind(str, Enum):
    none = "none"
    kmeans = "kmeans"


class CorrectMode(str, Enum):
    blend = "blend"  # every kept sample moves a fraction gamma toward its nearest centre: x + gamma (c - x)
    mixture = "mixture"  # a share gamma of the kept samples becomes its nearest centre, the rest stay as sampled


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


# ----------------------------------------------------------------------------- per-key rules
class Check:
    """A rule one key's value must pass on its own, whatever the other keys say (relations between
    keys are checked per chain, in ``_validate_one``). Declared on the key's field in the schema
    (``_key(..., check=...)``) and applied once to the base config and once to every value a sweep
    gives the key, before anything is written."""

    def __init__(self, ok: Any, text: str, show: Any = str):
        self.ok, self.text, self.show = ok, text, show

    def problem(self, value: Any) -> Optional[str]:
        if value is None or self.ok(value):
            return None
        return f"{self.text}, got {self.show(value)}"


POSITIVE = Check(lambda v: v > 0, "must be positive")
AT_LEAST_0 = Check(lambda v: v >= 0, "must be at least 0")
UNIT = Check(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
UNIT_LOW_OPEN = Check(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
UNIT_HIGH_OPEN = Check(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")

# Path keys: a component longer than NAME_MAX or a path longer than PATH_MAX cannot be created or
# opened on Linux (ENAMETOOLONG), so it is refused with the rest of the config.
NAME_MAX, PATH_MAX = 255, 4096


class _PathCheck(Check):
    def __init__(self) -> None:
        super().__init__(None, "")

    def problem(self, value: Any) -> Optional[str]:
        return path_problem(value) if value is not None else None


def path_problem(value: Any) -> Optional[str]:
    """Why ``value`` cannot be a path here (one line, without the key), or None."""
    text = os.fsencode(str(value))
    if len(text) > PATH_MAX:
        return f"the path is {len(text)} bytes long; the limit is {PATH_MAX}"
    longest = max(text.split(b"/"), key=len, default=b"")
    if len(longest) > NAME_MAX:
        return (f"a path component is {len(longest)} bytes long ({os.fsdecode(longest[:24])}...); "
                f"the limit is {NAME_MAX}")
    if b"\x00" in text:
        return "a path cannot hold NUL bytes"
    return None


PATH = _PathCheck()


def _key(default: Any = MISSING, *, factory: Any = None, science: bool = True, check: Optional[Check] = None):
    """A schema field with its classification. ``science``: the key can change a record, so resume
    compares it with the run's config.yaml and refuses a change naming the key; ``False``: where
    the run lives and how it is shown or scheduled, which a resume may change. ``check``: the
    rule its value must pass on its own. Every float key must also be finite (checked for all)."""
    meta = {"science": science, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


RUN = dict(science=False)  # a key that never changes a record


# The keys that make up "the sampler" of a family: the keys of ``sample`` it reads besides lambda and the
# batch size. A family not named here reads none (gaussian, gmm, kde, gan); a plug-in family is taken to
# read all three. Every lambda of a sweep samples with one sampler (see ``_check_one_sampler``).
SAMPLER_KEYS = {"diffusion": ("scheduler", "steps", "clip"), "mlp_diffusion": ("scheduler", "steps")}
_NO_SAMPLER = ("gaussian", "gmm", "kde", "gan")


def sampler_keys(family: str) -> tuple:
    name = str(family)
    if name in SAMPLER_KEYS:
        return SAMPLER_KEYS[name]
    return () if name in _NO_SAMPLER else ("scheduler", "steps", "clip")


# ----------------------------------------------------------------------------- schema
@dataclass
class DataConfig:
    name: DataName = DataName.gaussian
    dim: int = _key(2, check=POSITIVE)  # Gaussian: dimension of the real distribution N(0, I_dim)
    root: str = _key("data", check=PATH)  # torchvision download folder, or the image folder for name=folder
    resolution: Optional[int] = _key(None, check=POSITIVE)  # image side in pixels; None keeps the native size
    n_reference: int = _key(500, check=POSITIVE)  # held-out real samples for the metrics; never used for training
    labels: bool = True  # folder: take class labels from sub-folder names
    # toy2d: the std of each of the 25 grid modes (spacing 2). /work/shared/MAD.md does not state MAD's
    # appendix value; sqrt(0.05) is what the grid always used here. A key, so a run can set the paper's.
    mode_std: float = _key(0.05 ** 0.5, check=POSITIVE)


GMM_COVARIANCES = ("full", "tied", "diag", "spherical")


@dataclass
class GMMConfig:
    """``model.gmm``: scikit-learn GaussianMixture; lambda scales the component covariances."""

    components: int = _key(25, check=POSITIVE)
    covariance_type: str = _key("full", check=Check(lambda v: v in GMM_COVARIANCES, "must be one of "
                                                    + ", ".join(GMM_COVARIANCES), repr))  # scikit-learn's names
    max_iter: int = _key(100, check=POSITIVE)
    n_init: int = _key(1, check=POSITIVE)
    reg_covar: float = _key(1e-6, check=POSITIVE)


@dataclass
class KDEConfig:
    """``model.kde``: a Gaussian kernel density estimate (Kazdan et al.); lambda scales the kernel variance."""

    bandwidth: Optional[float] = _key(None, check=POSITIVE)  # kernel std h in data units; None: ``rule``
    rule: BandwidthRule = BandwidthRule.scott_std  # the bandwidth when ``bandwidth`` is None


@dataclass
class MLPDiffusionConfig:
    """``model.mlp_diffusion``: a DDPM on vectors with an MLP denoiser and a sinusoidal time embedding."""

    hidden: int = _key(128, check=POSITIVE)
    layers: int = _key(3, check=POSITIVE)
    time_embed_dim: int = _key(32, check=Check(lambda v: v > 0 and v % 2 == 0,
                                               "must be positive and even (sine and cosine halves)"))
    num_train_timesteps: int = _key(100, check=POSITIVE)
    # Fourier features per coordinate of the input (sharp modes need them)
    input_freqs: int = _key(16, check=AT_LEAST_0)
    # the highest of those frequencies, on standardised data; 0: raw coordinates
    input_scale: float = _key(10.0, check=AT_LEAST_0)


@dataclass
class GANConfig:
    """``model.gan``: a DCGAN on images; lambda is the truncation psi in latent space (z -> psi z)."""

    latent_dim: int = _key(32, check=POSITIVE)
    width: int = _key(32, check=POSITIVE)  # channels of the last generator / first discriminator layer


@dataclass
class ModelConfig:
    # a string, not an enum: any family the registry knows (built-in, registered, or installed
    # through the mad.families entry points); each family reads its own section below
    family: str = Family.gaussian
    estimator: Estimator = Estimator.unbiased  # Gaussian covariance estimator
    # diffusion (diffusers UNet2DModel + DDPMScheduler)
    conditional: bool = True  # class-conditional when the data has labels
    channels: List[int] = _key(factory=lambda: [32, 64], check=Check(
        lambda v: len(v) > 0 and all(c > 0 for c in v), "must be a non-empty list of positive widths"))
    layers_per_block: int = _key(1, check=POSITIVE)
    attention: bool = False
    num_train_timesteps: int = _key(1000, check=POSITIVE)  # T
    label_dropout: float = _key(0.1, check=UNIT_HIGH_OPEN)  # for classifier-free guidance
    gmm: GMMConfig = field(default_factory=GMMConfig)
    kde: KDEConfig = field(default_factory=KDEConfig)
    mlp_diffusion: MLPDiffusionConfig = field(default_factory=MLPDiffusionConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    # a plug-in family's own section: free-form in YAML, turned into its config_class at load time
    options: Any = None


@dataclass
class TrainConfig:
    init: TrainInit = TrainInit.scratch
    steps: int = _key(1000, check=POSITIVE)
    batch_size: int = _key(64, check=POSITIVE)
    lr: float = _key(2e-4, check=POSITIVE)
    weight_decay: float = _key(0.0, check=AT_LEAST_0)
    ema_decay: float = _key(0.999, check=UNIT_HIGH_OPEN)
    num_workers: int = _key(1, check=POSITIVE)  # >1: data-parallel with Ray Train's TorchTrainer
    # init=previous, generations >= 2: fine-tune the previous weights with these (null: steps / lr);
    # ignored with init=scratch (Bertrand et al. 2024)
    finetune_steps: Optional[int] = _key(None, check=POSITIVE)
    finetune_lr: Optional[float] = _key(None, check=POSITIVE)


@dataclass
class SampleConfig:
    bias: float = _key(1.0, check=UNIT_LOW_OPEN)  # MAD's lambda in (0, 1]; 1 = unbiased
    # The sampler of the diffusion families, the same for every lambda (see SAMPLER_KEYS). The default
    # is the best row of BENCHMARKS.md's "Sampler" table (coverage 0.86, FID 34, against 0.46 and 112
    # for the old default, DDIM in 50 steps): ancestral DDPM over the full T, x0 clipped.
    scheduler: Scheduler = Scheduler.ddpm
    steps: Optional[int] = _key(None, check=POSITIVE)  # denoising steps; None: all of the model's T training timesteps
    # clip the predicted x0 to [-1, 1] at every step (diffusers' clip_sample); see BENCHMARKS.md, "Sampler"
    clip: bool = True
    batch_size: int = _key(256, check=POSITIVE)
    class_balance: ClassBalance = ClassBalance.uniform


@dataclass
class LoopConfig:
    kind: LoopKind = LoopKind.fully_synthetic
    generations: int = _key(5, check=POSITIVE)
    n_init: int = _key(1000, check=POSITIVE)  # real samples in generation 1
    # real samples per later generation (None: n_init; ignored by fully_synthetic)
    n_real: Optional[int] = _key(None, check=POSITIVE)
    # synthetic samples per later generation (None: n_init); 0: real data only after generation 1
    # (the real-only baseline of MAD's phase diagram)
    n_synth: Optional[int] = _key(None, check=Check(lambda v: v >= 0, "must be positive, or 0 for real data only"))
    synth_source: SynthSource = SynthSource.last
    last_k: int = _key(1, check=POSITIVE)
    # Alternative to n_real/n_synth: a total per generation and the real share of it (fully synthetic:
    # n_total synthetic samples, so every loop of a sweep trains on as many samples).
    real_fraction: Optional[float] = _key(None, check=UNIT)
    n_total: Optional[int] = _key(None, check=POSITIVE)
    # A finite pool refuses a chain that needs more distinct real samples than it holds; true lets
    # real samples come back (each record's real_seen_frac then says how many were seen before).
    allow_real_reuse: bool = False
    # n_synth per generation: constant, or linear from n_synth (generation 2) to n_synth_final (the last)
    n_synth_schedule: SynthSchedule = SynthSchedule.constant
    n_synth_final: Optional[int] = _key(None, check=Check(lambda v: v >= 0, "must be positive (or 0 for a loop "
                                                                             "with real data)"))
    # generations >= 2: a uniform subset of this size of the assembled real + synthetic set (Kazdan et
    # al.'s accumulate-and-subsample with synth_source=accumulate); null keeps all of it
    subsample_to: Optional[int] = _key(None, check=POSITIVE)


@dataclass
class CurateConfig:
    """``curate``: Ferbach et al. 2024's K-wise choice. Each kept synthetic sample is chosen from k
    candidates with probability proportional to exp(beta * reward), so k x n_synth are sampled."""

    reward: Reward = Reward.none
    k: int = _key(4, check=POSITIVE)
    beta: float = _key(1.0, check=POSITIVE)  # inverse temperature of the choice (the reward's scale)


@dataclass
class CorrectConfig:
    """``correct``: Gillman et al. 2024's self-correction. Each kept synthetic sample moves a fraction
    ``strength`` toward its nearest k-means centre of the chain's generation-1 real set (per class
    when the samples carry labels)."""

    kind: CorrectKind = CorrectKind.none
    strength: float = _key(0.5, check=UNIT)  # gamma
    # blend: x + gamma (c - x) for every sample (gamma = 1 is Gillman et al.'s projection); mixture: as their
    # theory's gamma, a share gamma of the samples (drawn from the stage's stream) replaced by their centre
    mode: CorrectMode = CorrectMode.blend
    clusters: int = _key(10, check=POSITIVE)  # centres per class (or overall, without labels)


@dataclass
class MetricsConfig:
    # auto: classifier for image data with labels, raw for vectors (resolved at load time, see
    # resolve_auto; config.yaml holds the choice)
    features: Features = Features.auto
    n_eval: int = _key(500, check=POSITIVE)  # generated samples scored each generation
    k: int = _key(5, check=POSITIVE)  # k-NN for precision/recall/density/coverage (MAD: 5)
    cache_dir: str = _key(".cache/mad", check=PATH)  # classifier weights and reference statistics
    classifier_epochs: int = _key(30, check=POSITIVE)
    # Sample-based metrics (FID, PRDC, class metrics) every k-th generation and at the last one;
    # 0 = never. Closed-form metrics (the Gaussian's w2) are computed every generation regardless.
    every: int = _key(1, check=Check(lambda v: v >= 0, "must be 0 (never) or positive"))
    # KID (unbiased MMD^2, torch-fidelity's estimator): the mean over this many random subsets (0: no KID)
    kid_subsets: int = _key(100, check=Check(lambda v: v >= 0, "must be 0 (no KID) or positive"))
    kid_subset_size: Optional[int] = _key(None, check=POSITIVE)  # rows per set in a subset; None: half the smaller set


@dataclass
class ResourcesConfig:
    # A task's CPUs set torch's thread count, measured not to move a record (1 and 2 threads give the
    # golden records bit for bit: benchmarks/golden_spread.py), so a resume may change them; its GPUs
    # set the device, which changes the last digits (science); the shards split one sample stream
    # into others (science).
    train_cpus: float = _key(1.0, check=AT_LEAST_0, **RUN)
    train_gpus: float = _key(0.0, check=AT_LEAST_0)
    sample_cpus: float = _key(1.0, check=AT_LEAST_0, **RUN)
    sample_gpus: float = _key(0.0, check=AT_LEAST_0)
    sample_shards: int = _key(1, check=POSITIVE)  # a synthetic set is sampled by this many parallel tasks
    eval_cpus: float = _key(1.0, check=AT_LEAST_0, **RUN)
    eval_gpus: float = _key(0.0, check=AT_LEAST_0)
    max_retries: int = _key(3, check=AT_LEAST_0, **RUN)  # Ray retries of a task whose worker died
    # Compute a generation whose inputs are identical across chains (generation 1 of chains that differ
    # only in loop kind, say) once and share it; the records are the same either way.
    share_identical: bool = _key(True, **RUN)
    # Cheap families (mad/models: CHEAP = True) run blocks of chains in one task: null = sized
    # automatically (chains / CPUs, capped), an int = chains per block, 0 = one task per stage as for
    # every other family. The records are the same either way.
    block_size: Optional[int] = _key(None, check=Check(lambda v: v >= 0, "must be null, 0 (no blocks) or positive"),
                                     **RUN)


@dataclass
class RayConfig:
    address: Optional[str] = _key(None, **RUN)  # None: $RAY_ADDRESS, else a local Ray started on the fly
    num_cpus: Optional[int] = _key(None, check=POSITIVE, **RUN)  # local Ray only
    # local Ray only: its files go to <temp_dir or tmp>/mad-ray-<uid>/<random>, removed at exit
    temp_dir: Optional[str] = _key(None, check=PATH, **RUN)


@dataclass
class ArtifactsConfig:
    keep_models: KeepModels = KeepModels.all
    samples: KeepSamples = KeepSamples.all


@dataclass
class PhaseConfig:
    """The fresh-data phase diagram (phase.csv, MAD section 5); see mad/phase.py."""
    metric: str = _key("auto", **RUN)  # the distance: auto = w2 when recorded (Gaussians), else fid
    last_k: int = _key(10, check=POSITIVE, **RUN)  # the limit averages each chain's last K generations
    # real-only curve at this lambda; None: each cell's own lambda
    baseline_bias: Optional[float] = _key(None, check=Check(lambda v: 0.0 < v <= 1.0, "must be in (0, 1] or null"),
                                          **RUN)
    # auto: real-only chains measure d_real(n) over the whole range n_e can take (science: it adds chains)
    baseline: PhaseBaseline = PhaseBaseline.sweep


@dataclass
class ReportConfig:
    html: bool = _key(True, **RUN)  # rewrite report.html after every generation
    # what a group of seeds draws: mean +- std, or median with the interquartile band
    band: Band = _key(Band.mean_std, **RUN)
    tensorboard: bool = _key(True, **RUN)
    progress: bool = _key(True, **RUN)  # progress bars and the per-generation table on the console
    tracker: Tracker = _key(Tracker.none, **RUN)  # also log every chain to an experiment tracker (see mad/tracking.py)
    tracker_dir: Optional[str] = _key(None, check=PATH, **RUN)  # the tracker's store; null: RUN_DIR/mlflow
    phase: PhaseConfig = field(default_factory=PhaseConfig)


@dataclass
class Config:
    # where the run directory is: a run resumes wherever it is and however its path is spelled
    out: str = _key("runs/default", check=PATH, **RUN)
    seed: int = _key(0, check=Check(lambda v: v >= 0, "must be at least 0 (numpy seeds are non-negative)"))
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


def _leaves(schema: type = Config, prefix: str = "") -> List[tuple[str, Any, type]]:
    """(dotted key, dataclass field, owning class) of every leaf key of the schema."""
    out = []
    for f in fields(schema):
        section = _dataclass_type(schema, f.name)
        if section is not None:
            out.extend(_leaves(section, f"{prefix}{f.name}."))
        else:
            out.append((prefix + f.name, f, schema))
    return out


def is_science(f: Any) -> bool:
    return f.metadata.get("science", True)


def science_keys() -> List[str]:
    """Every leaf key that can change a record: resume compares them (``sweep`` included)."""
    return [k for k, f, _ in _leaves() if is_science(f)]


def run_keys() -> List[str]:
    """Every leaf key that cannot change a record: a resume may change them."""
    return [k for k, f, _ in _leaves() if not is_science(f)]

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


_COUNTS = ("n_real", "n_synth")  # the two ways to size a later generation: counts, or a total and a share
_SHARE = ("real_fraction", "n_total")


def _one_count_form(merged: Any, given: set) -> Optional[str]:
    """A later generation's size is given as ``loop.n_real``/``loop.n_synth`` or as
    ``loop.real_fraction``/``loop.n_total``, not both. When the command line (or a sweep) gives one form
    over a config file that uses the other, the command line wins: the file's form is turned into the
    given one, keeping what the command line does not say (``loop.n_synth=300`` over ``n_total: 400,
    real_fraction: 0.375`` keeps n_real = 150). Returns the note saying so, or None."""
    loop = merged.loop
    said = {k.split(".")[-1] for k in given if k.startswith(("loop.", "sweep.loop."))}
    if said & set(_COUNTS) and not said & set(_SHARE) and loop.real_fraction is not None and loop.n_total is not None:
        n_real = int(round(loop.real_fraction * loop.n_total))
        kept = {"n_real": n_real, "n_synth": loop.n_total - n_real}
        for k in _COUNTS:
            if k not in said and getattr(loop, k) is None:
                setattr(loop, k, kept[k])
        loop.real_fraction = loop.n_total = None
        sizes = ", ".join(f"{k}={getattr(loop, k) if k not in said else 'as given'}" for k in _COUNTS)
        return (f"loop: the command line or the sweep sizes generations by loop.n_real/loop.n_synth, so the "
                f"config's loop.real_fraction/loop.n_total give way ({sizes})")
    if said & set(_SHARE) and not said & set(_COUNTS) and (loop.n_real is not None or loop.n_synth is not None):
        loop.n_real = loop.n_synth = None
        return "loop: the command line or the sweep sizes generations by loop.real_fraction/loop.n_total, so the " \
               "config's loop.n_real/loop.n_synth give way"
    return None


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
                parsed = load_yaml(value, key)
                if not isinstance(parsed, dict):
                    raise ConfigError(key, "takes a mapping, e.g. sweep={} or sweep={seed: [0, 1]}")
                merged.sweep = parsed
                continue
            if key.startswith("sweep."):
                # sweep keys are themselves dotted: sweep.loop.kind=[a,b] sweeps "loop.kind"
                parsed = load_yaml(value, key)
                if not isinstance(parsed, list):
                    raise ConfigError(key, "a sweep takes a list of values, e.g. [1,2]")
                merged.sweep[key[len("sweep."):]] = parsed
                continue
            _check_key_exists(merged, key)
            try:
                load_yaml(value, key)  # bounded before OmegaConf parses it (malformed: OmegaConf says so)
            except yaml.YAMLError:
                pass
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([f"{key}={value}"]))
        count_note = _one_count_form(merged, {i.split("=", 1)[0] for i in overrides or []} | {
            f"sweep.{k}" for k in (merged.sweep or {})})
        cfg: Config = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as err:  # omegaconf raises several types; all become one line
        raise _convert_error(err) from None
    cfg.model.options = family_options(cfg.model)
    notes = []
    if not AUTO_INPUTS & set(cfg.sweep):
        note = resolve_features(cfg)
    elif cfg.metrics.features == Features.auto:
        note = "metrics.features: auto, chosen per chain from its data (the sweep sets " + \
               ", ".join(sorted(AUTO_INPUTS & set(cfg.sweep))) + ")"
    else:
        note = None
    if note:
        notes.append(note)
    if count_note:
        notes.append(count_note)
    validate(cfg)
    _set_unresolved(cfg, unresolved)
    object.__setattr__(cfg, _NOTES_ATTR, notes)
    return cfg


AUTO_INPUTS = {"data.name", "data.labels", "metrics.features"}  # the keys resolve_features reads
_NOTES_ATTR = "_notes"


def config_notes(cfg: Config) -> List[str]:
    """The lines that say what the loader chose for the user (metrics.features=auto), to print."""
    return list(getattr(cfg, _NOTES_ATTR, []))


MAX_YAML_NODES = 10_000  # values a YAML document may expand to, aliases counted as often as used


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` of ``text`` that first counts the values the document expands to (an
    alias counts again wherever it is used) and refuses more than MAX_YAML_NODES, naming ``where``:
    a few hundred bytes of nested aliases (a "billion laughs") would otherwise take minutes and
    gigabytes. The count stops at the limit, so a refusal takes milliseconds."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count, stack = 0, [node]
        while stack:
            n = stack.pop()
            count += 1
            if count > MAX_YAML_NODES:
                raise ConfigError(where, f"the YAML expands to more than {MAX_YAML_NODES:,} values (nested "
                                         "aliases?); refused")
            if isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    stack.append(k)
                    stack.append(v)
            elif isinstance(n, yaml.SequenceNode):
                stack.extend(n.value)
        return loader.construct_document(node)
    finally:
        loader.dispose()


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
        raw = load_yaml(text, str(path))
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
    """The keys that can change a record (``science`` in the schema, see ``_key``): what resume
    compares with the run's config.yaml."""
    return _science_only(_apply_unresolved(config_to_dict(cfg), cfg), Config)


def _science_only(d: Dict[str, Any], schema: Any) -> Dict[str, Any]:
    """``d`` without the keys the schema classifies as not science; a key the schema does not know
    (a stored config.yaml from another version) is kept, so that it is compared, not ignored."""
    names = {f.name: f for f in fields(schema)}
    out: Dict[str, Any] = {}
    for key, value in d.items():
        f = names.get(key)
        if f is None:
            out[key] = value
            continue
        section = _dataclass_type(schema, key)
        if section is not None and isinstance(value, dict):
            kept = _science_only(value, section)
            if kept or any(is_science(g) for g in fields(section)):
                out[key] = kept
        elif is_science(f):
            out[key] = value
    return out


def science_of_yaml(text: str) -> Dict[str, Any]:
    """``science_dict`` of a stored config.yaml (as the driver wrote it), for the resume check."""
    d = load_yaml(text, "config.yaml") or {}
    if not isinstance(d, dict):
        return d
    d = _science_only(d, Config)
    # a section added to the schema after the run was written (model.gmm, ...) takes its defaults,
    # which reproduce what the run did, so such a run still resumes
    # (and so do keys added later: curate, correct, loop.subsample_to, train.finetune_steps, ...)
    _fill_defaults(d, science_dict(Config()))
    return d


def science_diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """The science keys that differ, one ``key: OLD in the run, NEW now`` each, dotted and sorted."""
    a, b = _flat(old), _flat(new)
    absent = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, absent), b.get(key, absent)
        if x != y:
            lines.append(f"{key}: {_show(x, absent)} in the run, {_show(y, absent)} now")
    return lines


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _show(value: Any, absent: Any) -> str:
    import json

    if value is absent:
        return "(absent)"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


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
    resolve_features(chain)  # metrics.features=auto, when the sweep leaves it to each chain's data
    return chain


def _expand(cfg: Config, deep: bool, checked: Optional[Dict[str, List[Any]]] = None
            ) -> List[tuple[Dict[str, Any], Config]]:
    keys = list(cfg.sweep)
    if not keys:
        return [({}, cfg)]
    raw = [list(cfg.sweep[k]) for k in keys]
    checked = [checked[k] if checked is not None else _checked_values(cfg, k, vals) for k, vals in zip(keys, raw)]
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
    """Every key's own rule (``Check`` in the schema, and finiteness of every float) once for the
    base config, swept keys included, and once for every value a sweep gives a key; duplicate sweep
    values; then the relations between keys for every chain. The same rules whether a value is
    swept or not, all before anything is written."""
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
    check_keys(cfg)
    checked: Dict[str, List[Any]] = {}
    for key, vals in cfg.sweep.items():
        typed = _checked_values(cfg, key, list(vals))
        f = _schema_field(key)
        for value in typed:
            _check_leaf(f"sweep.{key}", f, value)
        _refuse_duplicates(key, list(vals), typed)
        checked[key] = typed
    chains = [chain for _, chain in _expand(cfg, deep=False, checked=checked)]
    for chain in chains:
        _validate_one(chain)
    if cfg.report.phase.baseline == PhaseBaseline.auto and not any(
            c.loop.kind == LoopKind.fresh_data for c in chains):
        raise ConfigError("report.phase.baseline", "auto adds real-only chains to a fresh-data sweep; "
                                                   "no chain here has loop.kind=fresh_data")
    _check_one_sampler(chains)
    _check_phase_metric_every(chains)


def _fmt_values(values: Any) -> str:
    return ", ".join(str(v.value if isinstance(v, Enum) else v) for v in values)


def _check_one_sampler(chains: List[Config]) -> None:
    """Every lambda of a sweep samples with the same sampler: a sweep whose chains differ in lambda and
    in the sampler (``SAMPLER_KEYS``) would measure the two together, so it is refused. Chains of
    different families are compared within their family."""
    by_family: Dict[str, List[Config]] = {}
    for chain in chains:
        by_family.setdefault(str(chain.model.family), []).append(chain)
    for family, group in by_family.items():
        keys = sampler_keys(family)
        biases = list(dict.fromkeys(c.sample.bias for c in group))
        if len(biases) < 2 or not keys:
            continue
        varying = []
        for key in keys:
            values = list(dict.fromkeys(getattr(c.sample, key) for c in group))
            if len(values) > 1:
                varying.append(f"sample.{key}: {_fmt_values(values)}")
        if varying:
            raise ConfigError("sweep", f"the chains' lambda (sample.bias: {_fmt_values(biases)}) and their sampler "
                                       f"({'; '.join(varying)}) both vary, so lambda's effect would include the "
                                       f"sampler's: give every lambda one sampler (sweep the sampler in its own run)")


# Record keys computed every generation from the fitted state whatever metrics.every says (the Gaussian
# family's closed form, kde/gmm's held-out nll); every other metric is sample-based, recorded every metrics.every-th one.
CLOSED_FORM_METRICS = frozenset({"w2", "w2_fit", "trace_ratio", "mean_shift", "logdet_ratio", "logdet_ratio_per_dim",
                                 "nll"})  # nll: kde and gmm score the held-out points every generation too


def phase_metric(cfg: Config) -> str:
    """The metric the phase diagram reads for this chain: ``report.phase.metric``, where ``auto`` is w2
    (recorded for the Gaussian family on Gaussian data) and fid otherwise, as ``mad.phase.pick_metric``."""
    metric = cfg.report.phase.metric
    if metric != "auto":
        return metric
    return "w2" if str(cfg.model.family) == Family.gaussian and cfg.data.name == DataName.gaussian else "fid"


def _check_phase_metric_every(chains: List[Config]) -> None:
    """The phase diagram drops a fresh-data chain with a generation that lacks its metric, so a sample-based
    phase metric (fid) with metrics.every > 1 would drop every chain: refused. The diagram is drawn when a
    fresh-data sweep holds real-only chains (n_synth = 0); without them this check has nothing to say."""
    fresh = [c for c in chains if c.loop.kind == LoopKind.fresh_data]
    if not any(resolved_counts(c.loop)[1] == 0 for c in fresh):
        return
    for c in fresh:
        metric = phase_metric(c)
        if c.metrics.every > 1 and metric not in CLOSED_FORM_METRICS:
            raise ConfigError("metrics.every", f"is {c.metrics.every}, but the phase diagram's metric "
                                               f"(report.phase.metric={c.report.phase.metric}: {metric}) is recorded "
                                               f"only every metrics.every-th generation, and a chain missing it at "
                                               f"any generation is left out of phase.csv: set metrics.every=1")


def check_sampler(cfg: Config, conditional: bool) -> None:
    """lambda < 1 of an unconditional diffusion model is the deterministic DDIM started from N(0, lambda I);
    the ancestral sampler has no such bias (its per-step noise washes the start's scale out), so it is
    refused rather than swapped for DDIM behind the user's back."""
    s = cfg.sample
    if conditional or s.bias >= 1.0 or s.scheduler != Scheduler.ddpm:
        return
    if str(cfg.model.family) not in (Family.diffusion, Family.mlp_diffusion):
        return
    raise ConfigError("sample.scheduler", f"ddpm with sample.bias={s.bias} on an unconditional {cfg.model.family} "
                                          "model: its lambda < 1 is defined for the deterministic sampler started "
                                          "from N(0, lambda I) only; use sample.scheduler=ddim (for every lambda)")


def conditional_at_load(cfg: Config) -> bool:
    """Whether a diffusion model samples class-conditionally, as far as the config tells (a folder with
    data.labels=true is labelled only if its images sit in sub-folders: the driver checks that again)."""
    return (str(cfg.model.family) == Family.diffusion and bool(cfg.model.conditional)
            and (cfg.data.name != DataName.folder or bool(cfg.data.labels)))


def sampling_steps(model: ModelConfig, sample: SampleConfig) -> int:
    """The denoising steps a diffusion family takes: ``sample.steps``, or all of its T when None."""
    if str(model.family) == Family.mlp_diffusion:
        T = int(model.mlp_diffusion.num_train_timesteps)
    else:
        T = int(model.num_train_timesteps)
    return T if sample.steps is None else min(int(sample.steps), T)


def check_keys(obj: Any, prefix: str = "") -> None:
    """Every key's own rule, walking the schema (a new key is covered by declaring its check)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            check_keys(value, f"{prefix}{f.name}.")
        else:
            _check_leaf(prefix + f.name, f, value)


def _check_leaf(key: str, f: Any, value: Any) -> None:
    """``value`` of the key ``key`` (schema field ``f``, None for a plug-in family's option) alone."""
    if is_dataclass(value) and not isinstance(value, type):  # a whole section set by a sweep
        check_keys(value, key + ".")
        return
    # NaN and infinity pass every ``<=`` / ``<`` range check, so they are refused first
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    check = f.metadata.get("check") if f is not None else None
    problem = check.problem(value) if check is not None else None
    if problem:
        raise ConfigError(key, problem)


def _schema_field(dotted: str) -> Any:
    """The schema's field for ``dotted`` (None below model.options, a plug-in family's own keys)."""
    schema: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not is_dataclass(schema):
            return None
        f = next((f for f in fields(schema) if f.name == part), None)
        if f is None:
            return None
        if i == len(parts) - 1:
            return f
        schema = _dataclass_type(schema, part)
    return None


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _refuse_duplicates(key: str, raw: List[Any], typed: List[Any]) -> None:
    """Two equal values of one swept key make two identical chains (a std of 0 over "2 seeds")."""
    seen: Dict[Any, Any] = {}
    for r, v in zip(raw, typed):
        h = _hashable(v)
        if h in seen:
            first = seen[h]
            what = repr(r) if repr(first) == repr(r) else f"{first!r} and {r!r} (the same value)"
            raise ConfigError(f"sweep.{key}", f"lists {what} twice: the two chains would be identical; "
                                              "give each value once")
        seen[h] = r


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
    if m.kid_subsets < 0:
        raise ConfigError("metrics.kid_subsets", f"must be 0 (no KID) or positive, got {m.kid_subsets}")
    if m.kid_subset_size is not None and not 2 <= m.kid_subset_size <= min(m.n_eval, d.n_reference):
        raise ConfigError("metrics.kid_subset_size", f"must be null or in [2, {min(m.n_eval, d.n_reference)}] "
                                                     f"(metrics.n_eval and data.n_reference), got {m.kid_subset_size}")
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
    """The relations between keys of one chain (each key's own rule is checked by ``validate``)."""
    loop, s, d, m = cfg.loop, cfg.sample, cfg.data, cfg.model
    if cfg.seed >= 2 ** 32:
        raise ConfigError("seed", f"must be below 2**32 = {2 ** 32}: a larger seed spills into a second 32-bit word of "
                                  f"numpy's SeedSequence, where its streams equal another seed's, got {cfg.seed}")
    if loop.real_fraction is not None or loop.n_total is not None:
        if loop.n_real is not None or loop.n_synth is not None:
            raise ConfigError("loop.real_fraction", "give either loop.real_fraction with loop.n_total, or loop.n_real/loop.n_synth, not both")
        if loop.real_fraction is None or loop.n_total is None:
            raise ConfigError("loop.real_fraction", "loop.real_fraction and loop.n_total go together")
    n_real, n_synth = resolved_counts(loop)
    if loop.kind != LoopKind.fully_synthetic and loop.real_fraction is None and n_real <= 0:
        raise ConfigError("loop.n_real", f"must be positive, got {n_real}")
    if loop.kind == LoopKind.fully_synthetic and n_synth <= 0:
        raise ConfigError("loop.n_synth", "the fully synthetic loop needs synthetic samples")
    _validate_stages(cfg)
    if cfg.train.num_workers > cfg.train.batch_size:
        raise ConfigError("train.num_workers", f"{cfg.train.num_workers} workers need train.batch_size >= "
                          f"{cfg.train.num_workers} (every worker needs a sample per step)")
    family = _family(m.family)
    if cfg.train.num_workers > 1 and not family.supports_data_parallel:
        raise ConfigError("train.num_workers", f"model.family={m.family} does not support data-parallel training")
    if s.steps is not None and s.steps > m.num_train_timesteps:
        raise ConfigError("sample.steps", f"must be at most model.num_train_timesteps ({m.num_train_timesteps})")
    check_sampler(cfg, conditional_at_load(cfg))
    if s.class_balance == ClassBalance.exact and (str(m.family) in _NO_SAMPLER + ("mlp_diffusion",)
                                                  or (str(m.family) == Family.diffusion and not conditional_at_load(cfg))):
        raise ConfigError("sample.class_balance", f"exact balances the labels a class-conditional diffusion model "
                                                  f"samples with; model.family={m.family} here samples no labels")
    if cfg.report.tracker == Tracker.mlflow:
        import importlib.util

        missing = [m for m in ("mlflow", "sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError("report.tracker", f"mlflow needs {', '.join(missing)}, not installed here: "
                                                "pip install 'mad[mlflow]' (or report.tracker=none)")
    if cfg.artifacts.samples != KeepSamples.all and loop.synth_source != SynthSource.last:
        raise ConfigError("artifacts.samples", f"{cfg.artifacts.samples.value} needs loop.synth_source=last "
                          f"({loop.synth_source.value} reads earlier synthetic sets again)")
    if cfg.artifacts.samples == KeepSamples.none and m.family not in REDRAWABLE_FAMILIES:
        raise ConfigError("artifacts.samples", f"none needs a family whose saved state redraws its samples "
                          f"exactly (gaussian), got {m.family}")
    # family / data compatibility
    kind = data_kind(d.name)
    vector_data = kind == "vectors"
    if kind not in family.data_kinds:
        from mad.models.registry import builtin_names, get_family

        fits = [n for n in builtin_names() if kind in get_family(n).data_kinds]
        raise ConfigError("model.family", f"{m.family} takes {' or '.join(family.data_kinds)} data, got "
                                          f"data.name={d.name.value} ({kind}); for {kind}: {', '.join(fits)}")
    if cfg.metrics.features not in (Features.raw, Features.auto) and vector_data:
        raise ConfigError("metrics.features", f"{cfg.metrics.features.value} needs image data; use raw or auto "
                                              f"for {d.name.value}")
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
    """The loop stages' relations: curation, self-correction, the n_synth schedule."""
    loop = cfg.loop
    if loop.n_synth_schedule == SynthSchedule.linear:
        if loop.n_synth_final is None:
            raise ConfigError("loop.n_synth_final", "loop.n_synth_schedule=linear needs loop.n_synth_final "
                                                    "(n_synth at the last generation)")
        if loop.n_synth_final == 0 and loop.kind == LoopKind.fully_synthetic:
            raise ConfigError("loop.n_synth_final", f"must be positive (or 0 for a loop with real data), "
                                                    f"got {loop.n_synth_final}")
    elif loop.n_synth_final is not None:
        raise ConfigError("loop.n_synth_final", "only with loop.n_synth_schedule=linear")
    if cfg.curate.reward == Reward.classifier_confidence and cfg.metrics.features != Features.classifier:
        raise ConfigError("curate.reward", "classifier_confidence scores samples with the metrics' classifier: "
                                           f"needs metrics.features=classifier, got {cfg.metrics.features.value}")
    if cfg.correct.kind != CorrectKind.none and cfg.correct.clusters > loop.n_init:
        raise ConfigError("correct.clusters", f"k-means of the {loop.n_init} real samples of generation 1 "
                                              f"(loop.n_init) cannot have {cfg.correct.clusters} centres")


VECTOR_DATA = (DataName.gaussian, DataName.toy2d)


def data_kind(name: DataName) -> str:
    """The data kind of a data set, as families declare what they accept: "vectors" or "images"."""
    return "vectors" if name in VECTOR_DATA else "images"


def resolve_features(cfg: Config) -> Optional[str]:
    """``metrics.features=auto`` made a choice: the LeNet classifier for image data (trained on the
    real pool's labels), raw features for vectors and for an image folder read without labels.
    Replaces cfg.metrics (never changes it in place: a chain may share it with the base config) and
    returns the one line that says what was chosen, or None when nothing was auto."""
    if cfg.metrics.features != Features.auto:
        return None
    d = cfg.data
    if data_kind(d.name) == "vectors":
        choice, why = Features.raw, f"data.name={d.name.value} is vectors"
    elif d.name == DataName.folder and not d.labels:
        choice, why = Features.raw, "data.labels=false: the classifier needs class labels"
    else:
        choice, why = Features.classifier, f"data.name={d.name.value} is images: the LeNet classifier"
    cfg.metrics = dataclasses.replace(cfg.metrics, features=choice)
    return f"metrics.features: auto -> {choice.value} ({why})"


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


"""The pure work of a generation: train, sample a shard, evaluate.

Each function depends only on its arguments (data, a narrow config, a seed), so Ray may
retry it anywhere and get the same result. No Ray import here: ``mad.remote`` wraps these.
The model is a ``family`` object (``mad.models.protocol.ModelFamily``, resolved by the driver
from ``model.family``); nothing here names a family or a data set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from mad import seeding
from mad.config import (CorrectConfig, CorrectKind, CurateConfig, DataName, Features, MetricsConfig, ModelConfig, Reward,
                        SampleConfig, TrainConfig, TrainInit)
from mad.divergence import check_samples, check_state
from mad.data import RealPool
from mad.models.protocol import ModelFamily, RealDistribution

Shard = tuple  # (x, y) of one sampled shard


# Typed jobs: what determines a stage's result, apart from the large inputs (the real pool, model
# weights, sample shards) that travel as separate arguments so Ray can pass them as object refs.


@dataclass(frozen=True)
class TrainJob:
    """One generation's training: the chain's seed, the loop's manifest (which real and synthetic parts)
    and the family with its config. ``shard_counts[i]`` is how many shards ``synth_gens[i]`` came in."""

    seed: int
    gen: int
    manifest: dict
    synth_gens: tuple[int, ...]
    shard_counts: tuple[int, ...]
    family: ModelFamily
    model: ModelConfig
    train: TrainConfig
    progress: bool = False


@dataclass(frozen=True)
class SampleJob:
    """One shard of a generation's synthetic set (``shard`` seeds it; ``n`` samples)."""

    seed: int
    gen: int
    shard: int
    n: int
    pool_shape: tuple
    num_classes: int
    class_probs: Optional[np.ndarray]
    family: ModelFamily
    model: ModelConfig
    sample: SampleConfig
    progress: bool = False


@dataclass(frozen=True)
class EvalJob:
    """The metrics of a generation: sample-based ones on its first ``n_eval`` samples (when
    ``score_samples``), closed-form ones when the real distribution ``real`` is known."""

    n_eval: int
    metrics: MetricsConfig
    family: ModelFamily
    bias: float
    real: Optional[RealDistribution] = None
    score_samples: bool = True


@dataclass(frozen=True)
class StageJob:
    """The stage between a generation's sampling and the later generations' training (curation, then
    self-correction; see ``loops.stages``): it keeps ``n_keep`` of the sampled candidates."""

    seed: int
    gen: int
    n_keep: int
    n_init: int  # the chain's generation-1 real set (positions [0, n_init)): the self-correction centres
    curate: CurateConfig
    correct: CorrectConfig


def split_shards(flat_shards: Sequence[Any], shard_counts: Sequence[int]) -> list:
    """Flat shards (as Ray passes resolved refs) back into one list per synthetic generation."""
    shards, i = [], 0
    for count in shard_counts:
        shards.append(tuple(flat_shards[i:i + count]))
        i += count
    return shards


def concat_shards(shards: Sequence[Shard]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    xs = [s[0] for s in shards]
    ys = [s[1] for s in shards]
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = None if any(v is None for v in ys) else (np.concatenate(ys) if len(ys) > 1 else ys[0])
    return x, y


def assemble_training_set(pool: RealPool, seed: int, manifest: dict, synth_gens: Sequence[int],
                          synth_shards: Sequence[Sequence[Shard]]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Materialize a manifest (see ``loops.base``) into (x, y). Only this task copies data."""
    xs, ys = [], []
    if manifest["real"]:
        real = manifest["real"]
        x, y = pool.draw(seed, real["stream"], real["n"], real.get("start", 0))
        xs.append(x)
        ys.append(y)
    by_gen = dict(zip(synth_gens, synth_shards))
    for part in manifest["synth"]:
        x, y = concat_shards(by_gen[part["gen"]])
        x, y = x[:part["n"]], (None if y is None else y[:part["n"]])
        if part["indices"]:
            idx = np.asarray(part["indices"])
            x, y = x[idx], (None if y is None else y[idx])
        xs.append(x)
        ys.append(y)
    x = np.concatenate([np.asarray(v, dtype=xs[0].dtype) for v in xs])
    y = None if any(v is None for v in ys) else np.concatenate(ys).astype(np.int64)
    if manifest.get("subsample"):  # loop.subsample_to: the kept positions of the assembled set
        idx = np.asarray(manifest["subsample"])
        x, y = x[idx], (None if y is None else y[idx])
    return x, y


def train_config_at(train: TrainConfig, gen: int) -> TrainConfig:
    """Generation ``gen``'s training config: with ``init=previous`` a generation >= 2 fine-tunes the
    previous weights with ``finetune_steps`` / ``finetune_lr`` (when set) instead of steps / lr."""
    if train.init != TrainInit.previous or gen == 1:
        return train
    return replace(train, steps=train.finetune_steps or train.steps, lr=train.finetune_lr or train.lr)


def training_inputs(job: TrainJob, pool: RealPool, synth_shards: Sequence[Sequence[Shard]]
                    ) -> tuple[np.ndarray, Optional[np.ndarray], int]:
    """(x, y, training seed) of a generation; the single-process and the DDP paths both use it."""
    x, y = assemble_training_set(pool, job.seed, job.manifest, job.synth_gens, synth_shards)
    if not job.model.conditional:
        y = None
    return x, y, seeding.derive_seed(job.seed, job.gen, seeding.TRAIN)


def train_generation(job: TrainJob, pool: RealPool, synth_shards: Sequence[Sequence[Shard]],
                     init_state: Optional[dict] = None, device: Optional[str] = None) -> dict:
    x, y, train_seed = training_inputs(job, pool, synth_shards)
    state = job.family.train(x, y, pool.num_classes, job.model, job.train, train_seed,
                             init_state=init_state, progress=job.progress, device=device)
    check_state(state, job.family)  # every family: NaN weights must not be sampled, scored and trained on
    return state


def shard_sizes(n: int, num_shards: int) -> list[int]:
    num_shards = max(1, min(num_shards, n))
    base, extra = divmod(n, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


def sample_shard(job: SampleJob, state: dict, device: Optional[str] = None) -> Shard:
    num_classes = job.num_classes if job.model.conditional else 0
    x, y = job.family.sample(
        state, job.n, num_classes, job.pool_shape, job.model, job.sample,
        seeding.derive_seed(job.seed, job.gen, seeding.SAMPLE, job.shard),
        class_probs=job.class_probs, progress=job.progress, device=device,
    )
    check_samples(x, job.family)
    return x, y


def classifier_confidence(reference: Any, x: np.ndarray, y: Optional[np.ndarray]) -> np.ndarray:
    """Per sample: the max softmax probability of the reward's own LeNet (another seed, half the pool),
    not the metrics' classifier, so curation does not optimise the judge (``mean_confidence``, FID)."""
    from mad.metrics.evaluate import reward_confidence

    return reward_confidence(reference, x)


# curate.reward -> per-sample reward (reference, x, y) -> (n,); another reward is one more entry
REWARDS: dict[Reward, Callable[[Any, np.ndarray, Optional[np.ndarray]], np.ndarray]] = {
    Reward.classifier_confidence: classifier_confidence,
}

_CENTRES: dict[tuple, tuple] = {}  # per process: the k-means centres of a chain's real set, computed once


def correction_centres(pool: RealPool, seed: int, n_init: int, clusters: int, per_class: bool) -> tuple:
    """k-means centres of the chain's generation-1 real set (per class when ``per_class``), cached per process."""
    from loops import FIXED_STREAM
    from loops.stages import kmeans_centres

    x, y = pool.draw(seed, FIXED_STREAM, n_init, 0)
    data = np.ascontiguousarray(x).tobytes() + (b"" if y is None else np.ascontiguousarray(y).tobytes())
    key = (hashlib.sha256(data).hexdigest(), seed, clusters, per_class)
    if key not in _CENTRES:
        if len(_CENTRES) >= 16:
            _CENTRES.pop(next(iter(_CENTRES)))
        _CENTRES[key] = kmeans_centres(x, y if per_class else None, clusters,
                                       seeding.derive_seed(seed, seeding.STAGE))
    return _CENTRES[key]


def apply_stage(job: StageJob, pool: RealPool, reference: Any, shards: Sequence[Shard]
                ) -> tuple[Shard, dict[str, int]]:
    """The synthetic set later generations train on, from a generation's sampled shards, and the counts
    for its record (stage_produced, stage_kept, stage_changed). Curation takes the first
    ``n_keep * curate.k`` samples as candidates, in groups of k; without it the first ``n_keep``
    samples go on (to self-correction). The metrics score the model's own samples, not this set."""
    from loops import stages

    x, y = concat_shards(shards)
    rng = seeding.rng(job.seed, job.gen, seeding.STAGE)
    produced = job.n_keep
    if job.curate.reward != Reward.none:
        produced = job.n_keep * job.curate.k
        x, y = x[:produced], None if y is None else y[:produced]
        if reference is None:
            raise ValueError(f"curate.reward={job.curate.reward.value} needs the metrics' reference")
        rewards = job.curate.beta * np.asarray(REWARDS[job.curate.reward](reference, x, y), dtype=np.float64)
        res = stages.curate(x, y, rewards, job.curate.k, rng)
        x, y = res.x, res.y
    else:
        x, y = x[:produced], None if y is None else y[:produced]
    changed = 0
    if job.correct.kind == CorrectKind.kmeans:
        per_class = y is not None and pool.y is not None
        centres, labels = correction_centres(pool, job.seed, job.n_init, job.correct.clusters, per_class)
        res = stages.correct(x, y, centres, labels, job.correct.strength, job.correct.mode.value, rng)
        x, y, changed = res.x, res.y, res.changed
    if len(x) != job.n_keep:
        raise ValueError(f"the stage kept {len(x)} samples, expected {job.n_keep}")
    return (x, y), stages.StageResult(x, y, produced, len(x), changed).counts()


def evaluate_generation(job: EvalJob, reference: Any, state: dict, shards: Sequence[Shard],
                        device: Optional[str] = None) -> dict[str, Optional[float]]:
    """Sample-based metrics against the reference set (``job.score_samples=False``, see ``metrics.every``:
    none); with ``job.real`` known in closed form, the family's closed-form metrics (if it has any) and,
    for a mixture, the mode metrics of its samples; for a family with ``heldout_metrics`` (kde, gmm) and
    vector data, those of the reference points (``nll``)."""
    from mad.metrics import evaluate

    out = {}
    x, y = concat_shards(shards)
    x, y = x[:job.n_eval], None if y is None else y[:job.n_eval]
    if job.score_samples:
        out.update(evaluate(reference, x, y, job.metrics))
    real = job.real
    if real is not None:
        closed_form = getattr(job.family, "closed_form_metrics", None)
        if closed_form is not None:
            out.update(closed_form(state, job.bias, real))
        if not real.is_gaussian and job.score_samples:
            from mad.metrics.modes import mode_metrics

            out.update(mode_metrics(x, real))
    # a family with a likelihood (kde, gmm): held-out real points scored every generation, like closed forms
    heldout = getattr(job.family, "heldout_metrics", None)
    points = getattr(reference, "heldout", None)
    if heldout is not None and points is not None:
        out.update(heldout(state, job.bias, points))
    # None stays None (JSON null): a value that does not exist, e.g. the log det of a singular fit
    return {k: None if v is None else v if isinstance(v, list) else float(v) for k, v in out.items()}


FLOOR_KEY = 1  # seeding key of the floor's real draw, under seeding.EVAL (nonzero: see numpy's trailing zeros)


def floor_sample(pool: RealPool, seed: int, n: int) -> Optional[np.ndarray]:
    """``n`` real samples for the FID floor: from the training pool, which the reference set is held out
    of (so the two are disjoint), drawn with their own seed (no chain's draw is keyed like this); None
    when a finite pool holds fewer than ``n``."""
    from mad.data import vectors

    seq = seeding.seed_sequence(seed, seeding.EVAL, FLOOR_KEY)
    if pool.x is not None:
        if len(pool.x) < n:
            return None
        return pool.x[np.random.default_rng(seq).choice(len(pool.x), n, replace=False)]
    if pool.name == DataName.toy2d.value:
        return vectors.draw_toy2d(n, seq)
    return vectors.draw_gaussian(pool.mean, pool.cov, n, np.random.default_rng(seq))


def prepare_reference(ref_x, ref_y, pool: RealPool, metrics: MetricsConfig, classifier_state: Optional[dict] = None,
                      seed: int = 0, reward: bool = False, reward_state: Optional[dict] = None):
    """The metrics' reference, with the run's FID floor (``metrics.n_eval`` real samples of the pool
    scored against the reference set, drawn from the run's ``seed``) and, with ``reward``, the curation
    reward's own network; a task writes nothing (the driver caches newly trained classifiers)."""
    from mad.metrics import prepare_reference as _prepare

    return _prepare(ref_x, ref_y, pool.x, pool.y, metrics, pool.num_classes or None,
                    classifier_state=classifier_state, use_cache=False,
                    floor_x=floor_sample(pool, seed, int(metrics.n_eval)), reward=reward, reward_state=reward_state)


def cached_classifier(pool: RealPool, metrics: MetricsConfig, reward: bool = False) -> Optional[dict]:
    """The driver's look-up of the classifier cache for this pool (None: not cached, or not needed);
    ``reward``: the curation reward's network instead of the metrics' one."""
    if metrics.features != Features.classifier or pool.x is None or pool.y is None:
        return None
    from mad.metrics.features import cached_classifier_state, reward_recipe

    x, y, seed, epochs = pool.x, pool.y, 0, metrics.classifier_epochs
    if reward:
        x, y, seed, epochs = reward_recipe(pool.x, pool.y, epochs)
    return cached_classifier_state(x, y, pool.num_classes or None, metrics.cache_dir, epochs=epochs, seed=seed)


def run_block(chains: list, pool: RealPool, reference, real: Optional[RealDistribution],
              n_gens: int, keep_samples: str, keep_models: str, device: Optional[str] = None) -> tuple[list, list]:
    """A block of chains of a cheap family through ``n_gens`` generations in one task (see ``mad.blocks``)."""
    from mad import blocks

    return blocks.run_block(chains, pool, reference, real, n_gens, keep_samples, keep_models, device)

"""Chain blocks: one task runs a block of chains of a cheap family through their generations in-process.

A Gaussian generation costs milliseconds, while three Ray tasks per chain and generation cost tens of
milliseconds of scheduling and copying. For a family that declares itself cheap (``cheap = True`` in its
module under ``mad/models``), the driver hands a block of chains to one task, which advances them
generation by generation for a *slice* of generations and returns every generation's result. The driver
(the only writer) persists the slice and submits the next one with the block's carried state, so a
killed block resumes from the last generation written.

Every generation goes through the same functions as the one-task-per-stage path: the loop policy
(``loops.next_training_set``), ``tasks.train_generation``, ``tasks.sample_shard`` per shard and
``tasks.evaluate_generation`` (and ``tasks.apply_stage`` when a stage is configured), with the same derived seeds; so the records are identical to running
the chains one by one (tests/test_blocks.py compares them). No Ray here: ``mad.remote`` wraps
``tasks.run_block``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

import loops
from mad import seeding, tasks
from mad.artifacts import portable_state
from mad.config import Config, Family, Reward, SynthSource, TrainInit, n_synth_at, resolved_counts, stage_configured
from mad.data import RealPool
from mad.data.vectors import RealDistribution
from mad.models import get_family

MAX_BLOCK = 256  # chains per block when sized automatically: a slice of one generation stays short
SLICE_S = 2.0  # target seconds of one slice: short enough to lose little when killed, long enough to amortise a task


def is_cheap(family: Family) -> bool:
    """Does the family declare that a generation costs milliseconds (``cheap`` in the family protocol)?

    Asking imports the family's module into the driver once (for diffusion: diffusers, seconds).
    """
    return bool(getattr(get_family(family), "cheap", False))


def needed_synth_gens(cfg: Config, next_gen: int) -> list[int]:
    """Earlier synthetic sets that generation ``next_gen`` or later can still use."""
    last = next_gen - 1
    if last < 1:
        return []
    if cfg.loop.synth_source == SynthSource.accumulate:
        return list(range(1, last + 1))
    k = cfg.loop.last_k if cfg.loop.synth_source == SynthSource.last_k else 1
    return list(range(max(1, last - k + 1), last + 1))


def scores_samples(cfg: Config, gen: int) -> bool:
    """Are the sample-based metrics computed at ``gen``? Every k-th generation and the last (``metrics.every``)."""
    every = cfg.metrics.every
    return every > 0 and (gen % every == 0 or gen == cfg.loop.generations)


def synth_size(cfg: Config, gen: int) -> int:
    """Samples of generation ``gen`` that later generations train on (none after the last): generation
    gen + 1's n_synth (``loop.n_synth_schedule``)."""
    return n_synth_at(cfg.loop, gen + 1) if gen < cfg.loop.generations else 0


def stage_active(cfg: Config, gen: int) -> bool:
    """Does the stage (curation, self-correction) turn generation ``gen``'s samples into its synthetic set?"""
    return stage_configured(cfg) and synth_size(cfg, gen) > 0


def n_samples(cfg: Config, gen: int) -> int:
    """Samples drawn at ``gen``: the synthetic set (curation: k candidates per kept sample), and the
    metrics' n_eval when they are scored."""
    size = synth_size(cfg, gen)
    if cfg.curate.reward != Reward.none:
        size *= cfg.curate.k
    return max(size, cfg.metrics.n_eval if scores_samples(cfg, gen) else 0)


def stage_job(cfg: Config, gen: int) -> tasks.StageJob:
    return tasks.StageJob(seed=cfg.seed, gen=gen, n_keep=synth_size(cfg, gen), n_init=cfg.loop.n_init,
                          curate=cfg.curate, correct=cfg.correct)


def class_probs(pool: RealPool, cfg: Config) -> Optional[np.ndarray]:
    return pool.class_histogram() if cfg.sample.class_balance.value == "real" else None


def sample_generation(state: dict, pool: RealPool, cfg: Config, gen: int, progress: bool = False,
                      device: Optional[str] = None, family: Any = None) -> list[tasks.Shard]:
    """Every sample shard of a generation, in shard order (the shards the Ray path samples in parallel)."""
    probs = class_probs(pool, cfg)
    family = family or get_family(cfg.model.family)
    return [tasks.sample_shard(tasks.SampleJob(seed=cfg.seed, gen=gen, shard=i, n=n, pool_shape=pool.sample_shape,
                                               num_classes=pool.num_classes, class_probs=probs, family=family,
                                               model=cfg.model, sample=cfg.sample, progress=progress),
                               state, device=device)
            for i, n in enumerate(tasks.shard_sizes(n_samples(cfg, gen), cfg.resources.sample_shards))]


def redraw_synth(state: dict, pool: RealPool, cfg: Config, gen: int, family: Any = None,
                 reference: Any = None) -> tasks.Shard:
    """Generation ``gen``'s synthetic set redrawn from its saved model: the same shards and seeds as when
    it was first drawn, so the same samples (used on resume when ``artifacts.samples=none``); the stage,
    when configured, is applied again with its own seed, so it keeps and moves the same samples."""
    shards = sample_generation(state, pool, cfg, gen, family=family)
    if stage_active(cfg, gen):
        return tasks.apply_stage(stage_job(cfg, gen), pool, reference, shards)[0]
    x, y = tasks.concat_shards(shards)
    size = synth_size(cfg, gen)
    return x[:size], (None if y is None else y[:size])


@dataclass
class BlockChain:
    """What a chain carries from one generation to the next inside a block."""

    name: str
    cfg: Config
    next_gen: int
    synth: dict[int, tasks.Shard] = field(default_factory=dict)  # gen -> its synthetic set (x, y)
    synth_sizes: dict[int, int] = field(default_factory=dict)
    prev_state: Optional[dict] = None  # previous generation's weights (train.init=previous)
    redraw: dict[int, dict] = field(default_factory=dict)  # gen -> saved model whose samples must be redrawn
    # The family object resolved by the driver: it travels pickled by reference to its module, so a
    # family registered in the driver's process (not by entry point) works in the block's worker too.
    family: Any = None

    def __post_init__(self) -> None:
        if self.family is None:
            self.family = get_family(self.cfg.model.family)

    @property
    def finished(self) -> bool:
        return self.next_gen > self.cfg.loop.generations


@dataclass
class GenResult:
    """One finished generation of one chain, as the driver persists it."""

    name: str
    gen: int
    manifest: Any  # loops.Manifest
    state: dict
    samples: Optional[tasks.Shard]  # None when the run keeps no samples (artifacts.samples=none)
    metrics: dict[str, float]
    wall_s: float


def run_generation(chain: BlockChain, pool: RealPool, reference: Any, real: Optional[RealDistribution],
                   keep_samples: bool, device: Optional[str] = None) -> GenResult:
    """Advance one chain by one generation, through the same functions and seeds as the Ray stages."""
    t0 = time.time()
    cfg, gen = chain.cfg, chain.next_gen
    for g, state in sorted(chain.redraw.items()):
        chain.synth[g] = redraw_synth(state, pool, cfg, g, chain.family, reference)
    chain.redraw.clear()
    manifest = loops.next_training_set(cfg.loop.kind, gen, dict(chain.synth_sizes), cfg.loop,
                                       seeding.rng(cfg.seed, gen, seeding.LOOP))
    synth_gens = [p.gen for p in manifest.synth]
    init_state = chain.prev_state if cfg.train.init == TrainInit.previous else None
    job = tasks.TrainJob(seed=cfg.seed, gen=gen, manifest=manifest.to_json(), synth_gens=tuple(synth_gens),
                         shard_counts=tuple(1 for _ in synth_gens), family=chain.family, model=cfg.model,
                         train=tasks.train_config_at(cfg.train, gen))
    state = tasks.train_generation(job, pool, [[chain.synth[g]] for g in synth_gens], init_state=init_state,
                                   device=device)
    shards = sample_generation(state, pool, cfg, gen, device=device, family=chain.family)
    metrics = tasks.evaluate_generation(
        tasks.EvalJob(n_eval=cfg.metrics.n_eval, metrics=cfg.metrics, family=chain.family, bias=cfg.sample.bias,
                      real=real, score_samples=scores_samples(cfg, gen)),
        reference, state, shards, device=device)
    if stage_active(cfg, gen):  # the synthetic set (and the saved samples) are what the stage returns
        (x, y), counts = tasks.apply_stage(stage_job(cfg, gen), pool, reference, shards)
        metrics = {**metrics, **counts}
    else:
        x, y = tasks.concat_shards(shards)
    size = synth_size(cfg, gen)
    if size:
        chain.synth[gen] = (x[:size], None if y is None else y[:size])
        chain.synth_sizes[gen] = size
    chain.next_gen = gen + 1
    keep = set(needed_synth_gens(cfg, chain.next_gen))
    for g in [g for g in chain.synth if g not in keep]:
        del chain.synth[g]
    chain.prev_state = state if cfg.train.init == TrainInit.previous else None
    return GenResult(chain.name, gen, manifest, state, (x, y) if keep_samples else None, metrics,
                     round(time.time() - t0, 4))


def run_block(chains: list[BlockChain], pool: RealPool, reference: Any, real: Optional[RealDistribution],
              n_gens: int, keep_samples: str = "all", keep_models: str = "all", device: Optional[str] = None
              ) -> tuple[list[GenResult], list[BlockChain]]:
    """Advance every unfinished chain of the block by up to ``n_gens`` generations, generation by
    generation across the chains. Returns the results in order and the chains' carried state.

    ``keep_samples``/``keep_models`` are artifacts.samples/keep_models: with ``last``, the driver keeps
    only each chain's last generation of the slice, so the weights and samples of the others are not
    sent back (unpickling them cost the driver more than writing their records)."""
    results = []
    for _ in range(n_gens):
        active = [c for c in chains if not c.finished]
        if not active:
            break
        results += [run_generation(c, pool, reference, real, keep_samples != "none", device)
                    for c in active]
    last = {res.name: i for i, res in enumerate(results)}
    for i, res in enumerate(results):
        if last[res.name] != i:
            if keep_models == "last":
                res.state = None
            if keep_samples == "last":
                res.samples = None
        if res.state is not None:
            res.state = portable_state(res.state)
    return results, chains


def plan_blocks(names: list[str], block_size: Optional[int], cpus: int) -> list[list[str]]:
    """Split chains into blocks: ``block_size`` each, or automatically at least one block per CPU
    (so every CPU has a block in flight) and at most ``MAX_BLOCK`` chains per block."""
    if not names:
        return []
    size = block_size or min(MAX_BLOCK, -(-len(names) // max(1, cpus)))
    return [names[i:i + size] for i in range(0, len(names), size)]


def slice_generations(seconds_per_chain_gen: Optional[float], n_chains: int, max_gens: int) -> int:
    """Generations in the next slice of a block of ``n_chains``, from the measured cost: about
    ``SLICE_S`` of work. The first slice (nothing measured yet) runs one generation."""
    if not seconds_per_chain_gen:
        return 1
    return int(max(1, min(max_gens, SLICE_S / (seconds_per_chain_gen * max(1, n_chains)))))

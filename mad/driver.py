"""The driver: one process, the only writer of the run directory.

Chains (one point of the sweep each) run concurrently as Ray work; within a chain the
generations run in order. Per generation the driver asks the loop policy for the next
training set (a manifest), submits train -> sample shards -> evaluate as chained Ray tasks,
and when the evaluation is back persists everything atomically, marks the generation DONE,
appends to metrics.jsonl and submits the chain's next generation.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

import loops
from mad import artifacts, seeding
from mad.config import (Config, DataName, Family, SynthSource, TrainInit, config_to_dict, resolved_counts,
                        science_dict, science_of_yaml, to_yaml)
from mad.plan import Chain, plan_chains
from mad.progress import console_print

TIMING_FIELDS = ("wall_s", "time")
REPORT_EVERY_S = 10.0
ERRORS_DIR = "errors"  # RUN_DIR/errors/<chain>-gen<g>-<stage>.txt: a failed task's full traceback


class StageFailed(RuntimeError):
    """A task of one chain's generation raised: ``str()`` is one line naming the chain, the
    generation, the stage (train, sample, reference, evaluate) and the file with the traceback."""

    def __init__(self, chain: str, gen: int, stage: str, summary: str, traceback_path: os.PathLike):
        self.chain, self.gen, self.stage, self.summary = chain, gen, stage, summary
        self.traceback_path = traceback_path
        super().__init__(f"chain {chain}, generation {gen}, {stage} failed: {summary} "
                         f"(full traceback: {traceback_path})")


@dataclass
class ChainRun:
    chain: Chain
    data_key: str
    next_gen: int
    synth: dict[int, list] = field(default_factory=dict)  # gen -> shard object refs
    synth_sizes: dict[int, int] = field(default_factory=dict)
    prev_state: Any = None  # object ref of the previous generation's weights (train.init=previous)
    reference: Any = None  # object ref of the metrics' reference statistics

    @property
    def finished(self) -> bool:
        return self.next_gen > self.chain.cfg.loop.generations


@dataclass
class Submitted:
    run: ChainRun
    gen: int
    manifest: loops.Manifest
    state: Any
    shards: list
    started: float


def _data_key(cfg: Config) -> str:
    return json.dumps(config_to_dict(cfg.data), sort_keys=True)


def _needed_synth_gens(cfg: Config, next_gen: int) -> list[int]:
    """Earlier synthetic sets that generation ``next_gen`` or later can still use."""
    last = next_gen - 1
    if last < 1:
        return []
    if cfg.loop.synth_source == SynthSource.accumulate:
        return list(range(1, last + 1))
    k = cfg.loop.last_k if cfg.loop.synth_source == SynthSource.last_k else 1
    return list(range(max(1, last - k + 1), last + 1))


def _check_data_fits(cfg: Config, pool) -> None:
    """What only the loaded data can tell, checked before anything is written."""
    from mad.data import DataError

    if cfg.metrics.features.value == "classifier" and pool.x is not None and pool.y is None:
        raise DataError(f"metrics.features=classifier needs class labels, and data.name={cfg.data.name.value} "
                        "has none here (labelled sub-folders with data.labels=true, or metrics.features=raw)")


class Driver:
    def __init__(self, cfg: Config, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet or not cfg.report.progress
        self.chains = plan_chains(cfg)
        self.run_dir = artifacts.RunDir(cfg.out)
        self.records: dict[tuple[str, int], dict] = {}
        self.tracker = None
        self.t_start = time.time()
        self.gens_this_session = 0
        self._report_written = 0.0
        # Step-level bars only for models slow enough to need them (a Gaussian generation takes ms).
        # Bars redraw in place on a terminal; in a log file they would only pile up lines.
        self._bars = not self.quiet and cfg.model.family != Family.gaussian and sys.stdout.isatty()
        self._to_cache: dict[Any, str] = {}  # reference ref -> cache_dir of a classifier still to cache

    # ------------------------------------------------------------------ setup
    def prepare_run_dir(self) -> bool:
        resuming = self.run_dir.check_or_write_config(to_yaml(self.cfg), science_dict(self.cfg), science_of_yaml)
        self.run_dir.write_chains([c.describe() for c in self.chains])
        # metrics.jsonl is rebuilt from the DONE generations, so a crash between DONE and the
        # append (or an append of a generation that never got DONE) cannot leave it inconsistent.
        for chain in self.chains:
            for gen in self.run_dir.done_generations(chain.name):
                self.records[(chain.name, gen)] = self.run_dir.read_generation_metrics(chain.name, gen)
        self.run_dir.rewrite_metrics(self._ordered_records())
        return resuming

    def _ordered_records(self) -> list[dict]:
        return [self.records[k] for k in sorted(self.records, key=lambda k: (k[0], k[1]))]

    def _log(self, msg: str) -> None:
        if not self.quiet:
            console_print(msg)

    # ------------------------------------------------------------------ run
    def run(self) -> artifacts.RunDir:
        from mad import remote
        from mad.data import load_real

        # Real data first: a data set that cannot be had (offline download) fails before anything is written.
        loaded = {}
        for c in self.chains:
            key = _data_key(c.cfg)
            if key not in loaded and len(self.run_dir.done_generations(c.name)) < c.cfg.loop.generations:
                # The split into pool and reference set uses the run's base seed, so every chain of
                # a sweep over seeds is scored against the same held-out reference set.
                loaded[key] = load_real(c.cfg.data, self.cfg.seed)
                _check_data_fits(c.cfg, loaded[key][0])
        resuming = self.prepare_run_dir()
        runs = [ChainRun(c, _data_key(c.cfg), len(self.run_dir.done_generations(c.name)) + 1) for c in self.chains]
        todo = [r for r in runs if not r.finished]
        done_gens = sum(r.next_gen - 1 for r in runs)
        self._log(f"mad: {len(self.chains)} chain(s), {done_gens} generation(s) already done, "
                  f"run directory {self.run_dir.root}" + (" (resuming)" if resuming else ""))
        if not todo:
            self._after_generation(final=True)
            return self.run_dir

        where = self.cfg.ray.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        self._log(f"mad: connecting to {where} (starting Ray takes a few seconds) ...")
        remote.init(self.cfg.ray, quiet=self.quiet,
                    dashboard=any(c.cfg.train.num_workers > 1 for c in self.chains))
        stages = remote.Stages(self.cfg.resources)
        self.pools, self.references, self.moments, ref_sets = {}, {}, {}, {}
        for r in todo:
            c = r.chain.cfg
            if r.data_key not in self.pools:
                pool, (ref_x, ref_y) = loaded[r.data_key]
                self.pools[r.data_key] = (pool, remote.put(pool))
                self.moments[r.data_key] = (pool.mean, pool.cov) if pool.mean is not None else None
                ref_sets[r.data_key] = (ref_x, ref_y)
            mkey = (r.data_key, json.dumps(config_to_dict(c.metrics), sort_keys=True))
            if mkey not in self.references:
                pool, pool_ref = self.pools[r.data_key]
                ref_x, ref_y = ref_sets[r.data_key]
                self.references[mkey] = self._submit_reference(stages, ref_x, ref_y, pool, pool_ref, c.metrics)
            r.reference = self.references[mkey]
            self._restore(r, remote)

        pending: dict[Any, Submitted] = {}
        for r in todo:
            sub, ref = self._submit(r, stages, remote)
            pending[ref] = sub
        while pending:
            ready, _ = remote.wait(list(pending), num_returns=1)
            sub = pending.pop(ready[0])
            try:
                metrics = remote.get(ready[0])
            except remote.TaskFailure as err:
                raise self._stage_failed(sub, ready[0], err, remote) from None
            self._cache_classifiers(remote)
            self._persist(sub, metrics, remote)
            if not sub.run.finished:
                nxt, ref = self._submit(sub.run, stages, remote)
                pending[ref] = nxt
        self._log(f"mad: done in {time.time() - self.t_start:.1f}s; metrics in {self.run_dir.root / artifacts.METRICS}; "
                  f"dashboard {self.run_dir.root / 'report.html'}")
        self._after_generation(final=True)
        return self.run_dir

    # ------------------------------------------------------------------ errors and caches
    def _stage_failed(self, sub: Submitted, evaluate_ref: Any, err: Exception, remote) -> StageFailed:
        """Which stage of ``sub`` failed first, with its traceback written to RUN_DIR/errors/.

        Evaluate depends on the reference, the weights and the samples, so its failure may be any
        of theirs: the finished ones are asked in pipeline order and the first that raised is named.
        """
        stage, failure = "evaluate", err
        for name, refs in (("train", [sub.state]), ("sample", list(sub.shards)),
                           ("reference", [sub.run.reference]), ("evaluate", [evaluate_ref])):
            done, _ = remote.wait(refs, num_returns=len(refs), timeout=0)
            try:
                remote.get(done)
            except remote.TaskFailure as first:
                stage, failure = name, first
                break
        chain = sub.run.chain.name
        path = self.run_dir.root / ERRORS_DIR / f"{chain}-gen{sub.gen:03d}-{stage}.txt"
        artifacts.write_text(path, f"chain: {chain}\ngeneration: {sub.gen}\nstage: {stage}\n"
                                   f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
                                   f"{getattr(failure, 'details', str(failure))}\n")
        return StageFailed(chain, sub.gen, stage, getattr(failure, "summary", str(failure)), path)

    def _submit_reference(self, stages, ref_x, ref_y, pool, pool_ref, metrics) -> Any:
        """The reference task, given the cached classifier when the driver's cache holds it; a newly
        trained one comes back inside the reference and the driver caches it (tasks never write)."""
        from mad.tasks import cached_classifier

        state = cached_classifier(pool, metrics)
        ref = stages.prepare_reference.remote(ref_x, ref_y, pool_ref, metrics, state)
        if state is None and metrics.features.value == "classifier":
            self._to_cache[ref] = metrics.cache_dir
        return ref

    def _cache_classifiers(self, remote) -> None:
        """Write the classifiers of the references that are ready into the driver's cache."""
        if not self._to_cache:
            return
        done, _ = remote.wait(list(self._to_cache), num_returns=len(self._to_cache), timeout=0)
        from mad.metrics.features import save_classifier_state

        for ref in done:
            cache_dir = self._to_cache.pop(ref)
            try:
                state = remote.get(ref).extractor_state
                save_classifier_state(state, cache_dir)
            except (OSError, remote.TaskFailure) as err:  # a cache is an optimisation, never a reason to stop
                print(f"mad: warning: classifier not cached in {cache_dir}: {err}", file=sys.stderr)

    def _restore(self, r: ChainRun, remote) -> None:
        """Bring back what a resumed chain needs from disk: earlier synthetic sets and weights."""
        name, cfg = r.chain.name, r.chain.cfg
        for g in _needed_synth_gens(cfg, r.next_gen):
            size = self.records[(name, g)]["synth_size"]
            x, y = self.run_dir.read_samples(name, g)
            r.synth[g] = [remote.put((x[:size], None if y is None else y[:size]))]
            r.synth_sizes[g] = size
        if cfg.train.init == TrainInit.previous and r.next_gen > 1:
            r.prev_state = remote.put(self.run_dir.read_model(name, r.next_gen - 1))

    def _submit(self, r: ChainRun, stages, remote) -> tuple[Submitted, Any]:
        cfg, gen = r.chain.cfg, r.next_gen
        seed = cfg.seed
        manifest = loops.next_training_set(cfg.loop.kind, gen, dict(r.synth_sizes), cfg.loop,
                                           seeding.rng(seed, gen, seeding.LOOP))
        pool, pool_ref = self.pools[r.data_key]
        synth_gens = [p.gen for p in manifest.synth]
        flat = [ref for g in synth_gens for ref in r.synth[g]]
        counts = [len(r.synth[g]) for g in synth_gens]
        init_state = r.prev_state if cfg.train.init == TrainInit.previous else None
        state = stages.train.remote(pool_ref, seed, gen, manifest.to_json(), synth_gens, counts,
                                    cfg.model.family, cfg.model, cfg.train, init_state, self._bars, *flat)
        _, n_synth = resolved_counts(cfg.loop)
        n_keep = n_synth if gen < cfg.loop.generations else 0
        n_sample = max(n_keep, cfg.metrics.n_eval)
        class_probs = pool.class_histogram() if cfg.sample.class_balance.value == "real" else None
        from mad.tasks import shard_sizes

        shards = [
            stages.sample.remote(state, n, i, pool.sample_shape, pool.num_classes, class_probs, seed, gen,
                                 cfg.model.family, cfg.model, cfg.sample, self._bars)
            for i, n in enumerate(shard_sizes(n_sample, cfg.resources.sample_shards))
        ]
        metrics = stages.evaluate.remote(r.reference, state, cfg.metrics.n_eval, cfg.metrics, cfg.model.family,
                                         cfg.sample.bias, self.moments[r.data_key],
                                         cfg.data.name == DataName.gaussian, *shards)
        return Submitted(r, gen, manifest, state, shards, time.time()), metrics

    def _persist(self, sub: Submitted, metrics: dict, remote) -> None:
        r, gen, cfg = sub.run, sub.gen, sub.run.chain.cfg
        name = r.chain.name
        state = remote.get(sub.state)
        from mad.tasks import concat_shards

        x, y = concat_shards(remote.get(sub.shards))
        _, n_synth = resolved_counts(cfg.loop)
        synth_size = n_synth if gen < cfg.loop.generations else 0
        record = {
            "chain": name,
            "loop": cfg.loop.kind.value,
            "seed": cfg.seed,
            "bias": cfg.sample.bias,
            "gen": gen,
            "n_real": sub.manifest.n_real,
            "n_synth": sub.manifest.n_synth,
            "synth_size": synth_size,
            "wall_s": round(time.time() - sub.started, 4),
            "time": round(time.time(), 3),
            **{k: getattr(v, "value", v) for k, v in r.chain.assignment.items()},
            **metrics,
        }
        self.run_dir.write_generation(name, gen, manifest=sub.manifest.to_json(), state=state,
                                      samples_x=x, samples_y=y, metrics=record)
        if cfg.artifacts.keep_models.value == "last" and gen > 1:
            self.run_dir.drop_model(name, gen - 1)
        self.run_dir.append_metrics(record)
        self.records[(name, gen)] = record
        self.gens_this_session += 1

        # Keep only the synthetic sets later generations can use; dropping the refs frees Ray's store.
        if synth_size:
            r.synth[gen] = sub.shards
            r.synth_sizes[gen] = synth_size
        r.next_gen = gen + 1
        keep = set(_needed_synth_gens(cfg, r.next_gen))
        for g in list(r.synth):
            if g not in keep:
                del r.synth[g]
        r.prev_state = sub.state if cfg.train.init == TrainInit.previous else None
        self._print_generation(record, cfg)
        self._after_generation(record, x)

    def _print_generation(self, rec: dict, cfg: Config) -> None:
        total = sum(c.cfg.loop.generations for c in self.chains)
        left = total - len(self.records)
        elapsed = time.time() - self.t_start
        eta = elapsed / max(1, self.gens_this_session) * left
        from mad.report import TABLE_METRICS

        shown = [k for k in TABLE_METRICS if k in rec]
        vals = "  ".join(f"{k}={rec[k]:.4g}" for k in shown)
        self._log(f"[{rec['chain']}] gen {rec['gen']:>3}/{cfg.loop.generations}  {vals}  "
                  f"({rec['wall_s']:.1f}s, elapsed {elapsed:.0f}s, ~{eta:.0f}s left)")

    def _after_generation(self, record: Optional[dict] = None, x: Optional[np.ndarray] = None,
                          final: bool = False) -> None:
        """Dashboards: TensorBoard scalars and sample grids, the live HTML report, and at the end the
        console table of every chain and generation."""
        if record is not None and self.cfg.report.tensorboard:
            if self.tracker is None:
                from mad.tracking import TensorBoardTracker

                self.tracker = TensorBoardTracker(self.run_dir.root)
            self.tracker.log_generation(record["chain"], record["gen"], record,
                                        None if x is None else x[:artifacts.PREVIEW_SIZE])
        # The page embeds plotly (~5 MB): rewrite it at most every few seconds, and once at the end.
        now = time.time()
        html_due = self.cfg.report.html and (final or now - self._report_written >= REPORT_EVERY_S)
        table_due = final and not self.quiet
        if html_due or table_due:
            from mad.report import load_run, text_table, write_run_report

            try:  # one read of the run directory serves both
                run = load_run(self.run_dir.root)
                if html_due:
                    write_run_report(run)
                if table_due:
                    self._log("\n" + text_table(run))
            except Exception as err:  # a dashboard bug must not kill a days-long run
                print(f"mad: warning: report not written: {err}", file=sys.stderr)
            if html_due:
                self._report_written = now
        if final and self.tracker is not None:
            self.tracker.close()
            self.tracker = None


def run(cfg: Config, quiet: bool = False) -> artifacts.RunDir:
    return Driver(cfg, quiet=quiet).run()

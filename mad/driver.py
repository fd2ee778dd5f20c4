"""The driver: one process, the only writer of the run directory.

Chains (one point of the sweep each) run concurrently as Ray work; within a chain the
generations run in order. Per generation the driver asks the loop policy for the next
training set (a manifest), submits train -> sample shards -> evaluate as chained Ray tasks,
and when the evaluation is back persists everything atomically, marks the generation DONE,
appends to metrics.jsonl and submits the chain's next generation.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

import loops
from mad import artifacts, seeding
from mad.config import (Config, DataName, SynthSource, TrainInit, check_real_pool, config_to_dict,
                        resolved_counts, science_dict, science_of_yaml, to_yaml)
from mad.models import get_family
from mad.plan import Chain, plan_chains
from mad.progress import console_print

TIMING_FIELDS = ("wall_s", "time")
REPORT_EVERY_S = 10.0


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
    share_key: Optional[str] = None  # the stage key when this generation's work may be shared


def _digest(*parts: Any) -> str:
    text = json.dumps([config_to_dict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts],
                      sort_keys=True, default=lambda v: getattr(v, "value", str(v)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def share_key(cfg: Config, manifest: loops.Manifest, n_sample: int, class_probs: Optional[np.ndarray]) -> Optional[str]:
    """A key for a generation whose every input is fixed by config and seed, not by the chain's history.

    That is a generation trained on real data only from scratch (generation 1 of every loop, and any
    real-only generation): chains that differ only in loop kind, in later-generation counts or in keys
    that do not touch it compute it once. The key covers everything that determines the generation's
    model, samples and metrics; chains with equal keys get bit-identical results either way.
    """
    if manifest.synth or (cfg.train.init == TrainInit.previous and manifest.gen > 1):
        return None
    probs = None if class_probs is None else [float(p) for p in class_probs]
    return _digest(cfg.seed, manifest.to_json(), cfg.data, cfg.model, cfg.train, cfg.sample, cfg.metrics,
                   n_sample, cfg.resources.sample_shards, probs)


def _data_key(cfg: Config) -> str:
    return json.dumps(config_to_dict(cfg.data), sort_keys=True)


def real_seen_frac(cfg: Config, gen: int, pool_size: int) -> Optional[float]:
    """The fraction of generation ``gen``'s real samples the chain trained on in generations 1 .. gen-1.

    None without real data. Named from the config alone (``loops.real_part``), so resume gives the same value.
    """
    from mad.data import seen_fraction

    parts = [loops.real_part(cfg.loop.kind, g, cfg.loop) for g in range(1, gen + 1)]
    now = parts[-1]
    if now is None:
        return None
    earlier = [(p.stream, p.start, p.n) for p in parts[:-1] if p is not None]
    return seen_fraction(pool_size, cfg.seed, earlier, (now.stream, now.start, now.n))


def _needed_synth_gens(cfg: Config, next_gen: int) -> list[int]:
    """Earlier synthetic sets that generation ``next_gen`` or later can still use."""
    last = next_gen - 1
    if last < 1:
        return []
    if cfg.loop.synth_source == SynthSource.accumulate:
        return list(range(1, last + 1))
    k = cfg.loop.last_k if cfg.loop.synth_source == SynthSource.last_k else 1
    return list(range(max(1, last - k + 1), last + 1))


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
        self._shared: dict[str, tuple] = {}  # share key -> (gen, state, shards, metrics) object refs
        self._shared_on_disk: dict[str, tuple[str, int]] = {}  # share key -> a finished (chain, gen) holding it
        # Step-level bars only for models slow enough to need them (a cheap family's generation takes ms).
        # Bars redraw in place on a terminal; in a log file they would only pile up lines.
        self._bars = not self.quiet and not get_family(cfg.model.family).cheap and sys.stdout.isatty()

    # ------------------------------------------------------------------ setup
    def prepare_run_dir(self) -> bool:
        resuming = self.run_dir.check_or_write_config(to_yaml(self.cfg), science_dict(self.cfg), science_of_yaml)
        self.run_dir.write_chains([c.describe() for c in self.chains])
        # metrics.jsonl is rebuilt from the DONE generations, so a crash between DONE and the
        # append (or an append of a generation that never got DONE) cannot leave it inconsistent.
        for chain in self.chains:
            for gen in self.run_dir.done_generations(chain.name):
                self.records[(chain.name, gen)] = self.run_dir.read_generation_metrics(chain.name, gen)
                key = self.run_dir.read_manifest(chain.name, gen).get("share_key")
                if key:
                    self._shared_on_disk.setdefault(key, (chain.name, gen))
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
            if key in loaded and c.cfg.data.name == DataName.folder:
                # only now is a folder's pool size known; still nothing is written
                check_real_pool(c.cfg, loaded[key][0].size, f"folder {c.cfg.data.root} training pool")
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
        self.pools, self.references, self.real, ref_sets = {}, {}, {}, {}
        for r in todo:
            c = r.chain.cfg
            if r.data_key not in self.pools:
                pool, (ref_x, ref_y) = loaded[r.data_key]
                self.pools[r.data_key] = (pool, remote.put(pool))
                self.real[r.data_key] = pool.distribution()  # closed form of the real distribution, or None
                ref_sets[r.data_key] = (ref_x, ref_y)
            mkey = (r.data_key, json.dumps(config_to_dict(c.metrics), sort_keys=True))
            if mkey not in self.references:
                pool, pool_ref = self.pools[r.data_key]
                ref_x, ref_y = ref_sets[r.data_key]
                self.references[mkey] = stages.prepare_reference.remote(ref_x, ref_y, pool_ref, c.metrics)
            r.reference = self.references[mkey]
            self._restore(r, remote)

        # Chains that share a stage share its object refs, so one ref can finish several chains.
        pending: dict[Any, list[Submitted]] = {}
        for r in todo:
            sub, ref = self._submit(r, stages, remote)
            pending.setdefault(ref, []).append(sub)
        while pending:
            ready, _ = remote.wait(list(pending), num_returns=1)
            subs = pending.pop(ready[0])
            metrics = remote.get(ready[0])
            for sub in subs:
                self._persist(sub, dict(metrics), remote)
                if not sub.run.finished:
                    nxt, ref = self._submit(sub.run, stages, remote)
                    pending.setdefault(ref, []).append(nxt)
            self._prune_shared(runs)
        self._log(f"mad: done in {time.time() - self.t_start:.1f}s; metrics in {self.run_dir.root / artifacts.METRICS}; "
                  f"dashboard {self.run_dir.root / 'report.html'}")
        self._after_generation(final=True)
        return self.run_dir

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

    def _read_back(self, chain: str, gen: int, remote) -> Optional[tuple]:
        """A shared generation finished by another chain in an earlier session, read back instead of
        recomputed; None when its model or samples were not kept."""
        if not (self.run_dir.has_model(chain, gen) and self.run_dir.has_samples(chain, gen)):
            return None
        record = self.records[(chain, gen)]
        metric_keys = self.run_dir.read_manifest(chain, gen).get("metric_keys", [])
        x, y = self.run_dir.read_samples(chain, gen)
        return (gen, remote.put(self.run_dir.read_model(chain, gen)), [remote.put((x, y))],
                remote.put({k: record[k] for k in metric_keys}))

    def _prune_shared(self, runs: list[ChainRun]) -> None:
        """Drop shared results no unfinished chain can still ask for (they hold object-store memory)."""
        live = [r.next_gen for r in runs if not r.finished]
        oldest = min(live) if live else float("inf")
        for key in [k for k, v in self._shared.items() if v is not None and v[0] < oldest]:
            del self._shared[key]

    def _submit(self, r: ChainRun, stages, remote) -> tuple[Submitted, Any]:
        cfg, gen = r.chain.cfg, r.next_gen
        seed = cfg.seed
        manifest = loops.next_training_set(cfg.loop.kind, gen, dict(r.synth_sizes), cfg.loop,
                                           seeding.rng(seed, gen, seeding.LOOP))
        pool, pool_ref = self.pools[r.data_key]
        _, n_synth = resolved_counts(cfg.loop)
        n_keep = n_synth if gen < cfg.loop.generations else 0
        n_sample = max(n_keep, cfg.metrics.n_eval)
        class_probs = pool.class_histogram() if cfg.sample.class_balance.value == "real" else None
        key = share_key(cfg, manifest, n_sample, class_probs) if self.cfg.resources.share_identical else None
        if key is not None and key not in self._shared and key in self._shared_on_disk:
            self._shared[key] = self._read_back(*self._shared_on_disk[key], remote) or self._shared.get(key)
        if key is not None and self._shared.get(key) is not None:
            state, shards, metrics = self._shared[key][1:]
            return Submitted(r, gen, manifest, state, shards, time.time(), key), metrics
        synth_gens = [p.gen for p in manifest.synth]
        flat = [ref for g in synth_gens for ref in r.synth[g]]
        counts = [len(r.synth[g]) for g in synth_gens]
        init_state = r.prev_state if cfg.train.init == TrainInit.previous else None
        family = get_family(cfg.model.family)
        state = stages.train.remote(pool_ref, seed, gen, manifest.to_json(), synth_gens, counts,
                                    family, cfg.model, cfg.train, init_state, self._bars, *flat)
        from mad.tasks import shard_sizes

        shards = [
            stages.sample.remote(state, n, i, pool.sample_shape, pool.num_classes, class_probs, seed, gen,
                                 family, cfg.model, cfg.sample, self._bars)
            for i, n in enumerate(shard_sizes(n_sample, cfg.resources.sample_shards))
        ]
        metrics = stages.evaluate.remote(r.reference, state, cfg.metrics.n_eval, cfg.metrics, family,
                                         cfg.sample.bias, self.real[r.data_key], *shards)
        if key is not None:
            self._shared[key] = (gen, state, shards, metrics)
        return Submitted(r, gen, manifest, state, shards, time.time(), key), metrics

    def _persist(self, sub: Submitted, metrics: dict, remote) -> None:
        r, gen, cfg = sub.run, sub.gen, sub.run.chain.cfg
        name = r.chain.name
        state = remote.get(sub.state)
        from mad.tasks import concat_shards

        x, y = concat_shards(remote.get(sub.shards))
        _, n_synth = resolved_counts(cfg.loop)
        synth_size = n_synth if gen < cfg.loop.generations else 0
        pool = self.pools[r.data_key][0]
        seen = None if pool.size is None else real_seen_frac(cfg, gen, pool.size)
        record = {
            "chain": name,
            "loop": cfg.loop.kind.value,
            "seed": cfg.seed,
            "bias": cfg.sample.bias,
            "gen": gen,
            "n_real": sub.manifest.n_real,
            "n_synth": sub.manifest.n_synth,
            "synth_size": synth_size,
            **({} if seen is None else {"real_seen_frac": seen}),
            "wall_s": round(time.time() - sub.started, 4),
            "time": round(time.time(), 3),
            **{k: getattr(v, "value", v) for k, v in r.chain.assignment.items()},
            **metrics,
        }
        manifest = sub.manifest.to_json()
        if sub.share_key:
            manifest.update(share_key=sub.share_key, metric_keys=sorted(metrics))
        self.run_dir.write_generation(name, gen, manifest=manifest, state=state,
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

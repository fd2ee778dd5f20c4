"""The driver: one process, the only writer of the run directory.

Chains (one point of the sweep each) run concurrently as Ray work; within a chain the
generations run in order. Per generation the driver asks the loop policy for the next
training set (a manifest), submits train -> sample shards -> evaluate (-> the stage: curation,
self-correction, when configured) as chained Ray tasks, and when the evaluation is back persists
what the run keeps (mad/artifacts.py), appends the generation's line to the chain's records.jsonl
and to metrics.jsonl and submits the chain's next generation. Chains of a cheap family
(mad/blocks.py) instead run in blocks: one task advances a block of chains through a slice of
generations, and the driver appends each chain's lines of the slice with one write (only the
slice's last model and samples are kept when ``keep_* = last``).

The driver holds the run directory's lock for its whole life and, before resuming, checks the
finished generations against their checksums (a corrupt one and the chain's later ones are
redone, as is a torn or unfinished last write). A generation that diverged (``mad.divergence.DivergedError`` from a task) stops its
chain only: the failure is written to ``<chain>/FAILED.json`` and the other chains carry on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

import loops
from mad import artifacts, blocks, seeding, tasks
from mad.config import (Config, DataName, TrainInit, check_real_pool, check_sampler, config_to_dict, science_dict,
                        science_of_yaml, to_yaml)
from mad.divergence import DivergedError
from mad.models import get_family
from mad.plan import Chain, plan_chains
from mad.progress import BarSpec, ConsoleBars, RunClock, TimeLeft, console_print, set_console_printer
from mad.tasks import EvalJob, SampleJob, TrainJob, shard_sizes

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

REPORT_COST_FACTOR = 20  # the live report's rewrites take at most ~1/20 of the run's time


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
    synth: Optional[list] = None  # the stage's output (the synthetic set), when a stage runs; else the shards
    evaluated: Any = None  # the evaluation's own ref, when a stage runs after it


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
    # the stage (curate, correct) runs after the shared work, per chain: only its oversampling (in
    # n_sample) changes what is shared
    return _digest(cfg.seed, manifest.to_json(), cfg.data, cfg.model, _scratch_train(cfg), cfg.sample, cfg.metrics,
                   n_sample, cfg.resources.sample_shards, probs)


def train_share_key(cfg: Config, manifest: loops.Manifest) -> Optional[str]:
    """The key of a generation's training alone, under the same condition as ``share_key``: chains that
    differ in sampling (lambda), metrics or later counts train their real-only generations once."""
    if manifest.synth or (cfg.train.init == TrainInit.previous and manifest.gen > 1):
        return None
    return _digest("train", cfg.seed, manifest.to_json(), cfg.data, cfg.model, _scratch_train(cfg))


def _scratch_train(cfg: Config) -> Any:
    """The training keys of a generation trained from scratch: neither train.init nor the fine-tuning keys
    touch it (chains that fine-tune later share generation 1 with chains that retrain)."""
    return dataclasses.replace(cfg.train, init=TrainInit.scratch, finetune_steps=None, finetune_lr=None)


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


_needed_synth_gens = blocks.needed_synth_gens


@dataclass
class Block:
    """A block of chains of a cheap family, run a slice of generations per task (see mad/blocks.py)."""

    runs: list[ChainRun]
    data_key: str
    carry: Any  # list of blocks.BlockChain, or the object ref of the previous slice's carried state
    keep_samples: str  # artifacts.samples: all, last or none
    keep_models: str  # artifacts.keep_models: all or last
    started: float = 0.0
    planned: int = 1  # chain-generations the slice in flight will finish


def _check_data_fits(cfg: Config, pool) -> None:
    """What only the loaded data can tell, checked before anything is written."""
    from mad.data import DataError

    if cfg.metrics.features.value == "classifier" and pool.x is not None and pool.y is None:
        raise DataError(f"metrics.features=classifier needs class labels, and data.name={cfg.data.name.value} "
                        "has none here (labelled sub-folders with data.labels=true, or metrics.features=raw)")


class Driver:
    def __init__(self, cfg: Config, quiet: bool = False, repair: bool = True):
        self.cfg = cfg
        self.repair = repair  # False (--no-repair): a corrupt finished generation stops the run
        self.failed: dict[str, dict] = {}  # chain -> its recorded failure (this session's or an earlier one's)
        self._bad: dict[str, tuple[int, str]] = {}  # chain -> (first corrupt finished generation, problem)
        self._states: dict[str, artifacts.ChainState] = {}  # chain -> what its directory held at start
        self._resumed: dict[str, int] = {}  # chain -> the finished generations it resumes after
        self._pool_sizes: dict[str, Optional[int]] = {}  # chain -> its real pool's size
        self.quiet = quiet or not cfg.report.progress
        self.chains = plan_chains(cfg)
        self.run_dir = artifacts.RunDir(cfg.out)
        self.records: dict[tuple[str, int], dict] = {}
        self.tracker = None
        self.t_start = time.time()
        self.gens_this_session = 0
        self._total_gens = sum(c.cfg.loop.generations for c in self.chains)
        self._chain_gen_s: Optional[float] = None  # measured seconds per chain-generation in blocks
        self._report_written = 0.0
        self._shared: dict[str, tuple] = {}  # share key -> (gen, state, shards, metrics) object refs
        self._shared_on_disk: dict[str, tuple[str, int]] = {}  # share key -> a finished (chain, gen) holding it
        self._metric_keys_on_disk: dict[tuple[str, int], list[str]] = {}  # ... and the metrics it computed
        self._shared_train: dict[str, tuple] = {}  # train share key -> (gen, weights object ref)
        self.n_trained = 0  # training tasks submitted by this driver (shared ones once)
        self._report_every = REPORT_EVERY_S
        self._live = None  # mad.report.LiveRun: incremental reading for the live report
        self._logged_this_session: set[tuple[str, int]] = set()
        # Step-level bars only for models slow enough to need them (a Gaussian generation takes ms).
        # Bars redraw in place on a terminal; in a log file they would only pile up lines.
        self._bars = not self.quiet and not get_family(cfg.model.family).cheap and sys.stdout.isatty()
        self._to_cache: dict[Any, tuple[str, bool]] = {}  # reference ref -> (cache_dir, reward net too) to cache
        self._console: Optional[ConsoleBars] = None  # the workers' bars, drawn here (mad/progress.py)
        self._clock = RunClock(1)  # the measured cost of a chain-generation, for the time left
        self._eta = TimeLeft(self._clock)  # the run's one time-left figure, once per update
        self._runs: list[ChainRun] = []
        self._blocks: list[Block] = []
        self.complete = False  # the run has printed its last line: what is left is shutting down

    # ------------------------------------------------------------------ setup
    def _verify(self) -> None:
        """Read every chain's finished generations and check their lines and kept files against
        their checksums (read only). Records of another chain or another run (moved, swapped or
        copied chain directories) are refused: ResumeError, one line, before anything is written."""
        if not self.run_dir.exists():
            return
        stored = self.run_dir.stored_science()
        sha = hashlib.sha256(stored if stored is not None else science_yaml(self.cfg).encode()).hexdigest()
        foreign = []
        for chain in self.chains:
            problem = self.run_dir.binding_problem(chain.name, self._state(chain.name), sha,
                                                   science_missing=stored is None)
            if problem:
                foreign.append(problem)
        if foreign:
            raise artifacts.ResumeError(foreign[0] + (f" ({len(foreign) - 1} more chain(s) alike; python run.py "
                                                      f"verify {self.run_dir.root} lists them)"
                                                      if len(foreign) > 1 else ""))
        for chain in self.chains:
            state = self._state(chain.name)
            found = [(len(state.finished) + 1, problem) for _, problem in state.problems[:1]]
            found += self.run_dir.check_files(chain.name, state)
            if found:
                self._bad[chain.name] = min(found, key=lambda p: p[0])

    def _state(self, name: str) -> artifacts.ChainState:
        if name not in self._states:
            self._states[name] = self.run_dir.read_chain(name)
        return self._states[name]

    def _n_done(self, name: str) -> int:
        """Finished generations of a chain that verified (a corrupt one and its successors are redone)."""
        n = len(self._state(name).finished)
        return min(n, self._bad[name][0] - 1) if name in self._bad else n

    def _resume_point(self, chain: Chain, n: int) -> int:
        """The last of the first ``n`` finished generations the chain can continue from: the one whose
        needs (the synthetic sets later generations use, or the models that redraw them; the previous
        weights for train.init=previous) are still kept. Lower than ``n`` only when a corrupt
        generation is redone and ``keep_* = last`` had already deleted what its predecessor kept."""
        cfg, state, d = chain.cfg, self._state(chain.name), self.run_dir.chain_dir(chain.name)
        model, samples = artifacts.MODEL, artifacts.SAMPLES
        start = n
        while 0 < n < cfg.loop.generations:
            kept = artifacts.kept_files(state.finished[:n])

            def have(gen: int, name: str) -> bool:
                rel = artifacts.gen_file(gen, name)
                return rel in kept and (d / rel).is_file()

            if (cfg.train.init != TrainInit.previous or have(n, model)) and all(
                    have(g, samples) or have(g, model) for g in _needed_synth_gens(cfg, n + 1)):
                break
            n -= 1
        if n < start:
            print(f"mad: {chain.name}: what generation {start} needs to continue is no longer kept "
                  f"(artifacts.keep_models/samples=last); recomputing from generation {n + 1}", file=sys.stderr)
        return n

    def prepare_run_dir(self) -> bool:
        if self._bad and not self.repair:  # before any write, config.yaml's refresh included
            (chain, (gen, problem)), more = next(iter(self._bad.items())), len(self._bad) - 1
            raise artifacts.CorruptRunError(
                f"{problem}; stopped (--no-repair)" + (f"; {more} more chain(s) affected" if more else "")
                + f"; python run.py verify {self.run_dir.root} lists every problem")
        named = self.run_dir.metrics_generations()  # before it is rebuilt: what a cut records.jsonl lost
        resuming = self.run_dir.check_or_write_config(to_yaml(self.cfg), science_dict(self.cfg), science_of_yaml,
                                                      science_yaml(self.cfg))
        if self.run_dir.replaced is not None:
            named = {}  # the replaced run's lines went with it
            print(f"mad: {self.run_dir.root} held a run with another config (differs in: "
                  f"{', '.join(self.run_dir.replaced)}) that finished no generation; replaced it", file=sys.stderr)
        if self.run_dir.config_edited:
            print(f"mad: {self.run_dir.root / artifacts.CONFIG}: edited since the run was written (differs in "
                  f"{', '.join(self.run_dir.config_edited)} from {artifacts.SCIENCE}, the config its records were "
                  "computed under); rewritten", file=sys.stderr)
        for chain, (gen, problem) in self._bad.items():
            print(f"mad: {problem}; recomputing generation {gen} and later of {chain}", file=sys.stderr)
        for chain in self.chains:
            if chain.name in self._bad:
                continue
            have = {f.gen for f in self._state(chain.name).finished}
            lost = sorted(g for g in named.get(chain.name, ()) if g not in have and g <= chain.cfg.loop.generations)
            if lost:
                print(f"mad: {self.run_dir.lost_line(chain.name, lost)}; recomputing them", file=sys.stderr)
        self.run_dir.write_chains([c.describe() for c in self.chains])
        # Each chain's directory is cut to the generations it resumes after (a torn or unfinished
        # tail and corrupt generations go; an old DONE-directory chain is converted), and
        # metrics.jsonl is rebuilt from them, so a crash between a chain's records.jsonl and
        # metrics.jsonl cannot leave the two inconsistent.
        for chain in self.chains:
            name = chain.name
            state = self._state(name)
            n = self._resume_point(chain, self._n_done(name))
            self.run_dir.open_chain(name, state, n)
            self._resumed[name] = n
            for f in state.finished[:n]:
                self.records[(name, f.gen)] = f.metrics
                key = f.manifest.get("share_key")
                if key:
                    self._shared_on_disk.setdefault(key, (name, f.gen))
                    self._metric_keys_on_disk[(name, f.gen)] = f.manifest.get("metric_keys", [])
        self._states.clear()  # read once; the driver now knows what it writes
        self.run_dir.rewrite_metrics(self._ordered_records())
        return resuming

    def _ordered_records(self) -> list[dict]:
        return [self.records[k] for k in sorted(self.records, key=lambda k: (k[0], k[1]))]

    def _log(self, msg: str) -> None:
        if not self.quiet:
            console_print(msg)

    # ------------------------------------------------------------------ run
    def run(self) -> artifacts.RunDir:
        # One writer: the lock is held until this driver ends (the OS drops it if the process dies),
        # and everything below, the config comparison included, happens under it.
        self.run_dir.lock()
        try:
            return self._run()
        finally:
            try:
                self.run_dir.remove_spares()
            finally:
                self.run_dir.unlock()

    def _run(self) -> artifacts.RunDir:
        from mad import remote
        from mad.data import load_real

        self.run_dir.refuse_links()  # nothing is written through a link planted in the run directory
        self._verify()
        # Recorded failures are reported, not retried (deleting <chain>/FAILED.json retries).
        if self.run_dir.exists():
            for c in self.chains:
                info = self.run_dir.read_failed(c.name)
                if info is not None:
                    self.failed[c.name] = info
        # Real data first: a data set that cannot be had (offline download) fails before anything is written.
        loaded = {}
        for c in self.chains:
            key = _data_key(c.cfg)
            if key not in loaded and c.name not in self.failed and self._n_done(c.name) < c.cfg.loop.generations:
                # The split into pool and reference set uses the run's base seed, so every chain of
                # a sweep over seeds is scored against the same held-out reference set.
                loaded[key] = load_real(c.cfg.data, self.cfg.seed)
            if key in loaded and c.cfg.data.name == DataName.folder:
                # only now is a folder's pool size known; still nothing is written
                check_real_pool(c.cfg, loaded[key][0].size, f"folder {c.cfg.data.root} training pool")
                # and only now whether it has labels, i.e. whether the diffusion model is conditional
                check_sampler(c.cfg, bool(c.cfg.model.conditional) and loaded[key][0].num_classes > 0)
            if key in loaded:
                _check_data_fits(c.cfg, loaded[key][0])
        resuming = self.prepare_run_dir()
        if self.run_dir.replaced is not None:
            self.failed = {}  # the replaced run's failures went with it
        for name, info in self.failed.items():
            print(f"mad: error: [{name}] {_failure_line(info)}; recorded in an earlier session in "
                  f"{self.run_dir.failed_path(name)} (delete it to retry the chain)", file=sys.stderr)
        runs = [ChainRun(c, _data_key(c.cfg), self._resumed[c.name] + 1) for c in self.chains]
        todo = [r for r in runs if not r.finished and r.chain.name not in self.failed]
        for r in todo:  # a replaced run's failed chains were skipped above
            if r.data_key not in loaded:
                loaded[r.data_key] = load_real(r.chain.cfg.data, self.cfg.seed)
        done_gens = sum(r.next_gen - 1 for r in runs)
        self._log(f"mad: {len(self.chains)} chain(s), {done_gens} generation(s) already done, "
                  f"run directory {self.run_dir.root}" + (" (resuming)" if resuming else ""))
        if not todo:
            self._write_phase()
            self._after_generation(final=True)
            self._report_failed()
            self._print_where()
            return self.run_dir

        where = self.cfg.ray.address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        self._log(f"mad: connecting to {where} (starting Ray takes a few seconds) ...")
        remote.init(self.cfg.ray, quiet=self.quiet,
                    dashboard=any(c.cfg.train.num_workers > 1 for c in self.chains))
        stages = remote.Stages(self.cfg.resources)
        if self._bars:
            self._console = ConsoleBars(remote.start_bar_board(), remote.get)
            set_console_printer(self._console.write)
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
                self.references[mkey] = self._submit_reference(stages, ref_x, ref_y, pool, pool_ref, c.metrics)
            r.reference = self.references[mkey]
            if not self._runs_in_blocks(c):  # a block's chains are restored into its carried state
                self._restore(r, remote)

        try:
            self._loop(runs, todo, stages, remote)
        finally:  # no bar outlives the loop, whatever ends it: the lines below stay readable
            if self._console is not None:
                self._console.close()
                set_console_printer(None)
                self._console = None
        self._write_phase()
        self._after_generation(final=True)
        self._report_failed()
        self._print_where()
        return self.run_dir

    def _loop(self, runs: list[ChainRun], todo: list[ChainRun], stages, remote) -> None:
        """Submit every chain's work and persist each generation as it comes back."""
        # ref -> the chain-generations waiting on it (chains that share a stage share its refs), or a
        # Block waiting on a slice of generations
        pending: dict[Any, Any] = {}
        in_blocks = [r for r in todo if self._runs_in_blocks(r.chain.cfg)]
        self._runs = runs
        # a block is one unit of work per CPU; a chain's generation one per slot its training fits
        self._clock = RunClock(remote.cluster_cpus() if len(in_blocks) == len(todo) else
                               remote.chain_slots(self.cfg.resources))
        self._eta = TimeLeft(self._clock)
        for r in todo:
            if not self._runs_in_blocks(r.chain.cfg):
                sub, ref = self._submit(r, stages, remote)
                if ref not in pending:  # a ref shared by chains is one unit of work
                    self._clock.submitted(ref)
                pending.setdefault(ref, []).append(sub)
        idle = self._plan_blocks(in_blocks)
        self._blocks = list(idle)
        max_blocks = remote.cluster_cpus()  # one block in flight per CPU; Ray spreads them over nodes

        def fill_blocks() -> None:
            while idle and sum(isinstance(v, Block) for v in pending.values()) < max_blocks:
                block = idle.pop(0)
                ref = self._submit_block(block, stages, remote)
                pending[ref] = block
                self._clock.submitted(ref, block.planned)

        fill_blocks()
        while pending:
            ready, _ = remote.wait(list(pending), num_returns=1,
                                   timeout=None if self._console is None else self._console.poll_every)
            if self._console is not None:
                self._console.poll()
            if not ready:
                continue
            item = pending.pop(ready[0])
            if isinstance(item, Block):
                try:
                    results = remote.get(ready[0])
                except remote.TaskFailure as err:
                    self._clock.finished(ready[0], 0)
                    self._block_failed(item, err)
                    continue
                self._clock.finished(ready[0], len(results))
                by_name = {r.chain.name: r for r in item.runs}
                for res in results:
                    by_name[res.name].next_gen = res.gen + 1
                if not all(r.finished for r in item.runs):
                    idle.append(item)
                fill_blocks()  # the next slice runs while this one is written
                self._update_time_left(parallel=sum(not all(r.finished for r in b.runs) for b in self._blocks))
                self._persist_block(item, results)
                continue
            subs = item
            try:
                metrics = remote.get(ready[0])
            except remote.TaskFailure as err:
                self._clock.finished(ready[0], 0)
                if isinstance(err.cause, DivergedError):
                    for sub in subs:  # chains sharing a diverged stage all fail with it
                        self._fail_chain(sub.run.chain.name, sub.gen, err.cause)
                    continue
                raise self._stage_failed(subs[0], ready[0], err, remote) from None
            self._cache_classifiers(remote)
            self._clock.finished(ready[0])  # one unit of work, however many chains share it
            self._update_time_left(done={sub.run.chain.name: sub.gen for sub in subs})
            for sub in subs:
                self._persist(sub, dict(metrics), remote)
                if not sub.run.finished:
                    nxt, ref = self._submit(sub.run, stages, remote)
                    if ref not in pending:
                        self._clock.submitted(ref)
                    pending.setdefault(ref, []).append(nxt)
            self._prune_shared(runs)

    def _print_where(self) -> None:
        """The last lines, printed with --quiet too: where the run and its dashboards are."""
        root = self.run_dir.root
        lines = [f"mad: done in {time.time() - self.t_start:.1f}s; run directory {root} (metrics in "
                 f"{root / artifacts.METRICS})"]
        if self.cfg.report.html:
            lines.append(f"mad: report {root / 'report.html'}")
        if self.cfg.report.tensorboard:
            lines.append(f"mad: tensorboard --logdir {root / 'tensorboard'}")
        if self.cfg.report.tracker.value == "mlflow":
            from mad.tracking import MLFLOW_DIR, mlflow_uri

            store = self.cfg.report.tracker_dir or root / MLFLOW_DIR
            lines.append(f"mad: mlflow ui --backend-store-uri {mlflow_uri(store)}")
        self.complete = True  # a signal from now on finds the run finished (mad.cli ignores it)
        print("\n".join(lines), flush=True)

    def _fail_chain(self, name: str, gen: int, err: DivergedError) -> None:
        """Stop a chain whose generation diverged: one line, and FAILED.json so resume reports it again."""
        info = {"chain": name, "gen": gen, "what": err.what, "key": err.key, "time": round(time.time(), 3)}
        path = self.run_dir.write_failed(name, info)
        self.failed[name] = info
        print(f"mad: error: [{name}] {_failure_line(info)}; chain stopped, other chains carry on "
              f"(recorded in {path})", file=sys.stderr)

    def _report_failed(self) -> None:
        if self.failed:
            print(f"mad: {len(self.failed)} of {len(self.chains)} chain(s) failed: {', '.join(sorted(self.failed))}",
                  file=sys.stderr)

    def _write_phase(self) -> None:
        """phase.csv of a fresh-data sweep with real-only chains (MAD section 5); nothing otherwise."""
        from mad.phase import write_phase

        p = self.cfg.report.phase
        try:
            written = write_phase(self.run_dir.root, self._ordered_records(), p.metric, p.last_k, p.baseline_bias)
        except Exception as err:  # an analysis bug must not lose a finished run
            print(f"mad: warning: phase.csv not written: {err}", file=sys.stderr)
            return
        if written is not None:
            self._log(f"mad: phase diagram in {written[0]} ({written[1]})")

    # ------------------------------------------------------------------ errors and caches
    def _stage_failed(self, sub: Submitted, evaluate_ref: Any, err: Exception, remote) -> StageFailed:
        """Which stage of ``sub`` failed first, with its traceback written to RUN_DIR/errors/.

        Evaluate depends on the reference, the weights and the samples, so its failure may be any
        of theirs: the finished ones are asked in pipeline order and the first that raised is named.
        """
        stage, failure = "stage" if sub.evaluated is not None else "evaluate", err
        staged = sub.evaluated is not None  # then evaluate_ref is the stage's, which runs after the evaluation
        for name, refs in (("train", [sub.state]), ("sample", list(sub.shards)),
                           ("reference", [sub.run.reference]), ("evaluate", [sub.evaluated if staged else evaluate_ref]),
                           ("stage", [evaluate_ref])):
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

    def _block_failed(self, block: "Block", err: Exception) -> None:
        """A block's task raised. Divergence stops every chain of the block (the block cannot tell which
        chain's generation it was); anything else stops the run with one line, traceback in RUN_DIR/errors."""
        active = [r for r in block.runs if not r.finished]
        gen = min((r.next_gen for r in active), default=0)
        cause = getattr(err, "cause", None)
        if isinstance(cause, DivergedError):
            for r in active:
                self._fail_chain(r.chain.name, r.next_gen, cause)
            return
        chain = block.runs[0].chain.name
        path = self.run_dir.root / ERRORS_DIR / f"{chain}-gen{gen:03d}-block.txt"
        artifacts.write_text(path, f"block of {len(block.runs)} chains: {', '.join(r.chain.name for r in block.runs)}\n"
                                   f"generation: {gen}\nstage: block\n\n{getattr(err, 'details', str(err))}\n")
        raise StageFailed(f"{chain} (and the {len(block.runs) - 1} other chains of its block)", gen, "block",
                          getattr(err, "summary", str(err)), path)

    def _submit_reference(self, stages, ref_x, ref_y, pool, pool_ref, metrics) -> Any:
        """The reference task, given the cached classifiers when the driver's cache holds them (the
        metrics' one; the curation reward's own network when a chain curates by classifier confidence);
        newly trained ones come back inside the reference and the driver caches them (tasks never write)."""
        from mad.config import Reward
        from mad.tasks import cached_classifier

        reward = any(c.cfg.curate.reward == Reward.classifier_confidence for c in self.chains)
        state = cached_classifier(pool, metrics)
        reward_state = cached_classifier(pool, metrics, reward=True) if reward else None
        ref = stages.prepare_reference.remote(ref_x, ref_y, pool_ref, metrics, state, self.cfg.seed, reward,
                                              reward_state)
        if metrics.features.value == "classifier" and (state is None or (reward and reward_state is None)):
            self._to_cache[ref] = (metrics.cache_dir, reward)
        return ref

    def _cache_classifiers(self, remote) -> None:
        """Write the classifiers of the references that are ready into the driver's cache."""
        if not self._to_cache:
            return
        done, _ = remote.wait(list(self._to_cache), num_returns=len(self._to_cache), timeout=0)
        from mad.metrics.features import save_classifier_state

        for ref in done:
            cache_dir, reward = self._to_cache.pop(ref)
            try:
                reference = remote.get(ref)
                for state in (reference.extractor_state, reference.reward_state if reward else None):
                    if state is not None:
                        save_classifier_state(state, cache_dir)
            except (OSError, remote.TaskFailure) as err:  # a cache is an optimisation, never a reason to stop
                print(f"mad: warning: classifier not cached in {cache_dir}: {err}", file=sys.stderr)

    def _restore(self, r: ChainRun, remote) -> None:
        """Bring back what a resumed chain needs from disk: earlier synthetic sets and weights."""
        name, cfg = r.chain.name, r.chain.cfg
        for g in _needed_synth_gens(cfg, r.next_gen):
            size = self.records[(name, g)]["synth_size"]
            if self.run_dir.has_samples(name, g):
                x, y = self.run_dir.read_samples(name, g)
            else:  # artifacts.samples=none: redraw them from the saved model (a cheap family)
                x, y = blocks.redraw_synth(self.run_dir.read_model(name, g), self.pools[r.data_key][0], cfg, g)
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
        metric_keys = self._metric_keys_on_disk.get((chain, gen), [])
        x, y = self.run_dir.read_samples(chain, gen)
        return (gen, remote.put(self.run_dir.read_model(chain, gen)), [remote.put((x, y))],
                remote.put({k: record[k] for k in metric_keys}))

    def _prune_shared(self, runs: list[ChainRun]) -> None:
        """Drop shared results no unfinished chain can still ask for (they hold object-store memory)."""
        live = [r.next_gen for r in runs if not r.finished and r.chain.name not in self.failed]
        oldest = min(live) if live else float("inf")
        for shared in (self._shared, self._shared_train):
            for key in [k for k, v in shared.items() if v is not None and v[0] < oldest]:
                del shared[key]

    def _submit(self, r: ChainRun, stages, remote) -> tuple[Submitted, Any]:
        cfg, gen = r.chain.cfg, r.next_gen
        seed = cfg.seed
        manifest = loops.next_training_set(cfg.loop.kind, gen, dict(r.synth_sizes), cfg.loop,
                                           seeding.rng(seed, gen, seeding.LOOP))
        pool, pool_ref = self.pools[r.data_key]
        n_sample = blocks.n_samples(cfg, gen)
        class_probs = blocks.class_probs(pool, cfg)
        key = share_key(cfg, manifest, n_sample, class_probs) if self.cfg.resources.share_identical else None
        staged = blocks.stage_active(cfg, gen)
        # saved samples are the stage's output, not the raw shards a chain's own stage needs: not read back
        if key is not None and key not in self._shared and key in self._shared_on_disk and not staged:
            self._shared[key] = self._read_back(*self._shared_on_disk[key], remote) or self._shared.get(key)
        if key is not None and self._shared.get(key) is not None:
            state, shards, metrics = self._shared[key][1:]
            return self._with_stage(Submitted(r, gen, manifest, state, shards, time.time(), key), metrics, stages)
        synth_gens = [p.gen for p in manifest.synth]
        flat = [ref for g in synth_gens for ref in r.synth[g]]
        counts = [len(r.synth[g]) for g in synth_gens]
        init_state = r.prev_state if cfg.train.init == TrainInit.previous else None
        family = get_family(cfg.model.family)
        tkey = train_share_key(cfg, manifest) if self.cfg.resources.share_identical else None
        if tkey is not None and tkey in self._shared_train:
            state = self._shared_train[tkey][1]
        else:
            job = TrainJob(seed=seed, gen=gen, manifest=manifest.to_json(), synth_gens=tuple(synth_gens),
                           shard_counts=tuple(counts), family=family, model=cfg.model,
                           train=tasks.train_config_at(cfg.train, gen))
            state = stages.train.remote(job, pool_ref, init_state, self._bar_spec(r, gen), *flat)
            self.n_trained += 1
            if tkey is not None:
                self._shared_train[tkey] = (gen, state)
        shards = [
            stages.sample.remote(SampleJob(seed=seed, gen=gen, shard=i, n=n, pool_shape=pool.sample_shape,
                                           num_classes=pool.num_classes, class_probs=class_probs, family=family,
                                           model=cfg.model, sample=cfg.sample), state, self._bar_spec(r, gen))
            for i, n in enumerate(shard_sizes(n_sample, cfg.resources.sample_shards))
        ]
        job = EvalJob(n_eval=cfg.metrics.n_eval, metrics=cfg.metrics, family=family, bias=cfg.sample.bias,
                      real=self.real[r.data_key], score_samples=blocks.scores_samples(cfg, gen))
        metrics = stages.evaluate.remote(job, r.reference, state, *shards)
        if key is not None:
            self._shared[key] = (gen, state, shards, metrics)
        return self._with_stage(Submitted(r, gen, manifest, state, shards, time.time(), key), metrics, stages)

    def _with_stage(self, sub: Submitted, metrics: Any, stages) -> tuple[Submitted, Any]:
        """Add the stage task (curation, self-correction) when it runs at this generation: the driver then
        waits on its metrics (the evaluation's with the stage's counts) and keeps its output as the
        synthetic set."""
        cfg = sub.run.chain.cfg
        if not blocks.stage_active(cfg, sub.gen):
            return sub, metrics
        metrics_in = metrics
        synth, metrics = stages.stage.remote(blocks.stage_job(cfg, sub.gen), self.pools[sub.run.data_key][1],
                                             sub.run.reference, metrics_in, *sub.shards)
        sub.synth, sub.evaluated = [synth], metrics_in
        return sub, metrics

    def _bar_spec(self, r: ChainRun, gen: int) -> Optional[BarSpec]:
        """A task's bars, labelled ``chain gen`` (the task adds its stage); None: no bars."""
        return None if self._console is None else BarSpec(self._console.board, f"{r.chain.name} g{gen}")

    # ------------------------------------------------------------------ blocks of cheap chains
    def _runs_in_blocks(self, cfg: Config) -> bool:
        return cfg.resources.block_size != 0 and blocks.is_cheap(cfg.model.family)

    def _plan_blocks(self, runs: list[ChainRun]) -> list[Block]:
        """Blocks of chains that share real data, metric reference and what they keep of samples."""
        from mad import remote

        groups: dict[tuple, list[ChainRun]] = {}
        for r in runs:
            c = r.chain.cfg
            key = (r.data_key, json.dumps(config_to_dict(c.metrics), sort_keys=True), c.artifacts.samples.value,
                   c.artifacts.keep_models.value, str(c.model.family))
            groups.setdefault(key, []).append(r)
        cpus = remote.cluster_cpus() if runs else 1
        out = []
        for (data_key, _, keep_samples, keep_models, _), group in groups.items():
            by_name = {r.chain.name: r for r in group}
            for names in blocks.plan_blocks(list(by_name), self.cfg.resources.block_size, cpus):
                members = [by_name[n] for n in names]
                carry = [self._block_chain(r) for r in members]
                out.append(Block(members, data_key, carry, keep_samples, keep_models))
        return out

    def _block_chain(self, r: ChainRun) -> blocks.BlockChain:
        """A chain's carried state for a block, from disk when resuming (samples, or models to redraw them)."""
        name, cfg = r.chain.name, r.chain.cfg
        bc = blocks.BlockChain(name, cfg, r.next_gen)
        for g in _needed_synth_gens(cfg, r.next_gen):
            size = self.records[(name, g)]["synth_size"]
            if self.run_dir.has_samples(name, g):
                x, y = self.run_dir.read_samples(name, g)
                bc.synth[g] = (x[:size], None if y is None else y[:size])
            else:  # artifacts.samples=none: the block redraws them from the saved model
                bc.redraw[g] = self.run_dir.read_model(name, g)
            bc.synth_sizes[g] = size
        if cfg.train.init == TrainInit.previous and r.next_gen > 1:
            bc.prev_state = self.run_dir.read_model(name, r.next_gen - 1)
        return bc

    def _submit_block(self, block: Block, stages, remote) -> Any:
        active = [r for r in block.runs if not r.finished]
        max_gens = max(r.chain.cfg.loop.generations - r.next_gen + 1 for r in active)
        n_gens = blocks.slice_generations(self._chain_gen_s, len(active), max_gens)
        pool_ref = self.pools[block.data_key][1]
        results, carry = stages.run_block.remote(block.carry, pool_ref, active[0].reference,
                                                 self.real[block.data_key], n_gens, block.keep_samples,
                                                 block.keep_models)
        block.carry = carry  # the next slice starts from this one's end, without a trip through the driver
        block.started = time.time()
        block.planned = n_gens * len(active)
        return results

    def _persist_block(self, block: Block, results: list) -> None:
        by_name = {r.chain.name: r for r in block.runs}
        if results:
            cost = sum(res.wall_s for res in results) / len(results)
            self._chain_gen_s = cost if self._chain_gen_s is None else 0.5 * (self._chain_gen_s + cost)
        per_chain: dict[str, list] = {}
        shown = []
        for res in results:
            record = self._record(by_name[res.name].chain, res.gen, res.manifest, res.metrics, res.wall_s)
            x, y = res.samples if res.samples is not None else (None, None)
            per_chain.setdefault(res.name, []).append((record, res.manifest.to_json(), res.state, x, y))
            shown.append((record, x))
        lines = [line for name, done in per_chain.items() for line in self._save(by_name[name].chain, done)]
        self.run_dir.append_metrics_lines(lines)
        for rec, x in shown:  # dashboards read metrics.jsonl: after the lines are there
            self._after_generation(rec, x)
        if results:
            gens = sorted({res.gen for res in results})
            self._log(f"[block of {len(block.runs)} chains: {block.runs[0].chain.name} ...] gen {gens[0]}-{gens[-1]} "
                      f"done ({len(results)} chain-generations, {time.time() - block.started:.1f}s; "
                      f"{len(self.records)}/{self._total_gens} in all, elapsed {time.time() - self.t_start:.0f}s"
                      f"{self._eta.text()})")

    def _persist(self, sub: Submitted, metrics: dict, remote) -> None:
        r, gen, cfg = sub.run, sub.gen, sub.run.chain.cfg
        state = remote.get(sub.state)
        from mad.tasks import concat_shards

        x, y = concat_shards(remote.get(sub.synth or sub.shards))  # with a stage: the set later generations use
        record = self._record(r.chain, gen, sub.manifest, metrics, round(time.time() - sub.started, 4))
        manifest_json = sub.manifest.to_json()
        # a staged generation's saved samples are the stage's output, which another chain cannot read back
        if sub.share_key and not sub.synth:  # lets a resume read this shared generation back
            manifest_json.update(share_key=sub.share_key, metric_keys=sorted(metrics))
        self.run_dir.append_metrics_lines(self._save(r.chain, [(record, manifest_json, state, x, y)]))
        synth_size = record["synth_size"]

        # Keep only the synthetic sets later generations can use; dropping the refs frees Ray's store.
        if synth_size:
            r.synth[gen] = sub.synth or sub.shards
            r.synth_sizes[gen] = synth_size
        r.next_gen = gen + 1
        keep = set(_needed_synth_gens(cfg, r.next_gen))
        for g in list(r.synth):
            if g not in keep:
                del r.synth[g]
        r.prev_state = sub.state if cfg.train.init == TrainInit.previous else None
        self._print_generation(record, cfg)
        self._after_generation(record, x)

    def _record(self, chain: Chain, gen: int, manifest: loops.Manifest, metrics: dict, wall_s: float) -> dict:
        """A finished generation's metrics.jsonl record (both paths)."""
        cfg = chain.cfg
        if chain.name not in self._pool_sizes:  # _data_key dumps the data config: once per chain, not per record
            self._pool_sizes[chain.name] = self.pools[_data_key(cfg)][0].size
        pool_size = self._pool_sizes[chain.name]
        seen = None if pool_size is None else real_seen_frac(cfg, gen, pool_size)
        return {
            "chain": chain.name,
            "loop": cfg.loop.kind.value,
            "seed": cfg.seed,
            "bias": cfg.sample.bias,
            "gen": gen,
            "n_real": manifest.n_real,
            "n_synth": manifest.n_synth,
            "synth_size": blocks.synth_size(cfg, gen),
            **({} if seen is None else {"real_seen_frac": seen}),
            "wall_s": wall_s,
            "time": round(time.time(), 3),
            **{k: getattr(v, "value", v) for k, v in chain.assignment.items()},
            **metrics,
        }

    def _save(self, chain: Chain, done: list[tuple[dict, dict, Any, Optional[np.ndarray], Optional[np.ndarray]]]
              ) -> list[str]:
        """Persist finished generations of one chain, in order, as (record, manifest JSON, weights,
        samples x, y): what artifacts.* keeps of them and their records.jsonl lines (one write).
        Returns their metrics.jsonl lines, for the caller to append: a crash before that append is
        harmless, as metrics.jsonl is rebuilt from records.jsonl on resume."""
        keep_models, keep_samples = chain.cfg.artifacts.keep_models.value, chain.cfg.artifacts.samples.value
        new, lines = [], []
        for i, (record, manifest_json, state, x, y) in enumerate(done):
            last = i == len(done) - 1  # with keep_* = last only the batch's last generation keeps files
            line = json.dumps(record, sort_keys=True)
            lines.append(line)
            # the last generation draws nothing when it scores no samples (metrics.every): no empty files
            drew = x is not None and (len(x) > 0 or record["gen"] < chain.cfg.loop.generations)
            keep_x = drew and (keep_samples == "all" or (keep_samples == "last" and last))
            new.append(artifacts.NewGeneration(record["gen"], manifest_json, line,
                                               state=state if keep_models == "all" or last else None,
                                               samples=(x, y) if keep_x else None))
        self.run_dir.append_generations(chain.name, new, keep_models, keep_samples)
        for record, *_ in done:
            self.records[(chain.name, record["gen"])] = record
            self._logged_this_session.add((chain.name, record["gen"]))
        self.gens_this_session += len(done)
        return lines

    def _update_time_left(self, parallel: Optional[int] = None, done: Optional[dict[str, int]] = None) -> None:
        """Re-estimate the run's time left, once per batch of finished work (``done``: chain -> the
        generation it just finished, not yet persisted); every line printed for the batch shows it."""
        done = done or {}
        left = [r.chain.cfg.loop.generations - max(r.next_gen, done.get(r.chain.name, 0) + 1) + 1
                for r in self._runs if r.chain.name not in self.failed]
        self._eta.update(left, parallel)

    def _print_generation(self, rec: dict, cfg: Config) -> None:
        elapsed = time.time() - self.t_start
        from mad.report.names import TABLE_METRICS

        shown = [k for k in TABLE_METRICS if k in rec]
        vals = "  ".join(f"{k}={rec[k]:.4g}" for k in shown)
        self._log(f"[{rec['chain']}] gen {rec['gen']:>3}/{cfg.loop.generations}  {vals}  "
                  f"({rec['wall_s']:.1f}s, elapsed {elapsed:.0f}s{self._eta.text()})")

    def _after_generation(self, record: Optional[dict] = None, x: Optional[np.ndarray] = None,
                          final: bool = False) -> None:
        """Dashboards: TensorBoard scalars and sample grids (and MLflow with report.tracker=mlflow), the
        live HTML report, and at the end the console table of every chain and generation."""
        if record is not None and self.tracker is None and (self.cfg.report.tensorboard
                                                            or self.cfg.report.tracker.value != "none"):
            from mad import tracking

            earlier = [rec for key, rec in self.records.items() if key not in self._logged_this_session]
            self.tracker = tracking.open_trackers(self.cfg, self.run_dir.root, self.chains, earlier)
        if record is not None and self.tracker is not None:
            self.tracker.log_generation(record["chain"], record["gen"], record,
                                        None if x is None else x[:artifacts.PREVIEW_SIZE])
        # The page embeds plotly (~5 MB) and grows with the run: rewrite it at most every
        # REPORT_EVERY_S, or REPORT_COST_FACTOR times as long as its last rewrite took, so that it
        # costs at most a small share of the run however large the run grows; and once at the end.
        now = time.time()
        html_due = self.cfg.report.html and (final or now - self._report_written >= self._report_every)
        table_due = final and not self.quiet
        if html_due or table_due:
            from mad.report import LiveRun, load_run, text_table, write_run_report

            try:  # one read of the run directory serves both
                if final:
                    run = load_run(self.run_dir.root)
                else:
                    if self._live is None:
                        self._live = LiveRun(self.run_dir.root)
                    run = self._live.load()  # only the lines appended since the last rewrite
                if html_due:
                    write_run_report(run)
                if table_due:
                    self._log("\n" + text_table(run))
            except Exception as err:  # a dashboard bug must not kill a days-long run
                print(f"mad: warning: report not written: {err}", file=sys.stderr)
            if html_due:
                self._report_written = time.time()
                self._report_every = max(REPORT_EVERY_S, REPORT_COST_FACTOR * (self._report_written - now))
        if final and self.tracker is not None:
            self.tracker.close(c.name for c in self.chains
                               if len(self.run_dir.done_generations(c.name)) >= c.cfg.loop.generations)
            self.tracker = None


def science_yaml(cfg: Config) -> str:
    """science.yaml: the science keys of the run's config, written once; its records carry its SHA-256."""
    import yaml

    return yaml.safe_dump(science_dict(cfg), sort_keys=False)


def _failure_line(info: dict) -> str:
    key = info.get("key")
    return (f"generation {info.get('gen', '?')} diverged: {info.get('what', 'unknown')}"
            + (f"; likely key: {key}" if key else ""))


def run(cfg: Config, quiet: bool = False) -> artifacts.RunDir:
    return Driver(cfg, quiet=quiet).run()

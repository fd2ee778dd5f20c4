"""TensorBoard logging of a run: one event directory per chain, so TensorBoard lists the chains as
runs and overlays them on one chart per metric (tag = metric name, step = generation).

    RUN_DIR/tensorboard/<chain>/events.out.tfevents...

Runs of more than ``MAX_CHAIN_RUNS`` chains (a sweep over thousands of seeds) log summaries instead:
:class:`GroupSummaryTracker` writes one TensorBoard run per group of chains that differ only in seed,
with each metric's mean and standard deviation over the group's chains at each generation, and no
sample images. Thousands of overlaid curves would be unreadable, and one writer and one scatter plot
per chain and generation would cost more than a Gaussian generation itself.

Each chain's run also carries TensorBoard hparams (the HParams tab): ``loop.kind``, ``sample.bias``
(lambda), ``seed`` and every swept key, with the chain's metrics as the tab's columns, so runs can
be grouped and filtered by loop kind, lambda or seed. A group's summary run carries the same minus
``seed``.

Resume: each chain's writer is opened on its first logged generation with ``purge_step`` set to
that generation, so TensorBoard drops whatever an interrupted earlier session logged at that step
or later; re-logging a generation therefore replaces it instead of drawing it twice.
torch is imported when a tracker is created, not when this module is imported.
"""
from __future__ import annotations

import json
import math
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from mad.plots import is_image_batch, render_scatter, tile_images
from mad.report.names import NON_METRIC_KEYS

# Bookkeeping fields of a metrics.jsonl record are not charted, except the wall time.
_SKIP = NON_METRIC_KEYS - {"wall_s"}

SAMPLES_TAG = "samples"
MIN_IMAGE_PX = 256
MAX_CHAIN_RUNS = 64  # more chains than this: one TensorBoard run per group (GroupSummaryTracker)


def chain_log_dir(run_dir: str | Path, chain: str) -> Path:
    """Where a chain's events go; path separators in a chain name must not create sub-runs."""
    return Path(run_dir) / "tensorboard" / re.sub(r"[\\/]+", "_", chain)


def chain_hparams(record: dict) -> dict[str, Any]:
    """The hparams of a chain from one of its metrics.jsonl records: loop kind, lambda, seed and the
    swept keys (the record's dotted keys). Values TensorBoard cannot hold (lists, None) become text."""
    out: dict[str, Any] = {"loop.kind": record.get("loop"), "sample.bias": record.get("bias"),
                           "seed": record.get("seed")}
    out.update({k: v for k, v in record.items() if "." in k})
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in out.items()}


def write_hparams(writer: Any, hparams: dict[str, Any], metrics: Iterable[str]) -> None:
    """The hparams plugin's three summaries in ``writer``'s own run (``SummaryWriter.add_hparams``
    would start a sub-run and log the metric values again); ``metrics`` are the tab's columns,
    read by TensorBoard from the run's scalars of those tags."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    for summary in hparams_summaries(hparams, {m: 0.0 for m in metrics}):
        writer.file_writer.add_summary(summary)


def _scalars(record: dict) -> dict[str, float]:
    """The charted fields of a record: finite numbers that are not bookkeeping (``wall_s`` is kept)."""
    out = {}
    for key, value in record.items():
        if key in _SKIP or "." in key:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            continue  # names and flags are not scalars
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


class TensorBoardTracker:
    """Scalars and a sample grid per (chain, generation), for TensorBoard.

    Use from the driver: ``log_generation`` after each finished generation, ``close`` at the end
    (also a context manager).
    """

    def __init__(self, run_dir: str | Path, max_images: int = 64) -> None:
        self.run_dir = Path(run_dir)
        self.max_images = max_images
        self._writers: dict[str, Any] = {}
        (self.run_dir / "tensorboard").mkdir(parents=True, exist_ok=True)

    def _writer(self, chain: str, gen: int):
        writer = self._writers.get(chain)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed chain overwrites generations >= gen logged by an earlier session
            writer = SummaryWriter(log_dir=str(chain_log_dir(self.run_dir, chain)), purge_step=gen, flush_secs=30)
            self._writers[chain] = writer
        return writer

    def log_generation(self, chain: str, gen: int, metrics: dict[str, float],
                       preview_x: Optional[np.ndarray] = None) -> None:
        """Log every finite numeric metric as tag ``metric`` at step ``gen``, and a sample image.

        ``metrics`` may be the driver's whole metrics.jsonl record: its bookkeeping fields (gen, seed,
        n_real, time, dotted sweep keys, ...) are skipped; ``wall_s`` is kept.
        """
        new = chain not in self._writers
        writer = self._writer(chain, gen)
        scalars = _scalars(metrics)
        if new:
            write_hparams(writer, chain_hparams(metrics), scalars)
        for key, value in scalars.items():
            writer.add_scalar(key, value, global_step=gen)
        if preview_x is not None and len(preview_x):
            writer.add_image(SAMPLES_TAG, self._sample_image(preview_x, f"{chain} gen {gen}"), global_step=gen,
                             dataformats="HWC")
        writer.flush()  # the driver logs once per generation: make it visible now

    def _sample_image(self, x: np.ndarray, title: str) -> np.ndarray:
        """uint8 (H, W, 3): a grid of images (the report's grid), or a matplotlib scatter of vectors."""
        x = np.asarray(x)
        if is_image_batch(x):
            # numpy tiling rather than torchvision's make_grid: the same grid as report.html, and no
            # torchvision import (seconds) in a driver that may only run Gaussians
            grid = tile_images(x, max_images=self.max_images)
            if grid.ndim == 2:
                grid = np.repeat(grid[:, :, None], 3, axis=2)
            # TensorBoard shows images at their pixel size: blow tiny ones (8x8 digits) up, blocky not blurred
            scale = max(1, math.ceil(MIN_IMAGE_PX / max(grid.shape[:2])))
            return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
        return render_scatter(x, title=title)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "TensorBoardTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


ALL_CHAINS = "all_chains"


class GroupSummaryTracker:
    """TensorBoard for runs of many chains: per group of chains that differ only in seed, and per
    generation once every chain of the group has finished it, tag ``metric`` (the mean over the
    group's chains) and ``metric_std``. Same interface as :class:`TensorBoardTracker`.

    ``chains`` are the entries of chains.json (name, assignment, generations); ``done`` the records of
    generations finished before this session (a resumed run), which count towards their groups
    without being logged again.
    """

    def __init__(self, run_dir: str | Path, chains: list[dict], done: list[dict] = ()) -> None:
        self.run_dir = Path(run_dir)
        labels = {c["name"]: ",".join(f"{k}={v}" for k, v in c.get("assignment", {}).items() if k != "seed")
                  or ALL_CHAINS for c in chains}
        if len(set(labels.values())) > MAX_CHAIN_RUNS:  # as unreadable as one run per chain: one summary
            labels = {name: ALL_CHAINS for name in labels}
        self._group = labels
        self._expected: dict[tuple[str, int], int] = {}
        for c in chains:
            for gen in range(1, int(c["generations"]) + 1):
                key = (labels[c["name"]], gen)
                self._expected[key] = self._expected.get(key, 0) + 1
        self._values: dict[tuple[str, int], list[dict[str, float]]] = {}
        self._writers: dict[str, Any] = {}
        (self.run_dir / "tensorboard").mkdir(parents=True, exist_ok=True)
        for rec in done:
            self._add(rec["chain"], int(rec["gen"]), rec)

    def _add(self, chain: str, gen: int, record: dict) -> Optional[tuple[str, list[dict[str, float]]]]:
        key = (self._group[chain], gen)
        vals = self._values.setdefault(key, [])
        vals.append(_scalars(record))
        if len(vals) < self._expected[key]:
            return None
        del self._values[key]
        return key[0], vals

    def log_generation(self, chain: str, gen: int, metrics: dict[str, float],
                       preview_x: Optional[np.ndarray] = None) -> None:
        """Count a finished generation of ``chain``; log its group's summary when the group is complete."""
        full = self._add(chain, gen, metrics)
        if full is None:
            return
        group, vals = full
        writer = self._writers.get(group)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(chain_log_dir(self.run_dir, group)), purge_step=gen, flush_secs=30)
            self._writers[group] = writer
            if group != ALL_CHAINS:  # the chains of a group differ only in seed
                tags = sorted({k for v in vals for k in v})
                write_hparams(writer, {k: v for k, v in chain_hparams(metrics).items() if k != "seed"},
                              tags + [f"{t}_std" for t in tags])
        for tag in sorted({k for v in vals for k in v}):
            xs = np.array([v[tag] for v in vals if tag in v])
            writer.add_scalar(tag, float(xs.mean()), global_step=gen)
            writer.add_scalar(f"{tag}_std", float(xs.std()), global_step=gen)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "GroupSummaryTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- MLflow
MLFLOW_DIR = "mlflow"  # RUN_DIR/mlflow unless report.tracker_dir says otherwise
MLFLOW_DB = "mlflow.db"
FLUSH_EVERY_S = 10.0  # metrics are sent in batches: one SQLite transaction costs ~5-10 ms
CHAIN_TAG = "mad.chain"


def mlflow_uri(store_dir: str | Path) -> str:
    """The tracking URI of a local store: SQLite (MLflow's file store is in maintenance mode)."""
    return f"sqlite:///{Path(store_dir).resolve() / MLFLOW_DB}"


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class MlflowTracker:
    """One MLflow run per chain in an experiment named after the run directory, in a local SQLite
    store (no server): params = the chain's resolved config keys, tags = the chain's name and the
    run's report path, metrics = every finite numeric metric per generation (step = generation).

    Everything MLflow does happens on one background thread, so the driver never waits for it:
    ``log_generation`` only queues; the thread opens (or creates) the store, creates a chain's run on
    its first metrics, and sends the queued metrics in one batch per chain at most every
    ``FLUSH_EVERY_S`` (a SQLite transaction costs ~5-50 ms). ``close`` sends the rest, marks the
    finished chains' runs FINISHED and waits for the thread. A resumed run finds its chains' runs again
    by their ``mad.chain`` tag. A failure of the tracker is one warning and the end of tracking, never
    the end of the run.
    """

    def __init__(self, run_dir: str | Path, chains: list, store_dir: Optional[str | Path] = None,
                 report: Optional[str | Path] = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.store_dir = Path(store_dir) if store_dir else self.run_dir / MLFLOW_DIR
        self.uri = mlflow_uri(self.store_dir)
        self.report = None if report is None else str(Path(report).resolve())
        self._chains = {c.name: c for c in chains}
        self._runs: dict[str, str] = {}
        self._queue: queue.Queue = queue.Queue()
        self.broken = False
        self._thread = threading.Thread(target=self._work, name="mad-mlflow", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the driver's side
    def log_generation(self, chain: str, gen: int, metrics: dict[str, float],
                       preview_x: Optional[np.ndarray] = None) -> None:
        if not self.broken:
            self._queue.put((chain, gen, int(time.time() * 1000), _scalars(metrics)))

    def close(self, finished: Iterable[str] = ()) -> None:
        """Send what is queued, mark the MLflow runs of ``finished`` chains FINISHED (the others stay
        RUNNING), and wait for it."""
        self._queue.put((_STOP, list(finished)))
        self._thread.join()

    # ---------------------------------------------------------------- the thread's side
    def _work(self) -> None:
        try:
            self._open()
            buffer: dict[str, list] = {}
            flushed = time.monotonic()
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, FLUSH_EVERY_S - (time.monotonic() - flushed)))
                except queue.Empty:
                    item = None
                if item is not None and item[0] is _STOP:
                    self._flush(buffer)
                    for chain in item[1]:
                        if chain in self._runs:
                            self.client.set_terminated(self._runs[chain], "FINISHED")
                    return
                if item is not None:
                    chain, gen, stamp, values = item
                    buffer.setdefault(chain, []).extend(self._metric(k, v, stamp, gen) for k, v in values.items())
                if time.monotonic() - flushed >= FLUSH_EVERY_S:
                    self._flush(buffer)
                    flushed = time.monotonic()
        except Exception as err:  # a tracker's failure must not lose a days-long run
            self.broken = True
            print(f"mad: warning: mlflow tracking stopped ({self.uri}): {err}", file=sys.stderr, flush=True)
            while True:  # let close() return
                try:
                    if self._queue.get(timeout=3600)[0] is _STOP:
                        return
                except queue.Empty:
                    continue

    def _open(self) -> None:
        import logging

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        # MLflow and alembic announce every table they create at INFO: noise on the run's console
        # (after the import, which sets MLflow's own level)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._metric = Metric
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        name = str(self.run_dir)
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            name, artifact_location=(self.store_dir / "artifacts").resolve().as_uri(),
            tags={"mad.run_dir": name})
        for run in self.client.search_runs([self.experiment_id], max_results=50000):
            chain = run.data.tags.get(CHAIN_TAG)
            if chain in self._chains:
                self._runs.setdefault(chain, run.info.run_id)

    def _run_id(self, chain: str) -> str:
        run_id = self._runs.get(chain)
        if run_id is None:
            from mlflow.entities import Param

            from mad.config import config_to_dict

            tags = {CHAIN_TAG: chain, "mad.run_dir": str(self.run_dir)}
            if self.report:
                tags["mad.report"] = self.report
            run_id = self.client.create_run(self.experiment_id, run_name=chain, tags=tags).info.run_id
            cfg = config_to_dict(self._chains[chain].cfg)
            cfg.pop("sweep", None)
            params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) or v is None else str(v))
                      for k, v in sorted(_flat(cfg).items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i:i + 100])
            self._runs[chain] = run_id
        return run_id

    def _flush(self, buffer: dict[str, list]) -> None:
        for chain, metrics in buffer.items():
            run_id = self._run_id(chain)
            for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        buffer.clear()


_STOP = object()


# ----------------------------------------------------------------------------- what the driver opens
class Trackers:
    """The run's trackers behind one interface: TensorBoard and/or MLflow, as configured."""

    def __init__(self, trackers: list) -> None:
        self.trackers = trackers

    def log_generation(self, chain: str, gen: int, metrics: dict[str, float],
                       preview_x: Optional[np.ndarray] = None) -> None:
        for t in self.trackers:
            t.log_generation(chain, gen, metrics, preview_x)

    def close(self, finished: Iterable[str] = ()) -> None:
        finished = list(finished)
        for t in self.trackers:
            if isinstance(t, MlflowTracker):
                t.close(finished)
            else:
                t.close()


def open_trackers(cfg: Any, run_dir: str | Path, chains: list, earlier: list[dict]) -> Optional[Trackers]:
    """The trackers ``cfg.report`` asks for (None: none). ``chains``: the run's planned chains;
    ``earlier``: records of generations finished before this session (the group summaries count them)."""
    out: list = []
    if cfg.report.tensorboard:
        if len(chains) > MAX_CHAIN_RUNS:  # summaries per group: see the module's docstring
            out.append(GroupSummaryTracker(run_dir, [c.describe() for c in chains], earlier))
        else:
            out.append(TensorBoardTracker(run_dir))
    if getattr(cfg.report.tracker, "value", cfg.report.tracker) == "mlflow":
        out.append(MlflowTracker(run_dir, chains, cfg.report.tracker_dir,
                                 Path(run_dir) / "report.html" if cfg.report.html else None))
    return Trackers(out) if out else None

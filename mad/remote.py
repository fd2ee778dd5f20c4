"""Ray at the edge: starting or joining Ray, the task wrappers with their resource requests, and
the translation of Ray's errors into :class:`TaskFailure`.

The only module of ``mad`` that imports Ray core (``mad.distributed`` imports Ray Train); only
public Ray APIs are used. The wrapped functions live in ``mad.tasks``.

A local Ray is private to the run: its files live in a fresh folder ``<ray.temp_dir or
tmp>/mad-ray-<uid>/XXXXXXXX`` (the parent made 0700, so other users cannot read sockets or logs),
passed to Ray through its ``RAY_TMPDIR`` environment variable; :mod:`mad.reaper` ends Ray's
processes and removes that folder when the driver exits, however it exits.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import logging
import os
import re
import stat
import secrets
import shutil
import tempfile
import warnings
from typing import Any, Optional

import ray

from mad import tasks
from mad.progress import BarBoard, BarSpec, worker_bars
from mad.config import RayConfig, ResourcesConfig


class TaskFailure(RuntimeError):
    """A task raised (or its worker died for good): ``summary`` is one line, ``details`` the full
    traceback as Ray reported it."""

    def __init__(self, summary: str, details: str, cause: Optional[BaseException] = None):
        super().__init__(summary)
        self.summary = summary
        self.details = details
        self.cause = cause  # the exception the task raised (None: a worker or object was lost)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def get(refs: Any, timeout: Optional[float] = None) -> Any:
    """``ray.get`` with Ray's errors as :class:`TaskFailure`."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as err:
        cause = task_error_cause(err)  # the first failure of a train -> sample -> evaluate pipeline
        first = (str(cause).strip().splitlines() or [""])[0]
        raise TaskFailure(f"{type(cause).__name__}: {first}".rstrip(": "), _ANSI.sub("", str(err)), cause) from None
    except ray.exceptions.RayError as err:  # a worker that died past its retries, a lost object
        first = (str(err).strip().splitlines() or [""])[0]
        raise TaskFailure(f"{type(err).__name__}: {first}", _ANSI.sub("", str(err))) from None


def private_temp_root(base: Optional[str]) -> str:
    """A fresh folder for one local Ray, inside ``<base or tmp>/mad-ray-<uid>`` (mode 0700)."""
    parent = os.path.join(base or tempfile.gettempdir(), f"mad-ray-{os.getuid()}")
    os.makedirs(parent, mode=0o700, exist_ok=True)
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # planted by someone else (or a symlink)
        raise PermissionError(errno.EPERM, "not a directory of yours; set ray.temp_dir", parent)
    os.chmod(parent, 0o700)  # also when an older version left it world-readable
    # short: Ray's socket paths below it must stay under the 107-byte limit of a Unix socket path
    return tempfile.mkdtemp(prefix="", dir=parent)


_TEMP_ROOT: Optional[str] = None
_REAPER_FD: Optional[int] = None  # never closed: the kernel closes it when this process ends


def init(cfg: RayConfig, quiet: bool = False, dashboard: bool = False) -> None:
    """Join the cluster at ``ray.address`` / $RAY_ADDRESS, or start a private local Ray."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # OpenMP threads that spin at barriers make small torch ops 15-60x slower on busy cores.
    runtime_env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning",
                                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    if address:
        with _keep_sigterm_handler():
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=not quiet,
                     logging_level="ERROR" if quiet else "INFO")
        return
    # A local Ray keeps its files out of the user's home folder: session files under a temp
    # dir, and the auth token in this process's environment (inherited by Ray's processes)
    # instead of ~/.ray/auth_token.
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Token auth stays on (Ray's default); its notice about that is noise for a private local Ray.
    # (A logger name, not an API: silencing it cannot break on an upgrade.)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    global _TEMP_ROOT, _REAPER_FD
    from mad import reaper

    _TEMP_ROOT = private_temp_root(cfg.temp_dir)
    # The watcher holds the pipe's read end; this process keeps the write end open until it exits.
    _REAPER_FD = reaper.start(_TEMP_ROOT)
    os.environ["RAY_TMPDIR"] = _TEMP_ROOT  # Ray's own variable for its temp root; inherited by its processes
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    atexit.register(shutdown)
    # The dashboard costs start-up time; Ray Train's bookkeeping needs its state API.
    with _keep_sigterm_handler():
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=dashboard,
                 runtime_env=runtime_env, log_to_driver=not quiet,
                 logging_level="ERROR" if quiet else "WARNING", configure_logging=True)
    global _LOCAL_RESOURCES
    _LOCAL_RESOURCES = dict(ray.cluster_resources())


@contextlib.contextmanager
def _keep_sigterm_handler():
    """SIGTERM (a batch system, ``kill``) ends the driver as Ctrl-C does, with one line, instead of
    the ``sys.exit(15)`` of the handler ``ray.init`` installs: the handler in place before
    ``ray.init`` (mad.cli's) is put back after it, and a SIGTERM that Ray's handler caught during
    ``ray.init`` is handed to it. Without one (an embedding program), SIGTERM raises
    KeyboardInterrupt."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    if not callable(before):
        def before(signum, frame):
            raise KeyboardInterrupt
    try:
        yield
    except SystemExit as err:  # Ray's handler ran: sys.exit(SIGTERM)
        if err.code != signal.SIGTERM:
            raise
        before(signal.SIGTERM, None)
        raise KeyboardInterrupt from None
    finally:
        try:
            signal.signal(signal.SIGTERM, before)
        except ValueError:  # not the main thread (an embedding program): keep Ray's handler
            pass


def disconnect_from_cluster() -> None:
    """Disconnect from a joined cluster (``ray.address``), flushing this job's task events; a private
    local Ray is left to mad.reaper, which ends it once the driver is gone."""
    if ray.is_initialized() and _TEMP_ROOT is None:
        ray.shutdown()


def shutdown() -> None:
    """Stop a local Ray and remove its temporary folder (joined clusters are only disconnected)."""
    global _TEMP_ROOT
    global _LOCAL_RESOURCES
    if ray.is_initialized():
        ray.shutdown()
    _LOCAL_RESOURCES = None
    if _TEMP_ROOT is not None:
        shutil.rmtree(_TEMP_ROOT, ignore_errors=True)
        _TEMP_ROOT = None


def start_bar_board() -> Any:
    """The actor that collects the workers' bars for the driver to draw (see ``mad.progress``).
    It asks for no CPU, so it never holds back a task."""
    return ray.remote(num_cpus=0, max_restarts=0)(BarBoard).remote()


def chain_slots(res: ResourcesConfig) -> int:
    """How many chains' generations can train at once on the cluster (at least 1)."""
    total = _cluster_resources()
    fits = [total.get("CPU", 1) / res.train_cpus] if res.train_cpus > 0 else []
    if res.train_gpus > 0:
        fits.append(total.get("GPU", 0) / res.train_gpus)
    return max(1, int(min(fits))) if fits else cluster_cpus()


def _use_assigned_resources() -> Optional[str]:
    """Threads from the CPUs Ray gave this task (workers start with OMP_NUM_THREADS=1); CUDA if it got a GPU."""
    import torch

    # Arrays from Ray's object store are read-only zero-copy views. Tasks only read their inputs,
    # so torch's "The given NumPy array is not writable" warning is noise in the user's console.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(round(assigned.get("CPU", 1)))))
    if assigned.get("GPU", 0) > 0 and torch.cuda.is_available():
        return "cuda"
    return "cpu"


@ray.remote
def _train(job: tasks.TrainJob, pool, init_state, bars: Optional[BarSpec], *flat_shards):
    device = _use_assigned_resources()
    with worker_bars(bars) as on:
        return tasks.train_generation(dataclasses.replace(job, progress=on), pool,
                                      tasks.split_shards(flat_shards, job.shard_counts),
                                      init_state=init_state, device=device)


@ray.remote
def _train_data_parallel(job: tasks.TrainJob, pool, init_state, bars: Optional[BarSpec], *flat_shards, resources):
    """The launcher of a Ray Train (DDP) run: the same arguments and result as ``_train``.

    It only assembles the data and waits, so it asks for no CPU (see ``_TrainStage``); the
    Ray Train workers ask for ``resources.train_cpus`` / ``train_gpus`` each.
    """
    from mad import distributed

    return distributed.train_generation_data_parallel(job, pool, tasks.split_shards(flat_shards, job.shard_counts),
                                                      resources, init_state=init_state, bars=bars)


class _TrainStage:
    """``stages.train``: the plain training task, or the data-parallel launcher when the call's
    ``train.num_workers > 1``. Chosen per call, as a sweep may vary ``train.num_workers``."""

    def __init__(self, res: ResourcesConfig):
        self.res = res
        self.single = _train.options(num_cpus=res.train_cpus, num_gpus=res.train_gpus, max_retries=res.max_retries)
        # Zero CPUs: a launcher holding a CPU while its workers wait for theirs could starve them
        # (on a 2-CPU machine, 2 workers of 1 CPU could never start). Its retries cover the death of
        # the launcher's process; Ray Train reruns the training itself when a worker dies.
        self.data_parallel = _train_data_parallel.options(num_cpus=0, max_retries=res.max_retries)

    def remote(self, job: tasks.TrainJob, pool: Any, init_state: Any, bars: Optional[BarSpec],
               *flat_shards: Any) -> Any:
        """``pool``, ``init_state`` and the shards may be object refs: Ray resolves top-level arguments.
        ``bars`` says where the worker's progress bars go (None: no bars)."""
        # only a family with a gradient loop to split declares supports_data_parallel; a fit in one pass does not
        if job.train.num_workers > 1 and job.family.supports_data_parallel:
            return self.data_parallel.remote(job, pool, init_state, bars, *flat_shards, resources=self.res)
        return self.single.remote(job, pool, init_state, bars, *flat_shards)


@ray.remote
def _sample(job: tasks.SampleJob, state, bars: Optional[BarSpec]):
    device = _use_assigned_resources()
    with worker_bars(bars) as on:
        return tasks.sample_shard(dataclasses.replace(job, progress=on), state, device=device)


@ray.remote
def _evaluate(job: tasks.EvalJob, reference, state, *shards):
    device = _use_assigned_resources()
    return tasks.evaluate_generation(job, reference, state, shards, device=device)


@ray.remote(num_returns=2)
def _stage(job: tasks.StageJob, pool, reference, metrics, *shards):
    """The stage after sampling: (the synthetic set later generations train on, the generation's
    metrics with the stage's counts added), so the driver waits on one ref per generation still."""
    _use_assigned_resources()
    synth, counts = tasks.apply_stage(job, pool, reference, shards)
    return synth, {**metrics, **counts}


@ray.remote(num_returns=2)
def _run_block(chains, pool, reference, real, n_gens, keep_samples, keep_models):
    device = _use_assigned_resources()
    return tasks.run_block(chains, pool, reference, real, n_gens, keep_samples, keep_models, device=device)


@ray.remote
def _prepare_reference(ref_x, ref_y, pool, metrics, classifier_state=None, seed=0, reward=False, reward_state=None):
    _use_assigned_resources()
    return tasks.prepare_reference(ref_x, ref_y, pool, metrics, classifier_state, seed, reward, reward_state)


class Stages:
    """Task handles with the resources each stage asks for."""

    def __init__(self, res: ResourcesConfig):
        retry = {"max_retries": res.max_retries}
        self.train = _TrainStage(res)
        self.sample = _sample.options(num_cpus=res.sample_cpus, num_gpus=res.sample_gpus, **retry)
        self.evaluate = _evaluate.options(num_cpus=res.eval_cpus, num_gpus=res.eval_gpus, **retry)
        # curation scores the candidates with the metrics' classifier: it asks for what evaluation asks for
        self.stage = _stage.options(num_cpus=res.eval_cpus, num_gpus=res.eval_gpus, **retry)
        # A block trains, samples and evaluates: it asks for what training asks for.
        self.run_block = _run_block.options(num_cpus=res.train_cpus, num_gpus=res.train_gpus, **retry)
        self.prepare_reference = _prepare_reference.options(num_cpus=res.eval_cpus, num_gpus=res.eval_gpus,
                                                            **retry)


def task_error_cause(err: BaseException) -> BaseException:
    """The exception raised inside a task, unwrapped from Ray's RayTaskError (public ``cause``);
    ``err`` itself when it is not a task's error. A task that failed because its input's task
    failed carries that task's error, so the first failure of a train -> sample -> evaluate
    chain is what comes back."""
    while isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None and err.cause is not err:
        err = err.cause
    return err


def cluster_cpus() -> int:
    """CPUs of the whole cluster (at least 1): how many blocks of chains to keep in flight."""
    return max(1, int(_cluster_resources().get("CPU", 1)))


_LOCAL_RESOURCES: Optional[dict] = None  # a private local Ray's totals, read once after it started


def _cluster_resources() -> dict:
    """The cluster's total resources. A private local Ray's are fixed, so they are read once when it
    starts (a GCS state query per run was seen to hang in a long-lived session); a joined cluster
    can grow or shrink, so it is asked each time."""
    global _LOCAL_RESOURCES
    if _TEMP_ROOT is not None:
        if _LOCAL_RESOURCES is None:
            _LOCAL_RESOURCES = dict(ray.cluster_resources())
        return _LOCAL_RESOURCES
    return ray.cluster_resources()


put = ray.put
wait = ray.wait

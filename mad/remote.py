"""Ray at the edge: starting or joining Ray, and the task wrappers with their resource requests.

The only module of ``mad`` that imports Ray. The wrapped functions live in ``mad.tasks``.
"""
from __future__ import annotations

import logging
import os
import secrets
import tempfile
import warnings
from typing import Optional

import ray

from mad import tasks
from mad.config import RayConfig, ResourcesConfig


def init(cfg: RayConfig, quiet: bool = False, dashboard: bool = False) -> None:
    """Join the cluster at ``ray.address`` / $RAY_ADDRESS, or start a private local Ray."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # OpenMP threads that spin at barriers make small torch ops 15-60x slower on busy cores.
    runtime_env = {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning",
                                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=not quiet,
                 logging_level="ERROR" if quiet else "INFO")
        return
    # A local Ray keeps its files out of the user's home folder: session files under a temp
    # dir, and the auth token in this process's environment (inherited by Ray's processes)
    # instead of ~/.ray/auth_token.
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Token auth stays on (Ray's default); its notice about that is noise for a private local Ray.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    temp_dir = cfg.temp_dir or os.path.join(tempfile.gettempdir(), "mad-ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The dashboard costs start-up time; Ray Train's bookkeeping needs its state API.
    ray.init(num_cpus=cfg.num_cpus, _temp_dir=temp_dir, include_dashboard=dashboard,
             runtime_env=runtime_env, log_to_driver=not quiet,
             logging_level="ERROR" if quiet else "WARNING", configure_logging=True)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


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


def _split_shards(flat_shards: tuple, shard_counts) -> list:
    shards, i = [], 0
    for count in shard_counts:
        shards.append(flat_shards[i:i + count])
        i += count
    return shards


@ray.remote
def _train(pool, seed, gen, manifest, synth_gens, shard_counts, family, model, train, init_state, progress,
           *flat_shards):
    device = _use_assigned_resources()
    return tasks.train_generation(pool, seed, gen, manifest, synth_gens, _split_shards(flat_shards, shard_counts),
                                  family, model, train, init_state=init_state, progress=progress, device=device)


@ray.remote
def _train_data_parallel(pool, seed, gen, manifest, synth_gens, shard_counts, family, model, train, init_state,
                         progress, *flat_shards, resources):
    """The launcher of a Ray Train (DDP) run: the same arguments and result as ``_train``.

    It only assembles the data and waits, so it asks for no CPU (see ``_TrainStage``); the
    Ray Train workers ask for ``resources.train_cpus`` / ``train_gpus`` each.
    """
    from mad import distributed

    return distributed.train_generation_data_parallel(pool, seed, gen, manifest, synth_gens,
                                                      _split_shards(flat_shards, shard_counts), family, model,
                                                      train, resources, init_state=init_state, progress=progress)


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

    def remote(self, pool, seed, gen, manifest, synth_gens, shard_counts, family, model, train, init_state,
               progress, *flat_shards):
        args = (pool, seed, gen, manifest, synth_gens, shard_counts, family, model, train, init_state, progress,
                *flat_shards)
        # only a family with a gradient loop to split declares supports_data_parallel; a fit in one pass does not
        if train.num_workers > 1 and family.supports_data_parallel:
            return self.data_parallel.remote(*args, resources=self.res)
        return self.single.remote(*args)


@ray.remote
def _sample(state, n, shard, pool_shape, num_classes, class_probs, seed, gen, family, model, sample, progress):
    device = _use_assigned_resources()
    return tasks.sample_shard(state, n, shard, pool_shape, num_classes, class_probs, seed, gen, family,
                              model, sample, progress=progress, device=device)


@ray.remote
def _evaluate(reference, state, n_eval, metrics, family, bias, real, *shards):
    device = _use_assigned_resources()
    return tasks.evaluate_generation(reference, state, shards, n_eval, metrics, family, bias, real, device=device)


@ray.remote
def _prepare_reference(ref_x, ref_y, pool, metrics):
    _use_assigned_resources()
    return tasks.prepare_reference(ref_x, ref_y, pool, metrics)


class Stages:
    """Task handles with the resources each stage asks for."""

    def __init__(self, res: ResourcesConfig):
        retry = {"max_retries": res.max_retries}
        self.train = _TrainStage(res)
        self.sample = _sample.options(num_cpus=res.sample_cpus, num_gpus=res.sample_gpus, **retry)
        self.evaluate = _evaluate.options(num_cpus=res.eval_cpus, num_gpus=res.eval_gpus, **retry)
        self.prepare_reference = _prepare_reference.options(num_cpus=res.eval_cpus, num_gpus=res.eval_gpus,
                                                            **retry)


put = ray.put
get = ray.get
wait = ray.wait

"""Data-parallel training of one generation with Ray Train's ``TorchTrainer`` (DDP).

Used when ``train.num_workers > 1``: ``mad.remote`` starts a light launcher task that calls
:func:`train_generation_data_parallel`, which assembles the training set, starts
``train.num_workers`` Ray Train workers (each with ``resources.train_cpus`` CPUs and
``resources.train_gpus`` GPUs) and runs the family's ``train`` (one that declares
``supports_data_parallel``, e.g. ``mad.models.diffusion``) on every one of them
inside the process group Ray Train sets up (NCCL on GPUs, gloo on CPUs). The weights that come
back are the same flat CPU state dict of EMA weights as the single-worker path returns.

No shared filesystem is needed:

* the data reach the workers as one Ray object reference (put once by the launcher);
* the weights come back as the rank-0 worker's *return value*, which Ray Train (v2, Ray >= 2.60)
  hands to ``Result.return_value`` through Ray's own object transfer (worker -> controller ->
  launcher). Ray Train's checkpoints would instead be written to ``RunConfig.storage_path``,
  which must be shared by all nodes of a multi-node cluster; this path reports no checkpoint at
  all, so the storage path is only a local scratch folder for Ray Train's bookkeeping. (A small
  actor that rank 0 sends the weights to would work as well, at the cost of one more process.)

Ray Train is imported lazily: ``import mad.remote`` must work without ``ray[train]``
installed as long as every run trains with one worker.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from mad import tasks
from mad.config import ModelConfig, ResourcesConfig, TrainConfig
from mad.data import RealPool
from mad.models import ModelFamily, get_family
from mad.progress import BarSpec


@dataclass
class DataParallelResult:
    """What a data-parallel training returns: the weights, and what each rank saw (for checks)."""

    state: dict  # flat CPU state dict of the EMA weights, the same keys as the single-worker path
    world_size: int  # the size of the torch.distributed process group the ranks trained in
    ranks: list[int]  # the rank of every worker, gathered from all of them
    digests: list[str]  # SHA-256 of every rank's final EMA weights: all equal when DDP kept them in sync


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].numpy().tobytes())
    return h.hexdigest()


def _train_loop_per_worker(config: dict) -> Optional[DataParallelResult]:
    """The body of one Ray Train worker: train on this rank's share of each batch."""
    import ray
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from mad.progress import worker_bars

    # Ray starts workers with one thread; the worker owns the CPUs it asked for.
    torch.set_num_threads(max(1, int(round(config["cpus_per_worker"]))))
    device = "cpu"
    if config["use_gpu"]:
        device = str(ray.train.torch.get_device())  # this worker's GPU, e.g. "cuda:0"
        torch.cuda.set_device(device)  # NCCL's all_gather_object below works on the current device
    x, y, init_state = ray.get(config["data"])
    # Arrays from the object store are read-only views of shared memory; the training copies batches
    # out of them anyway, but torch.from_numpy warns on read-only input, so take a private copy.
    x = np.array(x)
    y = None if y is None else np.array(y)
    with worker_bars(config["progress"]) as on:  # this worker's bars drawn on the driver's console
        state = config["family"].train(x, y, config["num_classes"], config["model"], config["train"], config["seed"],
                                       init_state=init_state, progress=on, device=device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, (rank, _digest(state)))
    if rank != 0:
        return None  # Ray Train keeps only rank 0's return value; don't ship the others
    return DataParallelResult(state=state, world_size=world_size, ranks=[r for r, _ in gathered],
                              digests=[d for _, d in gathered])


def train_data_parallel(x: np.ndarray, y: Optional[np.ndarray], num_classes: int, model: ModelConfig,
                        train: TrainConfig, seed: int, resources: ResourcesConfig,
                        init_state: Optional[dict] = None, progress: Optional[BarSpec] = None,
                        family: Optional[ModelFamily] = None) -> DataParallelResult:
    """Train a model of ``family`` (default: the one ``model.family`` names) on ``train.num_workers`` Ray Train workers (DDP); Ray must be running.

    Each worker asks for ``resources.train_cpus`` CPUs and ``resources.train_gpus`` GPUs.
    The global batch is ``train.batch_size``, split between the workers.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    n = int(train.num_workers)
    # Checked here, before any worker starts: Ray Train would rerun a failing training max_failures times.
    if train.batch_size < n:
        raise ValueError(f"train.batch_size ({train.batch_size}) must be at least train.num_workers ({n})")
    use_gpu = resources.train_gpus > 0
    per_worker = {"CPU": float(resources.train_cpus)}
    if use_gpu:
        per_worker["GPU"] = float(resources.train_gpus)
    config = {
        # one object for all workers: put once here, fetched by each worker (zero-copy on its node)
        "data": ray.put((x, y, init_state)),
        "family": family if family is not None else get_family(model.family),
        "num_classes": num_classes, "model": model, "train": train, "seed": seed, "progress": progress,
        "use_gpu": use_gpu, "cpus_per_worker": resources.train_cpus,
    }
    # Ray Train keeps its run bookkeeping under storage_path; nothing this run needs is written
    # there (no checkpoints), so a private local scratch folder serves on any cluster.
    # Inside this run's private Ray folder when Ray was started by mad (removed with it, even after a kill).
    scratch = tempfile.mkdtemp(prefix="mad-ray-train-", dir=os.environ.get("RAY_TMPDIR"))
    try:
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=n, use_gpu=use_gpu, resources_per_worker=per_worker),
            # a worker that dies reruns the whole training, as Ray reruns a plain training task
            run_config=RunConfig(storage_path=scratch, name=f"mad-train-{secrets.token_hex(4)}",
                                 failure_config=FailureConfig(max_failures=resources.max_retries)),
        )
        result = trainer.fit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = getattr(result, "return_value", None)
    if not isinstance(out, DataParallelResult):
        raise RuntimeError(
            "Ray Train returned no weights: the data-parallel path needs Ray Train v2 with "
            "Result.return_value (Ray >= 2.60, where v2 is the default; do not set RAY_TRAIN_V2_ENABLED=0). "
            f"Installed: Ray {ray.__version__}, RAY_TRAIN_V2_ENABLED={os.environ.get('RAY_TRAIN_V2_ENABLED')!r}"
        )
    return out


def train_generation_data_parallel(job: tasks.TrainJob, pool: RealPool,
                                   synth_shards: Sequence[Sequence[tasks.Shard]], resources: ResourcesConfig,
                                   init_state: Optional[dict] = None, bars: Optional[BarSpec] = None) -> dict:
    """``tasks.train_generation`` for ``train.num_workers > 1``: the same data and seed, trained with DDP."""
    x, y, train_seed = tasks.training_inputs(job, pool, synth_shards)
    state = train_data_parallel(x, y, pool.num_classes, job.model, job.train, train_seed,
                                resources, init_state=init_state, progress=bars, family=job.family).state
    from mad.divergence import check_state

    check_state(state, job.family)  # the same check as the single-worker path (tasks.train_generation)
    return state

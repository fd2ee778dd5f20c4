"""Data-parallel training (train.num_workers > 1): Ray Train's TorchTrainer, DDP over gloo on CPU.

Ray Train starts a worker group per training (tens of seconds on a loaded 2-core machine), so
this file runs exactly two trainings: one called directly, one through the driver.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mad import artifacts, seeding
from mad.config import (DataConfig, DataName, Family, ModelConfig, ResourcesConfig, TrainConfig, load_config)
from mad.data.images import load_images
from mad.models import diffusion
from mad.models.diffusion import _rank_slice

SHAPE = (1, 8, 8)


def tiny_model() -> ModelConfig:
    return ModelConfig(family=Family.diffusion, channels=[16, 32], num_train_timesteps=100)


@pytest.mark.parametrize("batch_size,world_size", [(32, 2), (33, 2), (7, 3), (5, 5), (64, 1)])
def test_rank_slices_partition_the_global_batch(batch_size, world_size):
    slices = [_rank_slice(batch_size, r, world_size) for r in range(world_size)]
    covered = [i for s in slices for i in range(batch_size)[s]]
    assert covered == list(range(batch_size))  # disjoint, in order, nothing left out
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_global_batch_smaller_than_the_workers_is_refused_before_any_worker_starts():
    from mad.distributed import train_data_parallel

    x = np.zeros((4, *SHAPE), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"train.batch_size \(2\) must be at least train.num_workers \(3\)"):
        train_data_parallel(x, None, 0, tiny_model(), TrainConfig(batch_size=2, num_workers=3), seed=0,
                            resources=ResourcesConfig())


def test_ddp_on_two_workers_returns_the_single_worker_state_form(ray_local):
    from mad.distributed import train_data_parallel

    tx, ty, _, _, k = load_images(DataConfig(name=DataName.digits, n_reference=300), seed=0)
    model = tiny_model()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        init = {n: v.detach().clone() for n, v in diffusion.build_unet(model, SHAPE, k).state_dict().items()}
    # 33 does not split evenly: the ranks train on 17 and 16 images of each global batch
    cfg = TrainConfig(steps=20, batch_size=33, lr=1e-3, num_workers=2)
    result = train_data_parallel(tx, ty, k, model, cfg, seed=0, resources=ResourcesConfig(train_cpus=1),
                                 init_state=init)

    # Two ranks really trained together in one torch.distributed group ...
    assert result.world_size == 2
    assert sorted(result.ranks) == [0, 1]
    # ... and DDP kept them in sync: the ranks drew different noise (seed + rank), so without the
    # gradient all-reduce their final EMA weights would differ; with it they agree to the bit.
    assert len(set(result.digests)) == 1

    single = diffusion.train(tx, ty, k, model, TrainConfig(steps=1, batch_size=33), seed=0, device="cpu")
    state = result.state
    assert list(state) == list(single)  # same names, same order, no "module." prefix
    for name in single:
        assert state[name].shape == single[name].shape, name
        assert state[name].dtype == single[name].dtype, name
        assert state[name].device.type == "cpu" and state[name].is_contiguous(), name
        assert torch.isfinite(state[name]).all(), name
    changed = sum(not torch.equal(state[n], init[n]) for n in init)
    assert changed == len(init)  # every tensor moved away from the given initial weights


def test_driver_trains_with_two_workers_and_writes_loadable_weights(ray_local, tmp_path):
    from mad.driver import Driver

    out = tmp_path / "run"
    cfg = load_config(None, [
        "sweep={}", "loop.kind=fully_synthetic", "loop.generations=1", "loop.n_init=200",
        "data.n_reference=300", "model.channels=[16,32]", "model.num_train_timesteps=100",
        "train.steps=10", "train.batch_size=16", "train.num_workers=2", "resources.train_cpus=1",
        "sample.steps=5", "sample.batch_size=100", "metrics.features=raw", "metrics.n_eval=50",
        "report.html=false", "report.tensorboard=false", "report.progress=false", f"out={out}",
    ])
    Driver(cfg, quiet=True).run()

    (chain,) = json.loads((out / "chains.json").read_text())
    gen_dir = out / chain["name"] / "gen_001"
    assert artifacts.RunDir(out).is_done(chain["name"], 1)
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(rec["fid"]) and rec["n_real"] == 200
    state = artifacts.read_state(gen_dir / artifacts.MODEL)
    reference = diffusion.build_unet(cfg.model, SHAPE, 10).state_dict()
    assert {n: tuple(v.shape) for n, v in state.items()} == {n: tuple(v.shape) for n, v in reference.items()}
    # The saved weights are the ones the sampling stage used: they reproduce the saved samples.
    saved = artifacts.read_npz(gen_dir / artifacts.SAMPLES)
    x, y = diffusion.sample(state, len(saved["x"]), 10, saved["x"].shape[1:], cfg.model, cfg.sample,
                            seeding.derive_seed(cfg.seed, 1, seeding.SAMPLE, 0), device="cpu")
    np.testing.assert_array_equal(x, saved["x"])
    np.testing.assert_array_equal(y, saved["y"])

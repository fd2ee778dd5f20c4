"""The gan family (a small DCGAN, truncation psi = lambda) on real 8x8 digits: CPU, seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from mad import artifacts
from mad.config import DataConfig, DataName, GANConfig, ModelConfig, SampleConfig, TrainConfig
from mad.data import load_real
from mad.models import get_family

MODEL = ModelConfig(family="gan", gan=GANConfig(latent_dim=8, width=8))


@pytest.fixture(scope="module")
def trained():
    pool, _ = load_real(DataConfig(name=DataName.digits, n_reference=500), seed=0)
    x = pool.x[:200]
    state = get_family("gan").train(x, pool.y[:200], 10, MODEL, TrainConfig(steps=30, batch_size=32, lr=2e-4), seed=0)
    return x, state


def test_shapes_truncation_and_reload(trained, tmp_path):
    x, state = trained
    fam = get_family("gan")
    s1, y = fam.sample(state, 64, 0, x.shape[1:], MODEL, SampleConfig(bias=1.0, batch_size=16), seed=3)
    assert s1.shape == (64, *x.shape[1:]) and s1.dtype == np.uint8 and y is None
    # psi < 1 pulls every latent towards the mean latent: different images, less spread between them
    s_half, _ = fam.sample(state, 64, 0, x.shape[1:], MODEL, SampleConfig(bias=0.2, batch_size=16), seed=3)
    assert not np.array_equal(s1, s_half)
    assert s_half.astype(float).std(axis=0).mean() < s1.astype(float).std(axis=0).mean()
    artifacts.write_state(tmp_path / "model.safetensors", state)
    again, _ = fam.sample(artifacts.read_state(tmp_path / "model.safetensors"), 64, 0, x.shape[1:], MODEL,
                          SampleConfig(bias=1.0, batch_size=64), seed=3)
    np.testing.assert_array_equal(again, s1)  # and independent of the sampling batch size


def test_image_sides_must_be_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        get_family("gan").train(np.zeros((4, 1, 6, 6), np.uint8), None, 0, MODEL, TrainConfig(steps=1), seed=0)


def test_two_generations_through_run_py(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("data.name=digits", "data.n_reference=100", "model.family=gan", "model.gan.latent_dim=8",
                   "model.gan.width=8", "metrics.features=raw", "metrics.n_eval=100", "loop.generations=2",
                   "loop.n_init=100", "train.steps=10", "train.batch_size=32", "train.init=previous", "sweep={}",
                   "report.html=false", "report.tensorboard=false", "ray.num_cpus=2", f"out={out}", "--quiet",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["gen"] for r in recs) == [1, 2] and all("precision" in r for r in recs)

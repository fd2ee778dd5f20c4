"""The diffusion model family on real 8x8 digits with a tiny UNet (CPU, seconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers import DDIMScheduler, DDPMScheduler

from conftest import run_cli
from mad.config import (ConfigError, DataConfig, DataName, Family, ModelConfig, SampleConfig, Scheduler, TrainConfig,
                        expand_sweep, load_config)
from mad.data.images import load_images
from mad.models.diffusion import _make_scheduler, build_unet, evaluate_loss, sample, train

SHAPE = (1, 8, 8)
TINY_T = 100  # fewer diffusion timesteps: same code path, faster to learn in a few steps


def tiny_model(conditional: bool = True, **kw) -> ModelConfig:
    return ModelConfig(family=Family.diffusion, channels=[16, 32], conditional=conditional, num_train_timesteps=TINY_T, **kw)


def tiny_sample(**kw) -> SampleConfig:
    kw.setdefault("steps", 5)
    kw.setdefault("batch_size", 16)
    return SampleConfig(**kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny convolutions gain nothing from a second thread, and on a shared CPU the
    # threads' spin-waits cost a lot; restored afterwards for the other test files
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    tx, ty, rx, ry, k = load_images(DataConfig(name=DataName.digits, n_reference=300), seed=0)
    return tx, ty, k


@pytest.fixture(scope="module")
def cond_state(digits):
    tx, ty, k = digits
    return train(tx, ty, k, tiny_model(), TrainConfig(steps=20, batch_size=32, lr=1e-3), seed=0, device="cpu")


@pytest.fixture(scope="module")
def uncond_state(digits):
    tx, _, _ = digits
    return train(tx, None, 0, tiny_model(conditional=False), TrainConfig(steps=20, batch_size=32, lr=1e-3), seed=0, device="cpu")


def test_state_is_flat_cpu_and_reloads_through_safetensors(cond_state, tmp_path):
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" and v.is_contiguous() for v in cond_state.values())
    assert "class_embedding.weight" in cond_state
    assert cond_state["class_embedding.weight"].shape[0] == 11  # 10 classes + the null label
    path = tmp_path / "model.safetensors"
    save_file(cond_state, str(path))
    reloaded = load_file(str(path))
    a, ya = sample(cond_state, 12, 10, SHAPE, tiny_model(), tiny_sample(bias=0.5), seed=3, device="cpu")
    b, yb = sample(reloaded, 12, 10, SHAPE, tiny_model(), tiny_sample(bias=0.5), seed=3, device="cpu")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    c, _ = sample(cond_state, 12, 10, SHAPE, tiny_model(), tiny_sample(bias=0.5), seed=4, device="cpu")
    assert not np.array_equal(a, c)  # the seed matters


def test_training_is_a_function_of_the_seed(digits):
    tx, ty, k = digits
    cfg = TrainConfig(steps=3, batch_size=16)
    s1 = train(tx, ty, k, tiny_model(), cfg, seed=5, device="cpu")
    s2 = train(tx, ty, k, tiny_model(), cfg, seed=5, device="cpu")
    s3 = train(tx, ty, k, tiny_model(), cfg, seed=6, device="cpu")
    assert all(torch.equal(s1[n], s2[n]) for n in s1)
    assert any(not torch.equal(s1[n], s3[n]) for n in s1)


def test_ema_follows_the_documented_warm_up_schedule(digits):
    # ema_decay=0 returns the raw weights after k steps (the same seeded batches and noise as a longer
    # run's first k steps); the EMA of the k-step raw weights with decay min(cap, k / (k + 9)),
    # step 1 a copy, must be what train() returns with the cap
    tx, ty, k = digits
    steps, cap = 6, 0.999
    raw = [train(tx, ty, k, tiny_model(), TrainConfig(steps=s, batch_size=16, ema_decay=0.0), seed=2, device="cpu")
           for s in range(1, steps + 1)]
    expected = {n: v.clone() for n, v in raw[0].items()}
    for s in range(2, steps + 1):
        d = min(cap, s / (s + 9))
        expected = {n: d * expected[n] + (1 - d) * raw[s - 1][n] for n in expected}
    got = train(tx, ty, k, tiny_model(), TrainConfig(steps=steps, batch_size=16, ema_decay=cap), seed=2, device="cpu")
    assert max((got[n] - expected[n]).abs().max().item() for n in got) < 1e-6
    assert max((got[n] - raw[-1][n]).abs().max().item() for n in got) > 1e-4  # it averaged, not copied


def test_conditional_samples_are_uint8_with_labels_in_range(cond_state):
    x, y = sample(cond_state, 20, 10, SHAPE, tiny_model(), tiny_sample(), seed=0, device="cpu")
    assert x.shape == (20, *SHAPE) and x.dtype == np.uint8
    assert y.shape == (20,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < 10
    probs = np.zeros(10)
    probs[3] = 1.0
    _, y3 = sample(cond_state, 8, 10, SHAPE, tiny_model(), tiny_sample(), seed=0, class_probs=probs, device="cpu")
    assert (y3 == 3).all()


def test_guidance_changes_conditional_samples(cond_state):
    a, ya = sample(cond_state, 16, 10, SHAPE, tiny_model(), tiny_sample(bias=1.0), seed=1, device="cpu")
    b, yb = sample(cond_state, 16, 10, SHAPE, tiny_model(), tiny_sample(bias=0.5), seed=1, device="cpu")
    np.testing.assert_array_equal(ya, yb)  # same seed, same labels: only the guidance differs
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0


def test_latent_scaling_changes_unconditional_samples(uncond_state):
    ddim = Scheduler.ddim  # the unconditional lambda < 1 needs it; lambda = 1 samples with it too
    a, ya = sample(uncond_state, 16, 0, SHAPE, tiny_model(False), tiny_sample(bias=1.0, scheduler=ddim), seed=1, device="cpu")
    b, _ = sample(uncond_state, 16, 0, SHAPE, tiny_model(False), tiny_sample(bias=0.5, scheduler=ddim), seed=1, device="cpu")
    assert ya is None
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0
    # same seed and weights give the same images (deterministic DDIM)
    c, _ = sample(uncond_state, 16, 0, SHAPE, tiny_model(False), tiny_sample(bias=0.5, scheduler=ddim), seed=1, device="cpu")
    np.testing.assert_array_equal(b, c)


def test_ancestral_sampler_with_lambda_below_1_unconditional_is_refused_not_swapped(uncond_state):
    # the old code swapped in DDIM here (with a warning) while the lambda = 1 chains stayed ancestral
    with pytest.raises(ValueError, match="use sample.scheduler=ddim"):
        sample(uncond_state, 4, 0, SHAPE, tiny_model(False), tiny_sample(bias=0.5, scheduler=Scheduler.ddpm),
               seed=1, device="cpu")
    # lambda = 1 with DDPM is the ancestral sampler: seeded, and not the DDIM images
    a, _ = sample(uncond_state, 8, 0, SHAPE, tiny_model(False), tiny_sample(scheduler=Scheduler.ddpm), seed=1, device="cpu")
    d, _ = sample(uncond_state, 8, 0, SHAPE, tiny_model(False), tiny_sample(scheduler=Scheduler.ddim), seed=1, device="cpu")
    assert np.abs(a.astype(int) - d.astype(int)).mean() > 1.0


SWEEP_LAMBDA = "sweep={sample.bias: [1.0, 0.8, 0.5]}"


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize("scheduler", [Scheduler.ddim, Scheduler.ddpm])
def test_every_lambda_of_a_sweep_uses_the_configured_sampler(conditional, scheduler):
    args = [SWEEP_LAMBDA, f"sample.scheduler={scheduler.value}", "sample.steps=7", f"model.conditional={conditional}"]
    if not conditional and scheduler == Scheduler.ddpm:
        # no silent switch to DDIM for lambda < 1: the sweep is refused, naming both keys
        with pytest.raises(ConfigError) as err:
            load_config(None, args)
        assert err.value.key == "sample.scheduler" and "sample.bias=0.8" in str(err.value)
        assert "use sample.scheduler=ddim" in str(err.value)
        return
    chains = expand_sweep(load_config(None, args))
    assert sorted(c.sample.bias for _, c in chains) == [0.5, 0.8, 1.0]
    want = DDPMScheduler if scheduler == Scheduler.ddpm else DDIMScheduler
    for _, c in chains:
        sched, deterministic = _make_scheduler(c.model, c.sample, conditional)
        assert type(sched) is want and deterministic == (scheduler == Scheduler.ddim), c.sample.bias
        assert len(sched.timesteps) == 7


@pytest.mark.parametrize("swept, key", [("sample.scheduler: [ddim, ddpm]", "sample.scheduler"),
                                        ("sample.steps: [20, 50]", "sample.steps"),
                                        ("sample.clip: [true, false]", "sample.clip")])
def test_a_lambda_sweep_with_mixed_samplers_is_refused_at_load(swept, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"sweep={{sample.bias: [1.0, 0.5], {swept}}}"])
    assert err.value.key == "sweep" and key in str(err.value) and "sample.bias" in str(err.value)
    assert "\n" not in str(err.value)
    # the sampler alone (one lambda) is a sampler comparison, and lambda alone a lambda sweep: both run
    assert len(expand_sweep(load_config(None, [f"sweep={{{swept}}}"]))) == 2
    assert len(expand_sweep(load_config(None, ["sweep={sample.bias: [1.0, 0.5]}"]))) == 2
    # a family that reads no sampler keys samples the same way whatever they say
    gauss = load_config("configs/experiment/gaussian.yaml", [f"sweep={{sample.bias: [1.0, 0.5], {swept}}}"])
    assert len(expand_sweep(gauss)) == 4


def test_mixed_sampler_lambda_sweep_through_run_py_one_line_exit_2(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("sweep={sample.bias: [1.0, 0.5], sample.scheduler: [ddim, ddpm]}", f"out={out}", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "sample.bias" in lines[0] and "sample.scheduler" in lines[0]
    assert not out.exists()


def test_unlabelled_folder_with_ancestral_lambda_below_1_is_refused_before_anything_is_written(tmp_path):
    from PIL import Image

    root = tmp_path / "images"  # no sub-folders: no labels, so the model is unconditional
    root.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(root / f"{i}.png")
    out = tmp_path / "run"
    proc = run_cli("data.name=folder", f"data.root={root}", "data.n_reference=4", "model.family=diffusion",
                   "metrics.features=raw", "metrics.n_eval=8", "metrics.k=3", "loop.n_init=8", "loop.generations=1",
                   "sweep={}", "sample.bias=0.5", "sample.scheduler=ddpm", f"out={out}", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "sample.scheduler" in lines[0] and "sample.bias=0.5" in lines[0]
    assert not out.exists()


def test_schema_default_sampler_is_ancestral_ddpm_over_the_full_T():
    # BENCHMARKS.md "Sampler": the full-T ancestral DDPM with clipping is the best row
    s = SampleConfig()
    assert (s.scheduler, s.steps, s.clip) == (Scheduler.ddpm, None, True)
    sched, deterministic = _make_scheduler(tiny_model(), s, conditional=True)
    assert type(sched) is DDPMScheduler and not deterministic and len(sched.timesteps) == TINY_T
    assert sched.config.clip_sample


def test_ddpm_sampler_is_seeded(cond_state):
    cfg = tiny_sample(scheduler=Scheduler.ddpm, bias=0.8)
    a, _ = sample(cond_state, 8, 10, SHAPE, tiny_model(), cfg, seed=2, device="cpu")
    b, _ = sample(cond_state, 8, 10, SHAPE, tiny_model(), cfg, seed=2, device="cpu")
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == (8, *SHAPE)


def test_clip_switches_x0_clipping_for_both_samplers(cond_state):
    # a 20-step model predicts x0 well outside [-1, 1], so clipping it must change the images
    for scheduler in (Scheduler.ddim, Scheduler.ddpm):
        on, _ = sample(cond_state, 8, 10, SHAPE, tiny_model(), tiny_sample(scheduler=scheduler, clip=True), seed=2, device="cpu")
        off, _ = sample(cond_state, 8, 10, SHAPE, tiny_model(), tiny_sample(scheduler=scheduler, clip=False), seed=2, device="cpu")
        assert np.abs(on.astype(int) - off.astype(int)).mean() > 1.0, scheduler


def test_init_state_fine_tunes_from_the_given_weights(digits, cond_state):
    tx, ty, k = digits
    tuned = train(tx, ty, k, tiny_model(), TrainConfig(steps=3, batch_size=16), seed=1, init_state=cond_state, device="cpu")
    scratch = train(tx, ty, k, tiny_model(), TrainConfig(steps=3, batch_size=16), seed=1, device="cpu")
    to_init = max((tuned[n] - cond_state[n]).abs().max().item() for n in cond_state)
    scratch_to_init = max((scratch[n] - cond_state[n]).abs().max().item() for n in cond_state)
    assert to_init > 0.0  # it trained
    assert to_init < 0.1 * scratch_to_init  # and started from init_state, not from a fresh init


def test_loss_goes_down(digits):
    tx, ty, k = digits
    cfg = dict(batch_size=32, lr=2e-3)
    start = train(tx, ty, k, tiny_model(), TrainConfig(steps=1, **cfg), seed=0, device="cpu")
    end = train(tx, ty, k, tiny_model(), TrainConfig(steps=50, **cfg), seed=0, device="cpu")
    held = tx[:256], ty[:256]
    loss_start = evaluate_loss(start, *held, k, tiny_model(), seed=0)
    loss_end = evaluate_loss(end, *held, k, tiny_model(), seed=0)
    # a fresh UNet predicts the noise with MSE ~0.9-1.0; 50 steps reach ~0.37-0.44 (seeds 0-2),
    # so 0.7x leaves room for platform noise while a broken update would stay near 1x
    assert loss_end < 0.7 * loss_start, (loss_start, loss_end)


def test_unet_levels_must_divide_the_resolution():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(len\\(model.channels\\)-1\\) = 4"):
        build_unet(ModelConfig(channels=[16, 32, 64]), (1, 10, 10), 0)
    net = build_unet(ModelConfig(channels=[16, 32, 64]), (1, 12, 12), 0)
    assert net.class_embedding is None


def test_unet_norm_groups_and_attention():
    # gcd(48, 96) = 48: 32 does not divide it, 24 is the largest group count that does
    net = build_unet(ModelConfig(channels=[48, 96], attention=True), (3, 8, 8), 10)
    assert net.config.norm_num_groups == 24
    assert type(net.down_blocks[-1]).__name__ == "AttnDownBlock2D"
    assert type(net.up_blocks[0]).__name__ == "AttnUpBlock2D"
    out = net(torch.zeros(2, 3, 8, 8), torch.tensor([1, 2]), class_labels=torch.tensor([0, 10])).sample
    assert out.shape == (2, 3, 8, 8)
    plain = build_unet(ModelConfig(channels=[16, 32], conditional=False), (1, 8, 8), 10)
    assert plain.class_embedding is None  # conditional=false ignores the labels
    assert all("Attn" not in type(b).__name__ for b in [*plain.down_blocks, *plain.up_blocks])


def test_sample_rejects_weights_of_the_other_kind(uncond_state):
    with pytest.raises(ValueError, match="unconditional"):
        sample(uncond_state, 2, 10, SHAPE, tiny_model(), tiny_sample(), seed=0, device="cpu")

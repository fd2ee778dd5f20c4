"""Issue 13, "Beyond MAD": the loop stages wired into runs. Accumulate vs replace vs accumulate-and-subsample
on a Gaussian through the driver, self-correction slowing the fully synthetic FID rise on toy2d, curation
on real classifier scores, the stage's records on both paths, and the keys (subsample, n_synth schedule,
fine-tuning) against their definitions."""
import json
from pathlib import Path

import numpy as np
import pytest

import loops
from conftest import run_cli
from mad import blocks, tasks
from mad.config import (ConfigError, CorrectConfig, CurateConfig, LoopConfig, LoopKind, MetricsConfig, Reward,
                        SynthSource, TrainConfig, TrainInit, load_config, n_synth_at)
from mad.data import RealPool

from test_driver import GAUSS, records, run_in_process


# ----------------------------------------------------------------------------- pure: manifests and keys
def _accumulating_loop(**kw) -> LoopConfig:
    return LoopConfig(kind=LoopKind.synthetic_augmentation, generations=6, n_init=20, n_real=20, n_synth=20,
                      synth_source=SynthSource.accumulate, **kw)


def test_subsample_keeps_the_asked_size_from_the_accumulated_set_and_follows_the_seed():
    loop = _accumulating_loop(subsample_to=30)
    sizes = {1: 20, 2: 20, 3: 20}
    m = loops.next_training_set(loop.kind, 4, sizes, loop, np.random.default_rng(0))
    assert m.n_real + m.n_synth == 30 and len(m.subsample) == 30  # of 20 real + 3 x 20 synthetic
    assert 0 < m.n_real < 20 and len(set(m.subsample)) == 30 and max(m.subsample) < 80
    assert m.to_json()["subsample"] == list(m.subsample)
    again = loops.next_training_set(loop.kind, 4, sizes, loop, np.random.default_rng(0))
    other = loops.next_training_set(loop.kind, 4, sizes, loop, np.random.default_rng(1))
    assert again.subsample == m.subsample and other.subsample != m.subsample
    # generation 1 and a set no larger than subsample_to are left whole (and their manifests unchanged)
    assert not loops.next_training_set(loop.kind, 1, {}, loop, np.random.default_rng(0)).subsample
    small = loops.next_training_set(loop.kind, 2, {1: 5}, _accumulating_loop(subsample_to=30), np.random.default_rng(0))
    assert not small.subsample and "subsample" not in small.to_json()


def test_assembled_training_set_is_the_subsample():
    pool = RealPool(name="digits", x=np.arange(100, dtype=np.float64)[:, None], y=None)
    loop = _accumulating_loop(subsample_to=25)
    sizes = {1: 20, 2: 20}
    m = loops.next_training_set(loop.kind, 3, sizes, loop, np.random.default_rng(3))
    synth = {g: ((1000 * g + np.arange(20, dtype=np.float64))[:, None], None) for g in sizes}
    x, _ = tasks.assemble_training_set(pool, 0, m.to_json(), [1, 2], [[synth[1]], [synth[2]]])
    full, _ = tasks.assemble_training_set(pool, 0, {**m.to_json(), "subsample": []}, [1, 2], [[synth[1]], [synth[2]]])
    assert len(full) == 60 and np.array_equal(x, full[np.asarray(m.subsample)])
    assert int((x[:, 0] < 1000).sum()) == m.n_real and int((x[:, 0] >= 1000).sum()) == m.n_synth


def test_linear_n_synth_schedule_sets_each_generations_synthetic_set():
    cfg = load_config(None, [*GAUSS, "loop.kind=fully_synthetic", "sweep={}", "loop.generations=5",
                             "loop.n_synth=100", "loop.n_synth_schedule=linear", "loop.n_synth_final=400"])
    assert [n_synth_at(cfg.loop, g) for g in range(2, 6)] == [100, 200, 300, 400]
    assert [blocks.synth_size(cfg, g) for g in range(1, 6)] == [100, 200, 300, 400, 0]
    sizes = {g: blocks.synth_size(cfg, g) for g in range(1, 5)}
    for gen in range(2, 6):
        m = loops.next_training_set(cfg.loop.kind, gen, {g: s for g, s in sizes.items() if g < gen}, cfg.loop,
                                    np.random.default_rng(0))
        assert m.n_synth == n_synth_at(cfg.loop, gen) and m.synth[0].gen == gen - 1


def test_finetune_steps_and_lr_apply_to_later_generations_of_init_previous_only():
    t = TrainConfig(init=TrainInit.previous, steps=1000, lr=1e-3, finetune_steps=50, finetune_lr=1e-4)
    assert tasks.train_config_at(t, 1) is t
    assert (tasks.train_config_at(t, 2).steps, tasks.train_config_at(t, 2).lr) == (50, 1e-4)
    scratch = TrainConfig(init=TrainInit.scratch, steps=1000, finetune_steps=50)
    assert tasks.train_config_at(scratch, 3).steps == 1000
    assert tasks.train_config_at(TrainConfig(init=TrainInit.previous, steps=7), 3).steps == 7  # unset: steps


def test_compute_estimate_counts_curation_candidates_and_finetune_steps():
    from mad.plan import estimate_compute, plan_chains

    cfg = load_config(None, ["sweep={}", "loop.generations=3", "loop.n_synth=200", "metrics.n_eval=500",
                             "curate.reward=classifier_confidence", "curate.k=4", "train.init=previous",
                             "train.steps=1000", "train.finetune_steps=100"])
    est = estimate_compute(plan_chains(cfg))
    assert est["diffusion_images"] == 2 * 800 + 500  # 4 x 200 candidates, the last generation n_eval only
    assert est["diffusion_train_steps"] == 1000 + 2 * 100


@pytest.mark.parametrize("override, key", [
    ("curate.k=0", "curate.k"),
    ("curate.beta=-1", "curate.beta"),
    ("correct.strength=1.5", "correct.strength"),
    ("correct.clusters=0", "correct.clusters"),
    ("loop.subsample_to=0", "loop.subsample_to"),
    ("loop.n_synth_final=100", "loop.n_synth_final"),  # without the linear schedule
    ("loop.n_synth_schedule=linear", "loop.n_synth_final"),  # without a final size
    ("train.finetune_steps=0", "train.finetune_steps"),
])
def test_stage_keys_are_validated(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key


def test_classifier_reward_needs_the_classifier_one_line_exit_2(tmp_path):
    proc = run_cli(*GAUSS, f"out={tmp_path / 'run'}", "curate.reward=classifier_confidence")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "curate.reward" in proc.stderr and "metrics.features=classifier" in proc.stderr
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- curation on a real classifier
def test_curation_by_classifier_confidence_keeps_the_confident_candidates():
    """The stage task on real scores: the reward's own LeNet (another seed, half the pool; not the metrics'
    judge) trained on the digits; candidates are held-out digits and the same digits washed out with
    noise. Curation must keep more confident samples than it was given, mostly the clean ones,
    deterministically for its seed; the judge's confidence rises too, but it is not what was optimised."""
    from sklearn.datasets import load_digits

    from mad.metrics import prepare_reference
    from mad.metrics.evaluate import sample_confidence

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    train, held = perm[:1297], perm[1297:]
    metrics = MetricsConfig(features="classifier", n_eval=200, classifier_epochs=3)
    ref = prepare_reference(x[held][:300], y[held][:300], x[train], y[train], metrics, 10, use_cache=False,
                            reward=True)
    # the reward network is not the judge: other weights, trained on another half of the pool with another seed
    from mad.metrics.evaluate import reward_confidence
    from mad.metrics.features import REWARD_SEED, classifier_cache_key, reward_split

    assert ref.reward_state is not None and ref.reward_state["key"] != ref.extractor_state["key"]
    rx, ry = reward_split(x[train], y[train])
    assert len(rx) == 1297 // 2
    assert ref.reward_state["key"] == classifier_cache_key(rx, ry, 10, 6, REWARD_SEED)  # twice the epochs on half the data
    judge_w = [np.asarray(v) for v in ref.extractor_state["weights"].values()]
    reward_w = [np.asarray(v) for v in ref.reward_state["weights"].values()]
    assert not all(np.array_equal(a, b) for a, b in zip(judge_w, reward_w))
    held_conf = x[held][300:500]
    assert not np.allclose(reward_confidence(ref, held_conf), sample_confidence(ref, held_conf))
    clean = x[held][300:500]
    noise = np.random.default_rng(1).integers(0, 256, clean.shape)
    noisy = (0.45 * clean + 0.55 * noise).astype(np.uint8)
    cand = np.concatenate([clean, noisy])
    is_clean = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    order = np.random.default_rng(2).permutation(400)
    cand, is_clean = cand[order], is_clean[order]
    pool = RealPool(name="digits", x=x[train], y=y[train], num_classes=10)
    job = tasks.StageJob(seed=0, gen=1, n_keep=100, n_init=400,
                         curate=CurateConfig(reward=Reward.classifier_confidence, k=4, beta=10.0),
                         correct=CorrectConfig())
    (kx, ky), counts = tasks.apply_stage(job, pool, ref, [(cand, y[held][300:500][order % 200])])
    assert counts == {"stage_produced": 400, "stage_kept": 100, "stage_changed": 0}
    conf_all, conf_kept = reward_confidence(ref, cand).mean(), reward_confidence(ref, kx).mean()
    assert conf_kept > conf_all + 0.05, (conf_kept, conf_all)
    assert np.array_equal(tasks.classifier_confidence(ref, cand, None), reward_confidence(ref, cand))
    kept_clean = np.mean([any(np.array_equal(k, c) for c in cand[is_clean]) for k in kx])
    assert kept_clean > 0.7 and is_clean.mean() == 0.5
    (kx2, _), _ = tasks.apply_stage(job, pool, ref, [(cand, y[held][300:500][order % 200])])
    assert np.array_equal(kx, kx2)  # the STAGE stream of the seed decides the choices


# ----------------------------------------------------------------------------- through the driver (Ray)
@pytest.mark.usefixtures("ray_local")
def test_replace_collapses_accumulate_stays_bounded_subsample_between(tmp_path):
    """Gerstgrasser et al. / Kazdan et al. on a 10-d Gaussian (MLE fit, 20 samples), 50 generations, 4 seeds,
    through the driver and chain blocks: the medians over seeds at generation 50."""
    common = ["data.dim=10", "model.estimator=mle", "loop.generations=50", "loop.n_init=20", "loop.n_real=20",
              "loop.n_synth=20", "metrics.every=50", "artifacts.keep_models=last", "sweep={}",
              "sweep.seed=[0,1,2,3]"]
    run_in_process(tmp_path / "replace", *common, "loop.kind=fully_synthetic")
    run_in_process(tmp_path / "acc", *common, "loop.kind=synthetic_augmentation", "loop.synth_source=accumulate",
                   "sweep.loop.subsample_to=[null,20]")
    last = lambda recs: [r for r in recs if r["gen"] == 50]
    replace = last(records(tmp_path / "replace"))
    acc = last(records(tmp_path / "acc"))
    accumulate = [r for r in acc if r["loop.subsample_to"] is None]
    subsample = [r for r in acc if r["loop.subsample_to"] == 20]
    assert len(replace) == len(accumulate) == len(subsample) == 4
    med = lambda rs, k: float(np.median([r[k] for r in rs]))
    assert med(replace, "trace_ratio") < 0.05  # collapse
    assert 0.7 < med(accumulate, "trace_ratio") < 1.3
    assert med(accumulate, "w2") < med(subsample, "w2") < med(replace, "w2")
    # accumulate: W2 at generation 50 no larger than at 10 (bounded), on every seed within 25%
    acc10 = {r["seed"]: r["w2"] for r in records(tmp_path / "acc") if r["gen"] == 10 and r["loop.subsample_to"] is None}
    assert all(r["w2"] < 1.25 * acc10[r["seed"]] for r in accumulate)
    # the records say what was kept: 20 real + 49 x 20 synthetic, or 20 of them
    assert {(r["n_real"], r["n_synth"]) for r in accumulate} == {(20, 980)}
    assert {r["n_real"] + r["n_synth"] for r in subsample} == {20}


@pytest.mark.usefixtures("ray_local")
def test_self_correction_slows_the_fully_synthetic_fid_rise_on_toy2d(tmp_path):
    """Gillman et al.'s correction in data space: a KDE on the 25-mode grid spreads each generation;
    moving every synthetic sample halfway to its nearest of 25 k-means centres of the real set holds it."""
    run_in_process(tmp_path / "run", "data.name=toy2d", "data.n_reference=1000", "model.family=kde",
                   "metrics.n_eval=500", "loop.kind=fully_synthetic", "loop.generations=8", "loop.n_init=200",
                   "loop.n_synth=200", "correct.kind=kmeans", "correct.clusters=25", "sweep={}",
                   "sweep.correct.strength=[0.0,0.5]", "sweep.seed=[0,1,2]", "artifacts.keep_models=last")
    recs = records(tmp_path / "run")
    fid = {(r["correct.strength"], r["seed"], r["gen"]): r["fid"] for r in recs}
    for seed in (0, 1, 2):
        assert fid[(0.0, seed, 1)] == fid[(0.5, seed, 1)]  # generation 1 is the same real-only fit
        rise = {g: fid[(g, seed, 8)] - fid[(g, seed, 1)] for g in (0.0, 0.5)}
        assert rise[0.5] < 0.5 * rise[0.0], (seed, rise)
    for r in recs:
        if r["gen"] < 8:
            assert r["stage_produced"] == r["stage_kept"] == 200
            assert r["stage_changed"] == (200 if r["correct.strength"] == 0.5 else 0)
        else:
            assert "stage_kept" not in r  # the last generation keeps no synthetic set: no stage ran


@pytest.mark.usefixtures("ray_local")
def test_stage_records_are_the_same_in_blocks_and_one_task_per_stage(tmp_path):
    args = ["loop.generations=4", "sweep.seed=[0,1]", "correct.kind=kmeans", "correct.clusters=3",
            "correct.strength=0.3", "loop.synth_source=accumulate", "loop.subsample_to=60",
            "loop.n_synth_schedule=linear", "loop.n_synth_final=80"]  # x 3 loop kinds from default.yaml
    run_in_process(tmp_path / "tasks", *args, "resources.block_size=0")
    run_in_process(tmp_path / "blocks", *args)
    one_by_one = records(tmp_path / "tasks")
    assert len(one_by_one) == 24 and records(tmp_path / "blocks") == one_by_one
    for r in one_by_one:
        if r["gen"] < 4:
            assert r["stage_kept"] == r["synth_size"] == [40, 60, 80][r["gen"] - 1] and r["stage_changed"] > 0
        if r["gen"] > 1:
            assert r["n_real"] + r["n_synth"] <= 60
        saved = np.load(tmp_path / "tasks" / r["chain"] / f"gen_{r['gen']:03d}" / "samples.npz")
        blocked = np.load(tmp_path / "blocks" / r["chain"] / f"gen_{r['gen']:03d}" / "samples.npz")
        assert np.array_equal(saved["x"], blocked["x"])
        if r["gen"] < 4:  # the saved samples are the corrected set later generations train on
            assert len(saved["x"]) == r["synth_size"]


def test_redrawn_synthetic_set_reapplies_the_stage_exactly():
    """artifacts.samples=none resumes by redrawing a synthetic set from its model: the stage must give the
    same set again (curation and correction draw from the generation's own STAGE stream)."""
    from mad.data import load_real

    cfg = load_config(None, [*GAUSS, "sweep={}", "loop.kind=fully_synthetic", "loop.generations=3",
                             "correct.kind=kmeans", "correct.clusters=4", "correct.strength=0.7",
                             "artifacts.samples=none", "metrics.every=0"])
    pool, _ = load_real(cfg.data, cfg.seed)
    chain = blocks.BlockChain("c", cfg, 1)
    res = blocks.run_generation(chain, pool, None, pool.distribution(), keep_samples=True)
    assert res.metrics["stage_changed"] == 40
    x, y = blocks.redraw_synth(res.state, pool, cfg, 1)
    assert np.array_equal(x, res.samples[0]) and np.array_equal(x, chain.synth[1][0])
    raw, _ = tasks.concat_shards(blocks.sample_generation(res.state, pool, cfg, 1))
    assert not np.array_equal(x, raw[:40])  # the stage did change them


def test_digits_stage_through_run_py(tmp_path):
    """The diffusion family on digits with curation and correction through run.py (one Ray task per stage):
    k x n_synth candidates sampled, n_synth kept and corrected, the kept set saved."""
    from test_digits_e2e import TINY

    out = tmp_path / "run"
    proc = run_cli(*TINY, f"out={out}", f"metrics.cache_dir={tmp_path / 'cache'}", "sweep={}",
                   "loop.kind=fully_synthetic", "loop.n_synth=50", "curate.reward=classifier_confidence",
                   "curate.k=3", "correct.kind=kmeans", "correct.clusters=2", "correct.strength=0.5",
                   "metrics.classifier_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in recs if r["gen"] == 1)
    assert (first["stage_produced"], first["stage_kept"]) == (150, 50) and first["stage_changed"] > 0
    assert 0 < first["mean_confidence"] <= 1  # the metrics score the model's own first n_eval samples
    chain = next(Path(out).glob("c00-*"))
    saved = np.load(chain / "gen_001" / "samples.npz")
    assert saved["x"].shape[0] == 50 and saved["x"].dtype == np.uint8
    assert next(r for r in recs if r["gen"] == 2)["n_synth"] == 50


def test_a_run_written_before_the_stage_keys_still_resumes():
    """config.yaml of an older run lacks curate, correct and the new loop/train keys: it reads them as
    their defaults, which reproduce what it ran."""
    import yaml

    from mad.config import config_to_dict, science_dict, science_of_yaml

    cfg = load_config(None, [])
    old = config_to_dict(cfg)
    for key in ("curate", "correct"):
        del old[key]
    for key in ("subsample_to", "n_synth_schedule", "n_synth_final"):
        del old["loop"][key]
    for key in ("finetune_steps", "finetune_lr"):
        del old["train"][key]
    assert science_of_yaml(yaml.safe_dump(old)) == science_dict(cfg)
    changed = load_config(None, ["correct.kind=kmeans"])
    assert science_of_yaml(yaml.safe_dump(old)) != science_dict(changed)


@pytest.mark.usefixtures("ray_local")
def test_generation_one_is_shared_across_stages_and_fine_tuning_with_the_same_records(tmp_path):
    """Neither the stage (it runs per chain after the shared work) nor train.init / the fine-tuning keys
    change a real-only generation from scratch: it is trained once for all four chains."""
    from mad.driver import Driver

    args = [*GAUSS, "resources.block_size=0", "loop.kind=fully_synthetic", "loop.generations=3", "sweep={}",
            "sweep.train.init=[scratch,previous]", "train.finetune_steps=5", "correct.kind=kmeans",
            "correct.clusters=2", "sweep.correct.strength=[0.0,0.5]"]
    shared = Driver(load_config(None, [*args, f"out={tmp_path / 'shared'}"]), quiet=True)
    shared.run()
    separate = Driver(load_config(None, [*args, f"out={tmp_path / 'separate'}", "resources.share_identical=false"]),
                      quiet=True)
    separate.run()
    assert separate.n_trained == 12 and shared.n_trained == 12 - 3
    recs = records(tmp_path / "shared")
    assert recs == records(tmp_path / "separate")
    assert {r["stage_changed"] > 0 for r in recs if r["gen"] < 3 and r["correct.strength"] == 0.5} == {True}
    assert {r["stage_changed"] for r in recs if r["gen"] < 3 and r["correct.strength"] == 0.0} == {0}

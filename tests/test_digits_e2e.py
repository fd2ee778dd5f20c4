"""Issue acceptance: the three MAD loops with a real (tiny) diffusers UNet on real digits, through run.py."""
import json

import numpy as np

from conftest import run_cli
from mad import artifacts, seeding
from mad.config import load_config
from mad.models import diffusion

TINY = ["data.name=digits", "data.n_reference=300", "model.family=diffusion", "model.channels=[16,32]",
        "model.num_train_timesteps=200", "train.steps=60", "train.batch_size=32", "sample.steps=10",
        "metrics.features=classifier", "metrics.n_eval=100", "metrics.classifier_epochs=8", "loop.n_init=200",
        "loop.n_real=null", "loop.n_synth=null",
        "loop.generations=2", "report.html=false", "sweep={loop.kind: [fully_synthetic, synthetic_augmentation, fresh_data]}"]


def test_three_loops_two_generations_through_run_py(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*TINY, f"out={out}", f"metrics.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    # the classifier a task trained came back with the reference and the driver cached it
    assert len(list((tmp_path / "cache").glob("classifier-*.safetensors"))) == 1
    assert {r["loop"] for r in recs} == {"fully_synthetic", "synthetic_augmentation", "fresh_data"}
    for r in recs:
        for key in ("fid", "precision", "recall", "density", "coverage", "class_entropy", "class_kl"):
            assert np.isfinite(r[key]), (key, r)
        assert len(r["class_hist"]) == 10 and abs(sum(r["class_hist"]) - 1) < 1e-5  # the class-drift heatmap's data
        assert r["n_real"] == (200 if r["gen"] == 1 or r["loop"] != "fully_synthetic" else 0)
        assert r["n_synth"] == (0 if r["gen"] == 1 else 200)
    # the per-generation table reached the console
    assert "gen   2/2" in proc.stdout and "fid=" in proc.stdout
    # ... and the final table, one row per chain, is printed at the end
    table = proc.stdout[proc.stdout.index("fid: FID (LeNet features)"):]
    for r in recs:
        row = next(line for line in table.splitlines() if line.strip().startswith(r["chain"]))
        assert f"{r['fid']:.4g}" in row.split()[1:], (row, r)
    assert "UserWarning" not in proc.stdout + proc.stderr

    cfg = load_config(out / "config.yaml", ["sweep={}"])
    for chain in json.loads((out / "chains.json").read_text()):
        assert artifacts.RunDir(out).done_generations(chain["name"]) == [1, 2]
        # Reloading the saved weights reproduces the generation's samples for the same seed.
        gen = 2
        state = artifacts.read_state(out / chain["name"] / f"gen_{gen:03d}" / artifacts.MODEL)
        saved = artifacts.read_npz(out / chain["name"] / f"gen_{gen:03d}" / artifacts.SAMPLES)
        x, y = diffusion.sample(state, len(saved["x"]), 10, saved["x"].shape[1:], cfg.model, cfg.sample,
                                seeding.derive_seed(cfg.seed, gen, seeding.SAMPLE, 0))
        np.testing.assert_array_equal(x, saved["x"])
        np.testing.assert_array_equal(y, saved["y"])

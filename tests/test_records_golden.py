"""Records of every family and loop feature stay what main wrote before the "One engine" refactor.

``tests/data/records_a41bd51.json`` holds the records that commit a41bd51 (main before issue 22's
refactor of the driver, the config and the run directory) wrote for the tiny runs below: the Gaussian
on all three loop kinds, accumulate and subsample, GMM on toy2d, conditional diffusion at two lambda
with self-correction and curation, and the GAN. Code after the refactor must write the same records:
every key the old ones carry, the same value (new keys are allowed). Regenerate only for a change of
the science, on purpose: ``python tests/test_records_golden.py`` (writes the file from this checkout).

Tolerances as measured for tests/test_records_stable.py (issue 20): floats of torch-trained families
1e-4 relative (the CPU's kernels move them by up to 3.8e-5), numpy/scikit-learn families 1e-9;
integers, strings and the (chain, generation) set exactly.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

GOLDEN_PATH = Path(__file__).parent / "data" / "records_a41bd51.json"
QUIET = ["report.html=false", "report.tensorboard=false", "report.progress=false"]
DIGITS_TINY = ["data.n_reference=150", "metrics.n_eval=60", "metrics.classifier_epochs=2", "train.steps=12",
               "sample.steps=4", "model.num_train_timesteps=40", "loop.generations=2", "loop.n_init=60"]
RUNS = {
    # name: (config, overrides, relative tolerance of floats)
    "gaussian_kinds": ("configs/experiment/gaussian.yaml",
                       ["loop.generations=3", "data.dim=2", "metrics.n_eval=100", "loop.n_init=30", "sample.bias=0.8",
                        "sweep.seed=[0,1]", "sweep.loop.kind=[fully_synthetic,synthetic_augmentation,fresh_data]"],
                       1e-9),
    "accumulate": ("configs/experiment/accumulate.yaml",
                   ["loop.generations=4", "data.dim=3", "metrics.n_eval=100", "metrics.every=2", "data.n_reference=300",
                    "sweep.seed=[0]"], 1e-9),
    "gmm": ("configs/experiment/toy2d.yaml",
            ["model.family=gmm", "loop.generations=3", "loop.n_init=200", "metrics.n_eval=200",
             "data.n_reference=300", "sweep.loop.kind=[fully_synthetic,fresh_data]"], 1e-9),
    "conditional_diffusion": ("configs/experiment/self_correction.yaml",
                              [*DIGITS_TINY, "loop.n_synth=40", "sample.batch_size=50",
                               "sweep.seed=[0]", "sweep.correct.strength=[0.0,0.5]", "sweep.sample.bias=[1.0,0.7]"],
                              1e-4),
    "curation": ("configs/experiment/curation.yaml",
                 [*DIGITS_TINY, "loop.n_synth=40", "sample.batch_size=50", "curate.k=2",
                  "sweep.seed=[0]", "sweep.curate.reward=[none,classifier_confidence]"], 1e-4),
    "gan": ("configs/experiment/digits_gan.yaml",
            [*DIGITS_TINY, "train.batch_size=32", "sample.batch_size=100",
             "sweep.loop.kind=[fully_synthetic,fresh_data]", "sweep.sample.bias=[1.0,0.6]"], 1e-4),
}


def run_records(name: str, out: Path) -> list[dict]:
    from mad.config import load_config
    from mad.driver import Driver

    path, overrides, _ = RUNS[name]
    cfg = load_config(path, [*overrides, *QUIET, f"out={out}"])
    Driver(cfg, quiet=True).run()
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_records_equal_those_main_wrote_before_the_one_engine_refactor(name, tmp_path):
    golden = json.loads(GOLDEN_PATH.read_text())[name]
    rel = RUNS[name][2]
    new = {(r["chain"], r["gen"]): r for r in run_records(name, tmp_path / "run")}
    old = {(r["chain"], r["gen"]): r for r in golden}
    assert set(new) == set(old)
    compared = 0
    for key, rec in old.items():
        for field, want in rec.items():
            if field in ("wall_s", "time"):
                continue
            assert field in new[key], (key, field)
            got = new[key][field]
            if isinstance(want, float) and isinstance(got, float):
                assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-12) or (math.isnan(got) and math.isnan(want)), \
                    (key, field, got, want)
            else:
                assert got == want, (key, field, got, want)
            compared += 1
    assert compared > 10 * len(old)  # the metrics themselves were compared, not only the bookkeeping



RUNDIRS = Path(__file__).parent / "data" / "rundirs_a41bd51"
# the commands that wrote tests/data/rundirs_a41bd51 at a41bd51 (with out=<that folder>/NAME); .lock removed
RUNDIR_COMMANDS = {
    "gaussian": ["configs/experiment/gaussian.yaml", "loop.generations=3", "data.dim=2", "metrics.n_eval=50",
                 "loop.n_init=20", "data.n_reference=100", "sweep.seed=[0]", "sweep.sample.bias=[1.0,0.8]",
                 "sweep.loop.kind=[fully_synthetic,fresh_data]", *QUIET],
    "diffusion": ["data.name=digits", "loop.generations=2", "loop.n_init=40", "train.steps=5", "sample.steps=3",
                  "model.num_train_timesteps=20", "model.channels=[8,8]", "metrics.n_eval=40",
                  "data.n_reference=100", "metrics.classifier_epochs=1", "sweep.loop.kind=[fully_synthetic]", *QUIET],
}


def _science(metrics: "Path | bytes") -> dict:
    """metrics.jsonl's records by (chain, gen), without the timings (the file's order may change on a rewrite)"""
    lines = (metrics.read_bytes() if isinstance(metrics, Path) else metrics).splitlines()
    return {(r["chain"], r["gen"]): {k: v for k, v in r.items() if k not in ("wall_s", "time")}
            for r in map(json.loads, lines)}


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", sorted(RUNDIR_COMMANDS))
def test_run_directory_written_by_main_before_the_refactor_verifies_and_resumes(name, tmp_path):
    import shutil

    from mad.artifacts import verify_run
    from mad.config import load_config
    from mad.driver import Driver

    run = tmp_path / name
    shutil.copytree(RUNDIRS / name, run)
    problems, _ = verify_run(run)
    assert problems == []
    before = (run / "metrics.jsonl").read_bytes()
    gens = {json.loads(line)["gen"] for line in before.splitlines()}
    args = RUNDIR_COMMANDS[name]
    config = args[0] if args[0].endswith(".yaml") else None
    overrides = [a for a in args if not a.endswith(".yaml")]
    # the same command finds everything done
    Driver(load_config(config, [*overrides, f"out={run}"]), quiet=True).run()
    assert _science(run / "metrics.jsonl") == _science(before)
    # as if killed during the last generation: each chain's last record and its files gone; the same
    # command resumes from the generation before and writes the same records again
    last = max(gens)
    for chain_dir in (p for p in run.iterdir() if (p / "records.jsonl").is_file()):
        lines = (chain_dir / "records.jsonl").read_bytes().splitlines(keepends=True)
        assert json.loads(lines[-1])["gen"] == last
        (chain_dir / "records.jsonl").write_bytes(b"".join(lines[:-1]))
        shutil.rmtree(chain_dir / f"gen_{last:03d}", ignore_errors=True)
    (run / "metrics.jsonl").write_bytes(b"".join(l + b"\n" for l in before.splitlines()
                                                 if json.loads(l)["gen"] != last))
    Driver(load_config(config, [*overrides, f"out={run}"]), quiet=True).run()
    old = {(r["chain"], r["gen"]): r for r in map(json.loads, before.splitlines())}
    new = {(r["chain"], r["gen"]): r for r in map(json.loads, (run / "metrics.jsonl").read_bytes().splitlines())}
    assert set(new) == set(old)
    rel = 1e-4 if name == "diffusion" else 1e-9
    for key, rec in old.items():
        for field, want in rec.items():
            if field in ("wall_s", "time"):
                continue
            got = new[key][field]
            if isinstance(want, float) and isinstance(got, float):
                assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-12), (key, field, got, want)
            else:
                assert got == want, (key, field, got, want)
    problems, _ = verify_run(run)
    assert problems == []


if __name__ == "__main__":  # python tests/test_records_golden.py [name ...]: (re)write the golden file
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    names = sys.argv[1:] or sorted(RUNS)
    data = json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.exists() else {}
    for n in names:
        with tempfile.TemporaryDirectory() as d:
            data[n] = run_records(n, Path(d) / "run")
        print(n, len(data[n]), "records")
    GOLDEN_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

"""The driver through the real Ray runtime: sweeps, run directory, determinism, resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cut_records, finished, n_finished, run_cli
from mad.config import load_config
from mad.driver import TIMING_FIELDS, Driver

pytestmark = pytest.mark.usefixtures("ray_local")

GAUSS = ["data.name=gaussian", "data.dim=3", "data.n_reference=300", "model.family=gaussian",
         "metrics.features=raw", "metrics.n_eval=200", "loop.n_init=40", "loop.n_real=null", "loop.n_synth=null",
         "report.progress=false",
         "report.html=false", "report.tensorboard=false"]


def records(run_dir: Path) -> list[dict]:
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        for k in TIMING_FIELDS:
            r.pop(k)
    return sorted(recs, key=lambda r: (r["chain"], r["gen"]))


def run_in_process(out: Path, *overrides: str):
    cfg = load_config(None, [*GAUSS, f"out={out}", *overrides])
    Driver(cfg, quiet=True).run()
    return cfg


def resume_in_process(args: list[str], out: Path) -> int:
    """Resume a run directory in this process (its Ray is the test session's: no start-up to pay);
    returns how many finished generations the driver resumed after (0: it started over)."""
    driver = Driver(load_config(None, [*args, f"out={out}"]), quiet=True)
    driver.run()
    return sum(driver._resumed.values())


def test_sweep_of_six_chains_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "loop.generations=4", "sweep.seed=[0,1]", "report.html=true", "report.tensorboard=true")
    recs = records(out)
    assert (out / "report.html").stat().st_size > 100_000
    assert len(list((out / "tensorboard").iterdir())) == 6  # one TensorBoard run per chain
    chains = json.loads((out / "chains.json").read_text())
    assert len(chains) == 6 and len(recs) == 24
    for r in recs:
        for key in ("chain", "loop", "seed", "bias", "gen", "n_real", "n_synth", "w2", "trace_ratio", "mean_shift",
                    "fid", "precision", "recall", "density", "coverage"):
            assert key in r, key
    assert finished(out, "c*") == {c["name"]: [1, 2, 3, 4] for c in chains}
    for c in chains:
        for gen in range(1, 5):
            d = out / c["name"] / f"gen_{gen:03d}"
            for f in ("model.safetensors", "samples.npz", "preview.npz"):  # the defaults keep all
                assert (d / f).is_file(), d / f
    by = {(r["loop"], r["seed"], r["gen"]): r for r in recs}
    # counts per loop kind: generation 1 is real only; later ones follow the loop
    assert by[("fully_synthetic", 0, 1)]["n_real"] == 40 and by[("fully_synthetic", 0, 1)]["n_synth"] == 0
    assert by[("fully_synthetic", 0, 3)]["n_real"] == 0 and by[("fully_synthetic", 0, 3)]["n_synth"] == 40
    assert by[("fresh_data", 1, 3)]["n_real"] == 40 and by[("fresh_data", 1, 3)]["n_synth"] == 40
    # generation 1 is the same model in every loop kind with the same seed (same real data, same seeds)
    assert by[("fully_synthetic", 0, 1)]["w2"] == by[("fresh_data", 0, 1)]["w2"]
    assert by[("fully_synthetic", 0, 1)]["w2"] != by[("fully_synthetic", 1, 1)]["w2"]
    # later generations differ between loops
    assert by[("fully_synthetic", 0, 4)]["w2"] != by[("fresh_data", 0, 4)]["w2"]


def test_concurrent_and_sequential_chains_give_identical_records(tmp_path):
    run_in_process(tmp_path / "conc", "loop.generations=3")
    # Each task asks for both CPUs: Ray can run only one at a time, so chains run one after another.
    run_in_process(tmp_path / "seq", "loop.generations=3", "resources.train_cpus=2", "resources.sample_cpus=2",
                   "resources.eval_cpus=2")
    a, b = records(tmp_path / "conc"), records(tmp_path / "seq")
    assert len(a) == 9 and a == b


def test_completed_run_resumes_as_a_no_op(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "loop.generations=2")
    before = records(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("c*/**/*") if p.is_file()}
    run_in_process(out, "loop.generations=2")
    assert records(out) == before
    # nothing was recomputed: the chains' records and files are untouched
    assert {p: p.stat().st_mtime_ns for p in out.glob("c*/**/*") if p.is_file()} == stamps


def test_resume_continues_after_last_done_generation(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_in_process(full, "loop.generations=5", "loop.synth_source=accumulate")
    run_in_process(part, "loop.generations=5", "loop.synth_source=accumulate")
    # Undo the last three generations of one chain, the third torn mid-line (as a kill mid-write
    # leaves it), and the last two of another, then resume.
    cut_records(part, "c01-loop.kind=synthetic_augmentation", 2, torn="yes")
    cut_records(part, "c02-loop.kind=fresh_data", 3)
    # (a chain block commits a slice of generations with its last line: fewer may count as finished)
    assert 5 + 1 + 1 <= n_finished(part) <= 5 + 2 + 3
    run_in_process(part, "loop.generations=5", "loop.synth_source=accumulate")
    assert records(part) == records(full)
    assert n_finished(part) == 15


def test_different_config_is_refused_and_nothing_is_touched(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "loop.generations=2")
    # The lock file is the exception: the refused driver held the lock (and wrote its PID) to compare.
    snapshot = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    proc = run_cli(*GAUSS, f"out={out}", "loop.generations=2", "seed=5")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "different config" in lines[0] and "seed" in lines[0], proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == snapshot


def test_killed_run_resumes_to_the_same_records(tmp_path):
    args = [*GAUSS, "loop.generations=12", "data.dim=10", "metrics.n_eval=500", "loop.n_init=100",
            "sweep.loop.kind=[fully_synthetic,fresh_data]"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"out={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    # a chain block commits a slice of generations at once: kill after the first slice (one generation)
    while n_finished(out, "c00-*") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    # records.jsonl, not metrics.jsonl lines: a block appends to metrics.jsonl after records.jsonl
    n_done = n_finished(out)
    assert 1 <= n_done < 24, f"the kill came too late to test resume ({n_done} generations done)"
    assert resume_in_process(args, out) >= 1  # resumed, not started over
    run_in_process(ref, *args[len(GAUSS):])
    assert records(out) == records(ref)

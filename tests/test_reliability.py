"""What a run directory promises (README "Guarantees"): a diverged chain is stopped and recorded,
one writer at a time, resume from wherever the directory is, and finished generations checked
against their checksums (corrupt ones named and recomputed to identical records)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cut_records, finished, run_cli
from mad import artifacts
from mad.config import load_config
from mad.driver import Driver
from test_driver import GAUSS, records

pytestmark = pytest.mark.usefixtures("ray_local")

SWEEP6 = "sweep={loop.kind: [fully_synthetic, synthetic_augmentation, fresh_data], seed: [0, 1]}"


def run_in_process(out: "Path | str", *overrides: str, repair: bool = True) -> Driver:
    driver = Driver(load_config(None, [*GAUSS, f"out={out}", *overrides]), quiet=True, repair=repair)
    driver.run()
    return driver


def snapshot(root: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.name != artifacts.LOCK}


def test_diverged_chain_is_stopped_recorded_and_the_others_finish(tmp_path, capfd):
    out = tmp_path / "run"
    args = ["data.name=digits", "data.n_reference=300", "model.family=diffusion", "model.channels=[16,32]",
            "model.num_train_timesteps=100", "train.steps=20", "train.batch_size=32", "sample.steps=4",
            "metrics.features=raw", "metrics.n_eval=60", "loop.n_init=100", "loop.generations=2",
            "report.html=false", "report.tensorboard=false", "sweep={train.lr: [1000000.0, 0.001]}", f"out={out}"]
    bad, good = "c00-train.lr=1000000.0", "c01-train.lr=0.001"
    capfd.readouterr()
    driver = Driver(load_config(None, args), quiet=True)  # in process: the session's Ray is already up
    driver.run()
    assert list(driver.failed) == [bad]
    lines = capfd.readouterr().err.strip().splitlines()
    stop = [line for line in lines if bad in line and "diverged" in line]
    assert len(stop) == 1 and "generation 1" in stop[0] and "nan" in stop[0] and "train.lr" in stop[0], lines
    assert lines[-1] == f"mad: 1 of 2 chain(s) failed: {bad}"
    failed = json.loads((out / bad / "FAILED.json").read_text())
    assert failed["gen"] == 1 and failed["key"] == "train.lr"
    assert not (out / bad / "gen_001").exists()  # nothing of the diverged generation was persisted
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["chain"], r["gen"]) for r in recs] == [(good, 1), (good, 2)]
    assert all(np.isfinite(v) for r in recs for v in r.values() if isinstance(v, float))
    # A resume reports the failure again instead of retrying it, computes nothing, and exits 1.
    again = run_cli(*args, "--quiet")
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 2 and "earlier session" in lines[0] and "delete it to retry" in lines[0], lines
    assert json.loads((out / bad / "FAILED.json").read_text()) == failed


def test_second_driver_is_refused_and_records_are_not_duplicated(tmp_path):
    import ray

    out = tmp_path / "run"
    args = [*GAUSS, "loop.generations=20", "data.dim=10", "metrics.n_eval=500", "loop.n_init=100", f"out={out}"]
    # The first driver joins the session's Ray (no start-up of its own); the token is in our environment.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "config.yaml").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = run_cli(*args)
        assert first.poll() is None, "the first run ended before the second started; make it longer"
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on host {socket.gethostname()}" in lines[0], second.stderr
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    keys = [(r["chain"], r["gen"]) for r in records(out)]
    assert len(keys) == len(set(keys)) == 3 * 20
    # the lock goes with its holder: the same command now resumes (a no-op) instead of being refused
    assert run_cli(*args).returncode == 0


def test_lock_names_its_holder_and_is_released(tmp_path):
    a, b = artifacts.RunDir(tmp_path / "r"), artifacts.RunDir(tmp_path / "r")
    a.lock()
    with pytest.raises(artifacts.RunDirLocked, match=f"pid {os.getpid()} on host"):
        b.lock()
    a.unlock()  # a directory with nothing but the lock is removed again: a failed start leaves nothing
    assert not (tmp_path / "r").exists()
    b.lock()
    b.unlock()


def test_moved_and_differently_spelled_run_directory_resumes_to_identical_records(tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    run_in_process(full, "loop.generations=4")
    run_in_process(part, "loop.generations=4")
    cut_records(part, "c01-loop.kind=synthetic_augmentation", 2)  # as a crash leaves it
    (tmp_path / "proj" / "runs").mkdir(parents=True)
    moved = tmp_path / "proj" / "runs" / "x"
    shutil.move(str(part), str(moved))
    # relative, with a trailing slash and a detour: only the directory matters
    monkeypatch.chdir(tmp_path / "proj" / "runs")
    run_in_process("../runs/x/", "loop.generations=4")
    assert finished(moved)["c01-loop.kind=synthetic_augmentation"] == [1, 2, 3, 4]
    assert records(moved) == records(full)
    assert load_config(moved / "config.yaml").out == "../runs/x/"  # config.yaml follows the directory


def test_unfinished_run_with_another_config_is_replaced(tmp_path, capfd):
    out = tmp_path / "run"
    run_in_process(out, "loop.generations=2", "seed=3")
    for d in out.glob("*/records.jsonl"):  # as a run that failed before finishing anything leaves it
        d.unlink()
    capfd.readouterr()
    run_in_process(out, "loop.generations=2")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs in: seed" in err[0] and "replaced" in err[0], err
    run_in_process(tmp_path / "ref", "loop.generations=2")
    assert records(out) == records(tmp_path / "ref")


def _edit_samples(path: Path) -> None:
    data = artifacts.read_npz(path)
    data["x"] = data["x"] + 1e-3  # still a valid .npz of the right size: only the checksum sees it
    artifacts.write_npz(path, **data)


def to_old_layout(run_dir: Path, chain: str, checksums: bool = True) -> None:
    """Rewrite a chain as mad wrote it before records.jsonl: per generation manifest.json, metrics.json
    and DONE, written last, with the size and SHA-256 of every file (``checksums=False``: an empty
    DONE, from before checksums)."""
    rd = artifacts.RunDir(run_dir)
    for f in rd.read_chain(chain).finished:
        d = rd.gen_dir(chain, f.gen)
        artifacts.write_json(d / "manifest.json", f.manifest)
        artifacts.write_json(d / "metrics.json", f.metrics)
        names = [p.name for p in sorted(d.iterdir())]
        done = {"hash": "sha256", "files": {n: artifacts._file_digest(d / n) for n in names}} if checksums else ""
        (d / "DONE").write_text(json.dumps(done) if checksums else "")
    (run_dir / chain / "records.jsonl").unlink()


def test_corrupt_generations_are_named_and_recomputed_to_identical_records(tmp_path, capfd):
    ref, out = tmp_path / "ref", tmp_path / "run"
    run_in_process(ref, "loop.generations=4", SWEEP6)
    shutil.copytree(ref, out)
    chains = [c["name"] for c in json.loads((out / "chains.json").read_text())]
    g = lambda i, gen: out / chains[i] / f"gen_{gen:03d}"  # noqa: E731
    recs = out / chains[0] / "records.jsonl"
    lines = recs.read_text().splitlines(keepends=True)
    recs.write_text(lines[0] + lines[1].replace('"loop": "', '"loop": "x', 1) + "".join(lines[2:]))
    samples = (g(1, 3) / "samples.npz").read_bytes()
    (g(1, 3) / "samples.npz").write_bytes(samples[: len(samples) // 2])
    _edit_samples(g(2, 1) / "samples.npz")
    (g(3, 4) / "model.safetensors").unlink()
    to_old_layout(out, chains[4], checksums=False)  # a run directory from before checksums
    (g(4, 3) / "metrics.json").write_text("")
    to_old_layout(out, chains[5])  # ... and one from before records.jsonl, intact
    named = [recs, g(1, 3) / "samples.npz", g(2, 1) / "samples.npz",
             g(3, 4) / "model.safetensors", g(4, 3) / "metrics.json"]

    proc = run_cli("verify", str(out))
    assert proc.returncode == 1
    problems = proc.stdout.strip().splitlines()[:-1]
    assert sorted(line.split(":")[0] for line in problems) == sorted(map(str, named)), proc.stdout
    assert "5 problem(s)" in proc.stdout.splitlines()[-1]

    # --no-repair: exit 2, one line naming a corrupt file, nothing changed
    before = snapshot(out)
    proc = run_cli(*GAUSS, "loop.generations=4", SWEEP6, f"out={out}", "--no-repair")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and any(str(p) in lines[0] for p in named) and "--no-repair" in lines[0], lines
    assert snapshot(out) == before

    capfd.readouterr()
    run_in_process(out, "loop.generations=4", SWEEP6)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(any(str(p) in line for line in err) for p in named), err
    assert records(out) == records(ref)
    for p in named[1:4]:  # the recomputed files are the very bytes of the undisturbed run
        assert p.read_bytes() == (ref / p.relative_to(out)).read_bytes(), p
    proc = run_cli("verify", str(out))
    assert proc.returncode == 0 and "0 problem(s)" in proc.stdout, proc.stdout
    # the old chains were converted: records.jsonl, and in their generation directories only kept files
    for i in (4, 5):
        assert (out / chains[i] / "records.jsonl").is_file()
        assert sorted(p.name for p in g(i, 2).iterdir()) == ["model.safetensors", "preview.npz", "samples.npz"]


def test_verify_accepts_dropped_models_and_refuses_a_non_run(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "loop.generations=3", "artifacts.keep_models=last", "sweep={}")
    assert sorted(p.parent.name for p in out.rglob("model.safetensors")) == ["gen_003"]
    problems, summary = artifacts.verify_run(out)
    assert problems == [] and "3 finished generation(s) of 1 chain(s)" in summary
    proc = run_cli("verify", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_non_finite_weights_and_samples_are_errors_for_every_family():
    import pickle

    import torch

    from mad.divergence import DivergedError, check_samples, check_state

    with pytest.raises(DivergedError, match="NaN/inf in cov") as err:
        check_state({"mean": torch.zeros(2), "cov": torch.tensor([[1.0, float("inf")], [0.0, 1.0]])}, "gaussian")
    assert err.value.key is None
    with pytest.raises(DivergedError, match="samples") as err:
        check_samples(np.array([[0.0, np.nan]]), "diffusion")
    assert err.value.key == "train.lr"
    check_samples(np.zeros((2, 1, 8, 8), dtype=np.uint8), "diffusion")  # integer images cannot diverge
    # it crosses process boundaries (Ray pickles task errors) with its fields
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.what, again.key, str(again)) == (err.value.what, err.value.key, str(err.value))

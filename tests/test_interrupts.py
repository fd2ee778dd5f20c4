"""Stopping a run, as users and machines do: Ctrl-C, a SIGKILL of the driver alone (the OOM
killer), an exception inside a Ray task. Real runs of ``run.py`` on a small Gaussian (the
exception: a tiny diffusion model), real Ray, no mocks.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, n_finished, run_cli
from mad.reaper import reap, session_processes

GAUSS = ["configs/experiment/gaussian.yaml", "sweep={}", "report.tensorboard=false", "report.html=false"]


@pytest.fixture
def ray_base():
    """A short base for Ray's folder (Unix socket paths must stay under 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _start(*args: str, preexec_fn=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_TMPDIR", None)
    # its own session: a SIGINT to its process group is what Ctrl-C in a terminal sends
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=preexec_fn)


def _wait_for(chain_glob: str, gens: int, root: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while n_finished(root, chain_glob) < gens:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {gens} finished generations of {chain_glob} after {timeout}s"
        time.sleep(0.2)


def _records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("wall_s"), r.pop("time")
    return sorted(rows, key=lambda r: (r["chain"], r["gen"]))


def _ray_root_of(pid: int) -> str:
    """The private Ray folder of a driver, read from the environment of its Ray children."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                for var in f.read().split(b"\0"):
                    if var.startswith(b"RAY_TMPDIR="):
                        return var.split(b"=", 1)[1].decode()
        except (OSError, IndexError, ValueError):
            continue
    raise AssertionError(f"no Ray child of {pid} found")


# issue 25 case 5: a 6-D Gaussian fresh-data sweep of 3 seeds, run in chain blocks
FRESH = ["configs/experiment/gaussian_fresh.yaml", "data.dim=6", "sweep={seed: [0, 1, 2]}",
         "report.tensorboard=false", "report.html=false"]
LINES = {signal.SIGINT: (130, "error: interrupted; rerun the same command to resume"),
         signal.SIGTERM: (143, "error: terminated (SIGTERM); rerun the same command to resume")}
STOP_S = 2.0  # a signal stops a run within this


def _ignoring_sigint() -> None:
    """What ``cmd &`` in a script does to its command: SIGINT ignored from the start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_gone(root: Path, timeout: float = 10) -> None:
    """mad.reaper ends a local Ray and removes its folder once the driver is gone: wait for it."""
    deadline = time.monotonic() + timeout
    while (session_processes(str(root)) or root.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_sigint_and_sigterm_stop_a_block_run_in_2s_with_one_line_and_resume_identically(tmp_path, ray_base):
    gens, signal_after = 26, 13
    cmd = [*FRESH, f"loop.generations={gens}", f"ray.temp_dir={ray_base}"]
    ref = tmp_path / "ref"
    undisturbed = _start(*cmd, f"out={ref}", "--quiet")
    for signum in (signal.SIGINT, signal.SIGTERM):
        run = tmp_path / signum.name
        # SIGINT to the driver alone, whose parent ignored SIGINT: the run went on for 70 s
        proc = _start(*cmd, f"out={run}", preexec_fn=_ignoring_sigint)
        _wait_for("*", signal_after, run, proc)
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
        code, line = LINES[signum]
        assert proc.returncode == code, err[-3000:]
        assert err.strip().splitlines() == [line], err[-3000:]
        assert took < STOP_S, f"{signum.name}: the driver took {took:.2f}s to stop"
        assert "[block of " in out  # the chains ran in blocks
        assert signal_after <= n_finished(run) < 3 * gens, "the signal came too late to test anything"

    assert undisturbed.wait(timeout=600) == 0, undisturbed.communicate()[1][-3000:]
    for signum in (signal.SIGINT, signal.SIGTERM):
        run = tmp_path / signum.name
        again = run_cli(*cmd, f"out={run}", "--quiet", timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _records(run) == _records(ref)
        assert len(_records(run)) == 3 * gens
    # every local Ray of these runs ended and left no folder; the parent is private to the user
    parent = ray_base / f"mad-ray-{os.getuid()}"
    for root in list(parent.iterdir()):
        _wait_gone(root)
    assert list(parent.iterdir()) == []
    assert parent.stat().st_mode & 0o777 == 0o700


SIGKILL_TRIES = int(os.environ.get("MAD_SIGKILL_TRIES", "3"))  # MAD_SIGKILL_TRIES=20: the 20 out of 20
GONE_S = 10.0  # no process of the run's Ray is left this long after the driver's SIGKILL


@pytest.mark.slow
def test_sigkill_of_the_driver_alone_leaves_no_ray_process(tmp_path, ray_base):
    """Issue 25 case 6: ray::DashboardAgent and ray::RuntimeEnvAgent were alive 20 s after kill -9 once
    in three tries. Each try kills the driver alone, as the OOM killer does, after 1, 5 or 10 records."""
    for i in range(SIGKILL_TRIES):
        run = tmp_path / f"run{i}"
        proc = _start(*GAUSS, "loop.generations=3000", f"ray.temp_dir={ray_base}", f"out={run}", "--quiet")
        _wait_for("c00-*", (1, 5, 10)[i % 3], run, proc)
        root = _ray_root_of(proc.pid)
        assert root.startswith(str(ray_base)) and len(session_processes(root)) >= 2  # GCS, raylet, agents, workers
        try:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            killed = time.monotonic()
            while (session_processes(root) or Path(root).exists()) and time.monotonic() - killed < GONE_S:
                time.sleep(0.2)
            left = [_name(pid) for pid in session_processes(root)]
            assert left == [], f"try {i + 1}: Ray processes left {GONE_S:.0f} s after the driver died: {left}"
            assert not Path(root).exists(), f"try {i + 1}: {root} left"
        finally:
            reap(root)  # never leave a stray Ray behind for the next test, whatever happened


def _name(pid: int) -> str:
    try:
        return f"{pid} " + Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:80]
    except OSError:
        return f"{pid} (gone)"


def test_an_exception_inside_a_task_is_one_line_with_chain_generation_stage_and_traceback_file(tmp_path):
    run = tmp_path / "run"
    # five UNet levels do not fit 8x8 digits: the model raises inside the training task
    proc = run_cli(f"out={run}", "model.channels=[8,8,8,8,8]", "train.steps=2", "loop.generations=1",
                   "sweep={}", "metrics.features=raw", "report.tensorboard=false", "--quiet", timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert "chain c00-fully_synthetic, generation 1, train failed: ValueError: image size 8x8" in line
    path = Path(line.rsplit("full traceback: ", 1)[1].rstrip(")"))
    assert path == run / "errors" / "c00-fully_synthetic-gen001-train.txt"
    text = path.read_text()
    assert "stage: train" in text and "build_unet" in text and "Traceback" not in line


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs a small tmpfs (root with mount rights)")
    try:
        # 1000 samples of dimension 50 are 400 kB: the first generation's samples.npz cannot fit
        proc = run_cli(*GAUSS, "data.dim=50", "loop.generations=2", f"out={small / 'run'}", "--quiet", timeout=600)
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-3000:]
        assert "No space left on device" in lines[0] and str(small / "run") in lines[0], lines[0]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def _read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    """The driver's stdout lines up to the first that starts with ``prefix``."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line {prefix!r}: {''.join(seen)[-2000:]}{proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_once_the_run_has_finished_exits_0_without_a_line(tmp_path, ray_base, signum):
    """The issue's SIGTERM in the last ~2 s: exit 0 with a traceback, 143 without a line, 130 after the end."""
    run = tmp_path / "run"
    proc = _start(*FRESH, "loop.generations=3", f"ray.temp_dir={ray_base}", f"out={run}", "--quiet")
    _read_until(proc, "mad: done")  # the run's last line but the report's: everything is written
    sent = 0
    while proc.poll() is None:  # signals all through the shutdown, until the process is gone
        proc.send_signal(signum)
        sent += 1
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert sent >= 1
    assert proc.returncode == 0, err[-3000:]
    assert err == "", err[-3000:]
    assert n_finished(run) == 9


def test_sigterm_while_ray_starts_is_143_with_one_line(tmp_path, ray_base):
    """Ray's own SIGTERM handler (``sys.exit(15)``) is in place while ``ray.init`` runs."""
    run = tmp_path / "run"
    proc = _start(*FRESH, "loop.generations=3", f"ray.temp_dir={ray_base}", f"out={run}")
    _read_until(proc, "mad: connecting")
    time.sleep(0.3)  # inside ray.init: it takes seconds
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines() == [LINES[signal.SIGTERM][1]], err[-3000:]
    assert took < STOP_S, f"took {took:.2f}s"
    assert n_finished(run) == 0  # it was stopped before the first generation

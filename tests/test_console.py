"""The console of a run (issue 14, item 1): bars labelled by chain, generation and stage and closed
however their task ends, none left on the screen after the final table, table columns apart, and a
time-left estimate from the per-chain time per generation and the chains running at once."""
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import ROOT
from mad.progress import RunClock, eta_seconds


# ------------------------------------------------------------------ time left
def test_eta_spreads_the_work_over_the_chains_running_at_once():
    # 4 chains with 10 generations left, 2 at once, 3 s per chain-generation: 40 * 3 / 2
    assert eta_seconds([10, 10, 10, 10], 3.0, 2) == pytest.approx(60.0)
    # more slots than chains: the chains run side by side, so the longest chain decides
    assert eta_seconds([10, 10, 10], 3.0, 8) == pytest.approx(30.0)
    # one long chain outlasts the spread of the others: 12 generations in order
    assert eta_seconds([12, 1, 1], 2.0, 2) == pytest.approx(24.0)
    assert eta_seconds([0, 0], 2.0, 2) == 0.0


def test_run_clock_excludes_start_up_and_counts_parallel_work_once_per_slot():
    clock = RunClock(slots=2)
    assert clock.time_left([5]) is None  # nothing measured yet: no estimate rather than a wild one
    # Ray's start-up (100 s) happens before the first submission and does not count
    clock.in_flight(4, now=100.0)  # 4 chains submitted, 2 can run at once
    clock.done(now=110.0)  # after 10 s, one generation done; the chain's next one submitted
    clock.done(2, now=120.0)  # after 10 s more, two more done
    # 2 slots busy for 20 s; the later half of it (110-120 s): 20 slot-seconds for 2 generations
    assert clock.per_gen_s(now=120.0) == pytest.approx(10.0)
    # 8 generations left over 2 slots; the old estimate (elapsed incl. start-up / generations done *
    # generations left) would say 120 / 3 * 8 = 320 s
    assert clock.time_left([2, 2, 2, 2], now=120.0) == pytest.approx(8 * 10.0 / 2)
    # two blocks left: only 2 units of work can run, whatever the slots
    wide = RunClock(slots=8)
    wide.in_flight(2, now=0.0)
    wide.done(10, now=10.0)  # 20 slot-seconds for 10 chain-generations
    assert wide.time_left([1] * 10, parallel=2, now=10.0) == pytest.approx(10 * 2.0 / 2)


def test_run_clock_forgets_the_slow_first_generations():
    clock = RunClock(slots=2)
    clock.in_flight(2, now=0.0)
    clock.done(1, now=30.0)  # the first generation: 30 s (workers start, reference statistics)
    for t in range(40, 101, 10):
        clock.done(2, now=float(t))  # then 2 generations every 10 s on 2 slots: 10 s each
    # only the later half (50-100 s) counts: 100 slot-seconds for 10 generations
    assert clock.per_gen_s(now=100.0) == pytest.approx(10.0)
    # the whole history would have said 200 / 15
    assert clock.busy_s / clock.finished == pytest.approx(200.0 / 15)


# ------------------------------------------------------------------ bars of a task that raises
def test_a_task_that_raises_inside_its_loop_closes_its_bar(ray_local):
    import ray

    from mad import remote
    from mad.progress import BarSpec, progress_bar, worker_bars

    @ray.remote
    def failing(spec):
        with worker_bars(spec) as on:
            for i in progress_bar(range(100), "train", on):
                if i == 3:
                    raise RuntimeError("boom")

    @ray.remote
    def hanging(spec):
        with worker_bars(spec) as on:
            for _ in progress_bar(range(100), "sample", on):
                time.sleep(0.05)

    board = remote.start_bar_board()
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(failing.remote(BarSpec(board, "c00 g1")))
    assert ray.get(board.snapshot.remote()) == {}  # closed, not left open by the exception
    ref = hanging.remote(BarSpec(board, "c01 g2"))
    deadline = time.time() + 30
    while not ray.get(board.snapshot.remote()) and time.time() < deadline:
        time.sleep(0.05)
    # while it runs, the bar is on the board under its chain, generation and stage
    assert [label for label, _, total in ray.get(board.snapshot.remote()).values()] == ["c01 g2 sample"]
    ray.get(ref)
    assert ray.get(board.snapshot.remote()) == {}


# ------------------------------------------------------------------ the console through a terminal
def run_in_terminal(args: list[str], timeout: float = 240, cols: int = 150) -> tuple[int, str]:
    """``python run.py ARGS`` on a pseudo-terminal (stdout and stderr), as a user sees it."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(cols)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out, deadline = bytearray(), time.time() + timeout
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer of the terminal has exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(raw: str) -> list[str]:
    """The lines a terminal shows (scrollback included) after ``raw``: carriage returns, newlines,
    cursor up (tqdm's multi-line bars) and erase-in-line; colours ignored."""
    lines, row, col, i = [[]], 0, 0, 0
    while i < len(raw):
        ch = raw[i]
        m = _CSI.match(raw, i) if ch == "\x1b" else None
        if m:
            n = int(m.group(1) or 1) if m.group(1).isdigit() else 1
            if m.group(2) == "A":
                row = max(0, row - n)
            elif m.group(2) == "B":
                row += n
            elif m.group(2) == "K":
                del lines[row][col:]
            i = m.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " ":
            line = lines[row]
            line.extend(" " * (col - len(line) + 1) if col >= len(line) else "")
            line[col] = ch
            col += 1
        while len(lines) <= row:
            lines.append([])
        i += 1
    return ["".join(line).rstrip() for line in lines]


BAR = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]| g\d+ (train|sample)")
TINY_DIGITS = ["data.name=digits", "data.n_reference=200", "model.family=diffusion", "model.channels=[8,16]",
               "model.num_train_timesteps=100", "train.steps=60", "train.batch_size=32", "sample.steps=5",
               "metrics.features=raw", "metrics.n_eval=100", "loop.n_init=150", "loop.n_real=null",
               "loop.n_synth=null", "loop.generations=2", "report.html=false", "report.tensorboard=false",
               "ray.num_cpus=2", "sweep={sample.bias: [1.0, 0.5]}"]


@pytest.mark.slow
def test_console_of_a_real_run_in_a_terminal(tmp_path):
    out = tmp_path / "run"
    rc, raw = run_in_terminal([*TINY_DIGITS, f"out={out}"])
    assert rc == 0, raw[-3000:]
    # the workers' bars were drawn, labelled by chain, generation and stage (not by worker PID)
    labels = set(re.findall(r"(c0\d-\S+ g\d (?:train|sample)):", raw))
    assert {"c00-sample.bias=1.0 g2 train", "c01-sample.bias=0.5 g2 train"} <= labels, labels
    assert "(pid=" not in raw
    lines = screen(raw)
    start = next(i for i, line in enumerate(lines) if line.startswith("fid: FID (raw"))  # the table's first block
    after = [line for line in lines[start:] if line.strip()]
    assert not [line for line in after if BAR.search(line)], "\n".join(after)
    # nothing bar-like is even written after the table starts (a cleared bar would still flash)
    assert not BAR.search(raw[raw.index("fid: FID (raw"):])
    # every row of every metric block: the chain, then one cell per generation, 2+ spaces apart
    rows = [line for line in after if line.startswith("  c0")]
    assert len(rows) == 2 * 3, after  # 2 chains x (fid, precision, recall)
    for row in rows:
        cells = re.split(r" {2,}", row.strip())
        assert len(cells) == 3, row  # chain, gen 1, gen 2
    # the last lines say where the run is, --quiet or not
    assert f"run directory {out}" in after[-1], after[-2:]
    # the time left was estimated from measured generations, not from elapsed time with start-up
    assert re.search(r"gen   1/2 .*~\d+s left\)", raw)


@pytest.mark.slow
def test_quiet_still_says_where_the_run_and_its_report_are(tmp_path):
    from conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli("configs/experiment/gaussian.yaml", "sweep={}", "loop.generations=2", "ray.num_cpus=2",
                   "report.tensorboard=false", f"out={out}", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout  # nothing but where things are
    assert f"run directory {out}" in lines[0]
    assert lines[1] == f"mad: report {out / 'report.html'}"
    assert (out / "report.html").is_file()

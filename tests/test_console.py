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
from mad.progress import RunClock, TimeLeft, eta_seconds


# ------------------------------------------------------------------ time left
def test_eta_spreads_the_work_over_the_chains_running_at_once():
    # 4 chains with 10 generations left, 2 at once, 3 s per chain-generation: 40 * 3 / 2
    assert eta_seconds([10, 10, 10, 10], 3.0, 2) == pytest.approx(60.0)
    # more slots than chains: the chains run side by side, so the longest chain decides
    assert eta_seconds([10, 10, 10], 3.0, 8) == pytest.approx(30.0)
    # one long chain outlasts the spread of the others: 12 generations in order
    assert eta_seconds([12, 1, 1], 2.0, 2) == pytest.approx(24.0)
    assert eta_seconds([0, 0], 2.0, 2) == 0.0


class FakeClock:
    """A time source the test moves by hand (seconds)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_run_clock_excludes_start_up_and_credits_each_unit_its_share_of_the_slots():
    t = FakeClock(100.0)  # Ray's start-up (100 s) happens before the first submission and does not count
    clock = RunClock(slots=2, clock=t)
    assert clock.time_left([5]) is None  # nothing measured yet: no estimate rather than a wild one
    for chain in "abcd":  # 4 chains submitted, 2 can run at once: each unit gets half a slot
        clock.submitted(chain)
    t.t = 120.0
    clock.finished("a")  # after 20 s: 20 * 2 / 4 = 10 slot-seconds
    assert clock.per_gen_s() == pytest.approx(10.0)
    clock.submitted("a2")
    # 8 generations left (the 3 in flight included) over 2 slots, less the 3 * 10 slot-seconds the
    # units in flight have done of them; the old estimate (elapsed incl. start-up / generations done
    # * generations left) would say 120 / 1 * 8
    assert clock.time_left([2, 2, 2, 2]) == pytest.approx((8 * 10.0 - 3 * 10.0) / 2)
    # a block of 10 chain-generations on one of 8 CPUs, and only 2 blocks left to run
    wide = RunClock(slots=8, clock=t)
    wide.submitted("block", n=10)
    t.t += 20.0
    wide.finished("block", 10)  # 20 slot-seconds for 10 chain-generations
    assert wide.time_left([1] * 10, parallel=2) == pytest.approx(10 * 2.0 / 2)
    # a unit that failed says nothing of the cost of a generation
    wide.submitted("bad")
    t.t += 1000.0
    wide.finished("bad", 0)
    assert wide.per_gen_s() == pytest.approx(2.0)


def test_run_clock_forgets_the_slow_first_generations():
    t = FakeClock(0.0)
    clock = RunClock(slots=2, clock=t)
    clock.submitted("a0"), clock.submitted("b0")
    t.t = 30.0
    clock.finished("a0"), clock.finished("b0")  # the first generations: 30 s (workers start, reference statistics)
    for i in range(1, 8):
        clock.submitted(f"a{i}"), clock.submitted(f"b{i}")
        t.t += 10.0
        clock.finished(f"a{i}"), clock.finished(f"b{i}")  # then 10 s each on 2 slots
    # only the later half (50-100 s) counts
    assert clock.per_gen_s() == pytest.approx(10.0)
    # the whole history would have said 200 / 16
    assert clock.busy_s / clock.n_finished == pytest.approx(200.0 / 16)


def test_one_time_left_for_chains_that_finish_together():
    # issue 20: three chains on three slots end their first generation (300 s) within a second; the
    # old clock divided all the slot-seconds so far by the generations finished, giving three very
    # different figures on three consecutive lines (1176 s, 809 s, 588 s)
    t = FakeClock(0.0)
    clock = RunClock(slots=3, clock=t)
    eta = TimeLeft(clock)
    for chain in "abc":
        clock.submitted((chain, 1))
    seen = []
    for i, chain in enumerate("abc"):
        t.t = 300.0 + 0.2 * i
        clock.finished((chain, 1))
        left = {c: 5 if j <= i else 6 for j, c in enumerate("abc")}  # 6 generations each
        seen.append(eta.update(list(left.values())))
        assert eta.text() == f", ~{seen[-1]:.0f}s left"
        clock.submitted((chain, 2))
    # one figure within the second (it may only fall), 5 more generations of ~300 s each, side by side
    assert seen == sorted(seen, reverse=True) and seen[0] - seen[-1] < 0.5, seen
    assert len({f"{x:.0f}" for x in seen}) == 1 and seen[-1] == pytest.approx(5 * 300.0, rel=1e-3)
    # the clock itself, asked at the last line, agrees: each unit is charged its share of the slots
    fresh = [clock.time_left([5, 5, 5], now=300.4)]
    assert fresh[0] == pytest.approx(5 * 300.0 - 0.4, rel=1e-3)
    # a later update (10 s on, nothing finished) re-estimates: the clock ran, the figure fell as much
    t.t = 310.4
    assert eta.update([5, 5, 5]) == pytest.approx(seen[-1] - 10.0, abs=2.0)  # the 3 costs: 300-300.4 s


def test_time_left_falls_monotonically_when_nothing_changes():
    t = FakeClock(0.0)
    clock = RunClock(slots=2, clock=t)
    eta = TimeLeft(clock)
    assert eta.text() == ""  # nothing measured: nothing printed
    gens, n_chains = 6, 4
    left = [gens] * n_chains
    in_flight = {}
    for c in range(2):  # 2 of the 4 chains at once, one generation of 10 s each
        clock.submitted((c, 1)), in_flight.setdefault(c, 1)
    queue = [2, 3]
    figures = []
    while in_flight:
        t.t += 10.0
        for c, g in sorted(in_flight.items()):
            clock.finished((c, g))
            left[c] -= 1
        figures.append(eta.update(left))
        done = [c for c in in_flight]
        in_flight = {}
        for c in done:
            nxt = c if left[c] > 0 else (queue.pop(0) if queue else None)
            if nxt is not None:
                g = gens - left[nxt] + 1
                clock.submitted((nxt, g))
                in_flight[nxt] = g
        if not in_flight and queue:
            nxt = queue.pop(0)
            clock.submitted((nxt, 1)), in_flight.setdefault(nxt, 1)
    # a steady run: one figure per update, each lower than the last, 0 at the end
    assert all(b < a for a, b in zip(figures, figures[1:])), figures
    assert figures[-1] == 0.0
    assert figures[0] == pytest.approx((4 * 6 - 2) * 10.0 / 2)  # 22 generations of 10 s on 2 slots

    # between updates the estimate counts down with the clock, and stops (never below the
    # work it knows of) when a generation runs later than measured
    t2 = FakeClock(0.0)
    clock = RunClock(slots=1, clock=t2)
    clock.submitted("g1")
    t2.t = 10.0
    clock.finished("g1")
    clock.submitted("g2")
    at = [clock.time_left([2], now=s) for s in (10.0, 13.0, 16.0, 20.0, 30.0, 60.0)]
    assert at == pytest.approx([20.0, 17.0, 14.0, 10.0, 10.0, 10.0])


def test_the_lines_of_one_update_show_one_figure(ray_local, tmp_path, capsys):
    """Three chains share generation 1 (the loop kinds differ from generation 2 on): one unit of
    work, one update, three lines, one figure."""
    from mad.config import load_config
    from mad.driver import Driver

    cfg = load_config("configs/experiment/gaussian.yaml", [
        "sweep={loop.kind: [fully_synthetic, synthetic_augmentation, fresh_data]}", "loop.generations=3",
        "resources.block_size=0", "report.html=false", "report.tensorboard=false", f"out={tmp_path / 'run'}"])
    Driver(cfg).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if re.search(r"\] gen +\d+/3 ", line)]
    assert len(lines) == 9, lines
    first = [line for line in lines if " gen   1/3 " in line]
    figures = {re.search(r"~(\d+)s left\)", line).group(1) for line in first}
    assert len(first) == 3 and len(figures) == 1, first
    assert all(re.search(r"~\d+s left\)", line) for line in lines), lines


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

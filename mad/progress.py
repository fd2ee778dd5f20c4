"""The console of a run: progress bars of work that runs in Ray workers, the driver's lines, and
the time-left estimate.

Bars: a task's bars are labelled ``chain gen stage`` (``fully_synthetic/lam1/seed0 g3 sample``)
and drawn by the driver, not by the worker. A worker's bar sends its count to a :class:`BarBoard`
(a small Ray actor that ``mad.remote`` starts when bars are wanted); the driver polls the board
while it waits for results and draws one ``tqdm`` line per open bar (:class:`ConsoleBars`), cleared
when the bar closes. Every bar is closed in a ``finally``: by :func:`progress_bar` when its loop
ends, by :func:`worker_bars` when a task ends however it ends, and by the driver before the final
table. Ray's own ``tqdm_ray`` is not used: it labels bars by worker PID and leaves every finished
bar on the screen as a frozen line.

This module does not import Ray: the board's handle is passed in, and its methods are called
through ``.remote`` like any actor's.
"""
from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

_bar_factory: Optional[Callable[..., Any]] = None
_printer: Optional[Callable[[str], None]] = None

SEND_EVERY_S = 0.5  # a worker's bar sends its count at most this often (and once when it closes)
POLL_EVERY_S = 0.5  # the driver redraws its bars at most this often


def set_bar_factory(factory: Optional[Callable[..., Any]]) -> None:
    """``factory(desc=..., total=...)`` makes the bars of this process (None: tqdm)."""
    global _bar_factory
    _bar_factory = factory


def set_console_printer(printer: Optional[Callable[[str], None]]) -> None:
    """``printer(msg)`` prints the driver's lines without tearing its bars (None: print)."""
    global _printer
    _printer = printer


def progress_bar(iterable: Iterable, desc: str, enabled: bool, total: Optional[int] = None) -> Iterable:
    """``iterable``, counted on a bar named ``desc`` when ``enabled``; the bar is closed when the
    loop ends, breaks or raises."""
    if not enabled:
        return iterable
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return _counted(iterable, desc, total)


def _counted(iterable: Iterable, desc: str, total: Optional[int]) -> Iterator:
    if _bar_factory is not None:
        bar = _bar_factory(desc=desc, total=total)
    else:
        from tqdm.auto import tqdm

        bar = tqdm(desc=desc, total=total, leave=False)
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


def console_print(msg: str) -> None:
    """Print a line on the driver without tearing its progress bars."""
    if _printer is not None:
        _printer(msg)
    else:
        print(msg, flush=True)


# ----------------------------------------------------------------------------- bars of Ray workers
class BarBoard:
    """The open bars of every worker, by id: (label, count, total). Run as a Ray actor (no CPU):
    workers call ``update``, the driver ``snapshot``."""

    def __init__(self) -> None:
        self._bars: dict[str, tuple[str, int, Optional[int]]] = {}

    def update(self, bar_id: str, label: str, n: int, total: Optional[int], closed: bool) -> None:
        if closed:
            self._bars.pop(bar_id, None)
        else:
            self._bars[bar_id] = (label, n, total)

    def snapshot(self) -> dict[str, tuple[str, int, Optional[int]]]:
        return dict(self._bars)


_ids = itertools.count()


class BoardBar:
    """A worker's bar: its count goes to the board at most every ``SEND_EVERY_S``, and on close."""

    def __init__(self, board: Any, label: str, total: Optional[int], registry: Optional[set] = None) -> None:
        self.board, self.label, self.total = board, label, total
        self.id = f"{os.getpid()}-{next(_ids)}-{id(self)}"
        self.n = 0
        self.closed = False
        self._sent = 0.0
        self._registry = registry
        if registry is not None:
            registry.add(self)
        self._send()

    def _send(self) -> None:
        self._sent = time.monotonic()
        # fire and forget: the driver only ever sees the latest count
        self.board.update.remote(self.id, self.label, self.n, self.total, self.closed)

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._sent >= SEND_EVERY_S:
            self._send()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._registry is not None:
            self._registry.discard(self)
        self._send()


@dataclass(frozen=True)
class BarSpec:
    """What a task needs to draw its bars on the driver: the board and the ``chain gen`` label."""

    board: Any
    label: str


@contextlib.contextmanager
def worker_bars(spec: Optional[BarSpec]) -> Iterator[bool]:
    """Inside a task: bars go to ``spec``'s board as ``<label> <stage>``; yields whether bars are
    on. Every bar still open when the task ends (it raised inside a loop) is closed here."""
    if spec is None:
        yield False
        return
    open_bars: set = set()
    set_bar_factory(lambda desc, total=None: BoardBar(spec.board, f"{spec.label} {desc}", total, open_bars))
    try:
        yield True
    finally:
        for bar in list(open_bars):
            try:
                bar.close()
            except Exception:  # the board is gone (Ray shutting down): nothing left to clear
                pass
        set_bar_factory(None)


class ConsoleBars:
    """The driver's drawing of a board's bars: one ``tqdm`` line per open bar, removed (not left
    behind) when the bar closes. ``write`` prints a line above the bars."""

    poll_every = POLL_EVERY_S

    def __init__(self, board: Any, get: Callable[[Any], Any]) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.board, self._get = board, get
        self._shown: dict[str, Any] = {}
        self._polled = 0.0
        self._lock = threading.Lock()
        self.broken = False

    def poll(self, force: bool = False) -> None:
        """Redraw from the board (at most every ``POLL_EVERY_S`` unless ``force``)."""
        if not force and time.monotonic() - self._polled < POLL_EVERY_S:
            return
        self._polled = time.monotonic()
        if self.broken:
            return
        try:
            snapshot = self._get(self.board.snapshot.remote())
        except Exception:  # the board's actor died: bars are a courtesy, the run goes on without them
            self.broken = True
            snapshot = {}
        with self._lock:
            for bar_id in [b for b in self._shown if b not in snapshot]:
                self._shown.pop(bar_id).close()
            for bar_id, (label, n, total) in sorted(snapshot.items(), key=lambda kv: kv[1][0]):
                bar = self._shown.get(bar_id)
                if bar is None:
                    bar = self._tqdm(desc=label, total=total, leave=False, dynamic_ncols=True)
                    self._shown[bar_id] = bar
                if bar.n != n:
                    bar.update(n - bar.n)

    def write(self, msg: str) -> None:
        with self._lock:
            self._tqdm.write(msg)

    def close(self) -> None:
        """Remove every bar from the screen (leave=False clears their lines)."""
        with self._lock:
            for bar in self._shown.values():
                bar.close()
            self._shown.clear()


# ----------------------------------------------------------------------------- time left
def eta_seconds(left: Sequence[int], per_gen_s: float, parallel: int, done: float = 0.0,
                head: float = 0.0) -> float:
    """Seconds until every chain is done: the chains' remaining generations (``left``, one entry
    per unfinished chain, the ones in flight included) shared among ``parallel`` chain-generations
    at once, each taking ``per_gen_s``, less ``done`` slot-seconds the work in flight has already
    done of them; never less than the longest chain alone (less ``head``, the most one unit in
    flight has done), as a chain's generations run in order."""
    left = [n for n in left if n > 0]
    if not left:
        return 0.0
    work = max(0.0, sum(left) * per_gen_s - done)
    return max(work / max(1, parallel), max(left) * per_gen_s - min(head, per_gen_s), 0.0)


class RunClock:
    """The measured cost of a chain-generation, and from it the time left.

    Each unit of work (a chain's generation, or a block's slice of generations) is known by a key
    from its submission to its end. While ``n`` units are in flight on ``slots`` slots, each is
    credited ``min(1, slots / n)`` slot-seconds per second (a full slot when they all fit, a fair
    share when Ray queues some), so a unit's cost is what it used of the slots, however many ran
    beside it, and the units' costs add up to the slots' busy time. The cost of a chain-generation
    is the mean over the units finished in the later half of the time measured so far, so the
    slow first generations (workers importing torch, the metrics' reference statistics) fade out
    of the estimate as the run goes; the clock starts at the first submission, so Ray's start-up
    does not count.

    ``clock`` is the time source (seconds, monotonic); a test passes a fake one. Every method's
    ``now`` defaults to ``clock()``.
    """

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = max(1, slots)
        self.clock = clock
        self.busy_s = 0.0  # slot-seconds used by the units, finished or not
        self.n_finished = 0  # chain-generations finished
        self._share = 0.0  # slot-seconds one unit in flight has been credited since the start
        self._since: Optional[float] = None
        self._start: Optional[float] = None
        self._open: dict[Any, tuple[float, int]] = {}  # key -> (_share at its submission, its chain-generations)
        self._ends: list[float] = []  # when units finished, in order,
        self._costs: list[tuple[float, int]] = []  # ... and their (slot-seconds, chain-generations)

    def _advance(self, now: Optional[float]) -> float:
        now = self.clock() if now is None else now
        if self._since is None:
            self._start = now
        elif now > self._since and self._open:
            dt, n = now - self._since, len(self._open)
            self._share += min(1.0, self.slots / n) * dt
            self.busy_s += min(n, self.slots) * dt
        self._since = now if self._since is None else max(self._since, now)
        return now

    def submitted(self, key: Any, n: int = 1, now: Optional[float] = None) -> None:
        """A unit of work of ``n`` chain-generations went in flight."""
        self._advance(now)
        self._open[key] = (self._share, max(1, n))

    def finished(self, key: Any, n: Optional[int] = None, now: Optional[float] = None) -> None:
        """The unit ``key`` ended, having finished ``n`` chain-generations (default: as many as
        submitted; 0: it failed, and its time says nothing of a generation's cost)."""
        now = self._advance(now)
        if key not in self._open:
            return
        share0, planned = self._open.pop(key)
        n = planned if n is None else n
        if n > 0:
            self.n_finished += n
            self._ends.append(now)
            self._costs.append((self._share - share0, n))

    def per_gen_s(self, now: Optional[float] = None) -> Optional[float]:
        """Slot-seconds per chain-generation, measured; None before any unit finished."""
        if not self._costs or self._start is None:
            return None
        now = self._advance(now)
        i = bisect.bisect_left(self._ends, self._start + (now - self._start) / 2)
        costs = self._costs[i:] or self._costs  # nothing finished in the later half: all of it
        return sum(c for c, _ in costs) / sum(n for _, n in costs)

    def in_flight_credit(self, per_gen: float, now: Optional[float] = None) -> tuple[float, float]:
        """(slot-seconds of the remaining work the units in flight have done, the most one of them
        has done). Each unit counts up to what its generations are expected to cost, so a unit
        running late stops the count rather than pushing the estimate below zero."""
        self._advance(now)
        done = [min(self._share - share0, per_gen * n) for share0, n in self._open.values()]
        return sum(done), max(done, default=0.0)

    def time_left(self, left: Sequence[int], parallel: Optional[int] = None,
                  now: Optional[float] = None) -> Optional[float]:
        """Seconds left for chains with ``left`` generations to go (those in flight included), by
        :func:`eta_seconds` from the measured cost and what the units in flight have done of it;
        ``parallel``: how many units can still run at once when fewer than ``slots`` (blocks of
        chains). None before anything finished."""
        now = self._advance(now)
        per_gen = self.per_gen_s(now)
        if per_gen is None:
            return None
        done, head = self.in_flight_credit(per_gen, now)
        slots = self.slots if parallel is None else max(1, min(self.slots, parallel))
        return eta_seconds(left, per_gen, slots, done, head)


class TimeLeft:
    """The run's one time-left figure: estimated once per update (a batch of finished work), and
    the same on every line printed for that update. ``update`` re-estimates from ``clock``'s
    measurements; within ``every`` seconds of the last full estimate the figure only falls (by the
    time that passed, or to a lower new estimate), so units of work that end within the same second
    (chains started together) do not make it climb from line to line while the first measurements
    come in; after that a new estimate may rise, as the work says. ``text`` is the figure of the
    last update."""

    def __init__(self, clock: RunClock, every: float = 1.0) -> None:
        self.clock = clock
        self.every = every
        self.seconds: Optional[float] = None
        self._at: Optional[float] = None  # when ``seconds`` was set
        self._full: Optional[float] = None  # when the last full estimate was made

    def update(self, left: Sequence[int], parallel: Optional[int] = None,
               now: Optional[float] = None) -> Optional[float]:
        now = self.clock.clock() if now is None else now
        new = self.clock.time_left(left, parallel, now)
        if (new is not None and self.seconds is not None and self._at is not None and self._full is not None
                and now - self._full < self.every):
            self.seconds = min(max(0.0, self.seconds - (now - self._at)), new)
        else:
            self.seconds, self._full = new, now
        self._at = now
        return self.seconds

    def text(self) -> str:
        """``, ~Ns left``; empty before the first measured generation."""
        return "" if self.seconds is None else f", ~{self.seconds:.0f}s left"

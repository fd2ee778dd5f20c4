"""MAD section 5's fresh-data phase diagram, computed from a run's records (metrics.jsonl lines).

How the chains are seeded (common random numbers): a chain's training and sampling seeds depend on
the seed, the generation and the stage only, so chains of one seed share that noise across cells;
Gaussian real draws are keyed by their absolute position in one stream per seed, so a fresh-data
chain with a larger n_init reads the same stream as one with a smaller n_init, shifted by the
difference (positions of one stream, not the same draws at the same generation). Every comparison
below is therefore paired per seed, and a seed, not a chain, is the unit of every standard error.

For every cell (n_real, n_synth, lambda) of fresh-data chains:
  limit     mean distance over each chain's last K generations, averaged over seeds;
  limit_se  standard error over seeds of the per-seed last-K means;
  converged the slope of the distance over the last K generations is not significantly non-zero
            (two-sided t-test at 95 %: over seeds' slopes, df = seeds - 1; one seed: the OLS error,
            df = K - 2); ``slope_detectable`` is the drift per generation that test detects with
            80 % power, so "converged" reads "no drift larger than this";
  mixing_gens  5 / (1 - rho), rho = lambda n_synth / (n_real + n_synth): the loop forgets its start by
            about rho per generation, so a chain shorter than this still carries its start-up
            transient (``short``);
  n_e       the n at which the real-only curve d_real(n) equals the limit;
  admissible the synthetic data did not hurt: the paired difference, per seed, of the cell's limit and
            the real-only limit at the same n_real (same seed, the baseline's lambda) is <= 0
            (``paired_diff`` +- ``paired_diff_se``); without real-only chains at n_real it falls back
            to n_e / n_real >= 1.
d_real(n) is the limit of the real-only chains (n_synth = 0, the same statistic), whose every
generation after the first trains on n fresh real samples. It is made non-increasing in n (pooled
adjacent violators) and interpolated linearly in log d against log n (exact for d ~ n^-1/2);
outside the measured range the end segment is extended and the cell is flagged ``extrapolated``.
``report.phase.baseline: auto`` (mad/plan.py) adds real-only chains on a grid from the smallest
n_real to the largest n_real + n_synth, so that n_e, which can reach n_real + n_synth, is read off
measured points. The baseline is the real-only chains at the cell's lambda (sampling bias included)
unless ``baseline_bias`` names one lambda for every cell; with no real-only chains at the cell's
lambda, lambda = 1 is used. The admissible threshold of (n_real, lambda) is the largest n_synth
whose cell is admissible.

The cell key leaves n_init out (MAD: the limit does not depend on it); ``n_init_rows`` gives the
limit per n_init, and each cell says whether they agree: the paired difference per seed against the
smallest n_init is within its 95 % t-interval of zero (fewer than two paired seeds: cannot tell).

Pure: reads nothing, imports neither Ray nor torch; ``write_phase`` is the one function that writes,
called by the driver at the end of a run and by ``python run.py report``.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

PHASE_CSV = "phase.csv"
N_INIT_CSV = "phase_n_init.csv"
COLUMNS = ("n_real", "n_synth", "bias", "limit", "limit_se", "n_e", "n_e_over_n_real", "admissible")
EXTRA_COLUMNS = ("threshold_n_synth", "converged", "slope", "slope_se", "extrapolated", "baseline_bias",
                 "n_seeds", "window", "n_init", "n_init_agree", "n_init_max_diff", "n_init_diff_se", "metric",
                 "paired_diff", "paired_diff_se", "slope_detectable", "generations", "mixing_gens", "short")
N_INIT_COLUMNS = ("n_real", "n_synth", "bias", "n_init", "limit", "limit_se", "n_seeds", "window")
RATIO_TOL = 1e-9  # n_e / n_real of an n_synth = 0 cell is 1 up to rounding


@dataclass
class Cell:
    n_real: int
    n_synth: int
    bias: float
    limit: float
    limit_se: float
    n_seeds: int
    window: int  # generations averaged per chain (the shortest chain's, if they differ)
    slope: float
    slope_se: float
    converged: bool
    n_init: list[int]
    n_init_limits: dict[int, tuple[float, float, int]] = field(default_factory=dict)  # n_init -> (limit, se, seeds)
    n_init_max_diff: float = float("nan")
    n_init_diff_se: float = float("nan")
    n_init_agree: Optional[bool] = None  # None: a single n_init
    n_e: float = float("nan")
    extrapolated: bool = False
    baseline_bias: Optional[float] = None
    threshold_n_synth: Optional[int] = None
    paired_diff: float = float("nan")  # mean over seeds of (limit - real-only limit at n_real), same seed
    paired_diff_se: float = float("nan")
    slope_detectable: float = float("nan")  # drift per generation the slope test detects with 80 % power
    generations: int = 0  # the shortest chain's generations

    @property
    def ratio(self) -> float:
        return self.n_e / self.n_real if self.n_real else float("nan")

    @property
    def mixing_gens(self) -> float:
        return mixing_generations(self.n_real, self.n_synth, self.bias)

    @property
    def short(self) -> bool:
        """Fewer generations than the loop needs to forget its start (see ``mixing_generations``)."""
        return self.generations < self.mixing_gens - 1e-9

    @property
    def admissible(self) -> bool:
        if np.isfinite(self.paired_diff):
            return bool(self.paired_diff <= 1e-12 * max(abs(self.limit), 1e-300))
        return bool(np.isfinite(self.ratio) and self.ratio >= 1.0 - RATIO_TOL)


@dataclass
class Baseline:
    bias: float
    n: list[int]
    d: list[float]  # limit of the real-only chains at each n
    se: list[float]
    d_monotone: list[float]  # after pooling adjacent violators (what n_e interpolates)


@dataclass
class PhaseTable:
    metric: str
    last_k: int
    cells: list[Cell]
    baselines: dict[float, Baseline]

    def thresholds(self) -> dict[tuple[int, float], Optional[int]]:
        """(n_real, lambda) -> the largest admissible n_synth (None: no cell admissible)."""
        out: dict[tuple[int, float], Optional[int]] = {}
        for c in self.cells:
            key = (c.n_real, c.bias)
            out.setdefault(key, None)
            if c.admissible and (out[key] is None or c.n_synth > out[key]):
                out[key] = c.n_synth
        return out


def mixing_generations(n_real: int, n_synth: int, bias: float) -> float:
    """About 5 / (1 - rho) generations, rho = lambda n_synth / (n_real + n_synth): the fresh-data
    loop's memory of its start shrinks by about rho per generation (MAD section 5), so after this many
    it is below e^-5 of the start-up transient. Infinite when rho = 1 (no fresh data)."""
    total = n_real + n_synth
    rho = bias * n_synth / total if total else 1.0
    return 5.0 / (1.0 - rho) if rho < 1.0 else float("inf")


def baseline_grid(n_real: Iterable[int], n_total: Iterable[int], per_doubling: int = 2) -> list[int]:
    """The n of the real-only chains ``report.phase.baseline: auto`` measures: the swept n_real values
    and a geometric grid (``per_doubling`` points per doubling, both ends included) from the smallest
    n_real to the largest n_real + n_synth, the largest n_e a cell can have."""
    n_real, n_total = sorted(set(int(n) for n in n_real)), list(n_total)
    lo, hi = n_real[0], max(max(n_total), n_real[-1])
    points = set(n_real)
    if hi > lo:
        steps = max(1, math.ceil(math.log2(hi / lo) * per_doubling))
        points.update(int(round(lo * (hi / lo) ** (i / steps))) for i in range(steps + 1))
    return sorted(p for p in points if lo <= p <= hi)


def pick_metric(records: Iterable[dict], metric: str = "auto") -> Optional[str]:
    """``metric`` itself, or for ``auto``: w2 (closed form, Gaussians) when recorded, else fid."""
    records = list(records)
    candidates = ("w2", "fid") if metric == "auto" else (metric,)
    for m in candidates:
        if any(_finite(r.get(m)) is not None for r in records):
            return m
    return None


def _finite(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _slope(y: np.ndarray) -> float:
    if len(y) < 2:
        return float("nan")
    x = np.arange(len(y), dtype=float)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def _ols_slope_se(y: np.ndarray) -> float:
    if len(y) < 3:
        return float("nan")
    x = np.arange(len(y), dtype=float)
    x -= x.mean()
    b = _slope(y)
    resid = y - y.mean() - b * x
    return float(math.sqrt((resid ** 2).sum() / (len(y) - 2) / (x * x).sum()))


# Two-sided 95 % critical values of Student's t for df = 1..30 (importing scipy.stats takes seconds).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


# One-sided 80 % quantiles of Student's t for df = 1..30 (the power term of a detectable effect).
_T80 = (1.376, 1.061, 0.978, 0.941, 0.920, 0.906, 0.896, 0.889, 0.883, 0.879, 0.876, 0.873, 0.870, 0.868, 0.866,
        0.865, 0.863, 0.862, 0.861, 0.860, 0.859, 0.858, 0.858, 0.857, 0.856, 0.856, 0.855, 0.855, 0.854, 0.854)


def _t_power(df: int) -> float:
    if df < 1:
        return float("inf")
    return _T80[df - 1] if df <= len(_T80) else 0.8416 + 0.25 / df


def detectable(se: float, df: int) -> float:
    """The smallest true effect a two-sided 95 % t-test with standard error ``se`` and ``df`` degrees
    of freedom detects with 80 % power: (t_0.975 + t_0.80) se."""
    return (_t_crit(df) + _t_power(df)) * se if np.isfinite(se) else float("nan")


def _t_crit(df: int) -> float:
    """Two-sided 95 % critical value of Student's t; few seeds need wide margins."""
    if df < 1:
        return float("inf")
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df  # within 0.003 of the exact value beyond 30


def _not_significant(value: float, se: float, df: int, scale: float) -> bool:
    if not (np.isfinite(value) and np.isfinite(se)):
        return False
    return abs(value) <= _t_crit(df) * se + 1e-12 * abs(scale)


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return float(a.mean()), se


@dataclass
class _Chain:
    name: str
    seed: Any
    n_init: int
    n_real: int
    n_synth: int
    bias: float
    series: np.ndarray  # the metric at generations 2.. (generation 1 trains on n_init real samples)


def _chains(records: Iterable[dict], metric: str) -> list[_Chain]:
    by_chain: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("loop") != "fresh_data":
            continue
        try:
            by_chain.setdefault(str(r["chain"]), {})[int(r["gen"])] = r
        except (KeyError, TypeError, ValueError):
            continue
    out = []
    # Sorted by chain name, so float sums do not depend on the order the records came in.
    for name, gens in sorted(by_chain.items()):
        if 1 not in gens:
            continue
        later = [gens[g] for g in sorted(gens) if g >= 2]
        # A gap means a generation not yet finished: only the consecutive ones count.
        later = [r for i, r in enumerate(later) if r["gen"] == i + 2]
        vals = [_finite(r.get(metric)) for r in later]
        if not later or any(v is None for v in vals):
            continue
        first = later[0]
        out.append(_Chain(name=name, seed=first.get("seed"), n_init=int(gens[1]["n_real"]),
                          n_real=int(first["n_real"]), n_synth=int(first["n_synth"]),
                          bias=float(first.get("bias", 1.0)), series=np.asarray(vals, dtype=float)))
    return out


def _window_stats(chains: list[_Chain], last_k: int) -> dict[str, Any]:
    """Limit, its standard error over seeds, and the slope test, for one group of chains."""
    window = min(min(len(c.series) for c in chains), last_k)
    per_seed: dict[Any, list[np.ndarray]] = {}
    for c in chains:
        per_seed.setdefault(c.seed, []).append(c.series[-window:])
    seed_means = [float(np.mean([w.mean() for w in ws])) for ws in per_seed.values()]
    seed_slopes = [float(np.mean([_slope(w) for w in ws])) for ws in per_seed.values()]
    limit, limit_se = _mean_se(seed_means)
    if len(seed_slopes) > 1:
        slope, slope_se = _mean_se(seed_slopes)
        df = len(seed_slopes) - 1
    else:
        only = np.mean(np.stack(next(iter(per_seed.values()))), axis=0)
        slope, slope_se, df = _slope(only), _ols_slope_se(only), window - 2
    converged = _not_significant(slope, slope_se, df, limit)
    return {"limit": limit, "limit_se": limit_se, "n_seeds": len(per_seed), "window": window,
            "slope": slope, "slope_se": slope_se, "converged": bool(converged),
            "slope_detectable": detectable(slope_se, df),
            "generations": 1 + min(len(c.series) for c in chains)}


def _seed_limits(chains: list[_Chain], window: int) -> dict[Any, float]:
    """Each seed's limit: the mean over its chains of their last ``window`` generations."""
    per_seed: dict[Any, list[float]] = {}
    for c in chains:
        per_seed.setdefault(c.seed, []).append(float(c.series[-window:].mean()))
    return {seed: float(np.mean(v)) for seed, v in per_seed.items()}


def _paired(a: dict[Any, float], b: dict[Any, float]) -> tuple[float, float, int]:
    """Mean and standard error over the seeds both hold of b[seed] - a[seed]; and how many seeds."""
    common = [s for s in a if s in b]
    if not common:
        return float("nan"), float("nan"), 0
    mean, se = _mean_se([b[s] - a[s] for s in common])
    return mean, se, len(common)


def _pava_nonincreasing(d: list[float]) -> list[float]:
    """Least-squares non-increasing fit (pooled adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in d:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    out: list[float] = []
    for s, n in blocks:
        out.extend([s / n] * int(n))
    return out


def effective_n(limit: float, n: list[int], d: list[float]) -> tuple[float, bool]:
    """(n_e, extrapolated): the n where the non-increasing curve (n, d) equals ``limit``.

    Linear in (log n, log d) between measured points; beyond them the end segment is extended.
    Flat stretches (pooled violators) are collapsed to one point at their geometric-mean n."""
    if not np.isfinite(limit) or not n:
        return float("nan"), False
    pts: list[tuple[float, float]] = []  # (log n, d) with d strictly decreasing
    i = 0
    while i < len(n):
        j = i
        while j + 1 < len(n) and d[j + 1] == d[i]:
            j += 1
        pts.append((float(np.mean(np.log(n[i:j + 1]))), d[i]))
        i = j + 1
    logn = np.array([p[0] for p in pts])
    dd = np.array([p[1] for p in pts])
    for k, v in enumerate(dd):
        if v == limit:
            return float(math.exp(logn[k])), False
    if len(pts) == 1:
        return float("nan"), True
    use_log = bool(np.all(dd > 0) and limit > 0)
    y = np.log(dd) if use_log else dd
    target = math.log(limit) if use_log else limit
    extrapolated = not (dd[-1] <= limit <= dd[0])
    if limit > dd[0]:
        k = 0
    elif limit < dd[-1]:
        k = len(dd) - 2
    else:
        k = int(np.nonzero(dd >= limit)[0][-1])
        k = min(k, len(dd) - 2)
    x0, x1, y0, y1 = logn[k], logn[k + 1], y[k], y[k + 1]
    if y1 == y0:
        return float("nan"), extrapolated
    x = x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return float(math.exp(x)), extrapolated


def phase_table(records: Iterable[dict], metric: str = "auto", last_k: int = 10,
                baseline_bias: Optional[float] = None) -> Optional[PhaseTable]:
    """The phase diagram of the fresh-data chains in ``records``; None when the records hold no
    fresh-data chain with a finished generation 2, no real-only (n_synth = 0) chain, or no metric."""
    records = [r for r in records if r.get("loop") == "fresh_data"]
    chosen = pick_metric(records, metric)
    if chosen is None:
        return None
    chains = _chains(records, chosen)
    if not any(c.n_synth == 0 for c in chains):
        return None
    groups: dict[tuple[int, int, float], list[_Chain]] = {}
    for c in chains:
        groups.setdefault((c.n_real, c.n_synth, c.bias), []).append(c)

    baselines: dict[float, Baseline] = {}
    for bias in sorted({b for (_, s, b) in groups if s == 0}, reverse=True):
        ns = sorted(n for (n, s, b) in groups if s == 0 and b == bias)
        stats = [_window_stats(groups[(n, 0, bias)], last_k) for n in ns]
        d = [s["limit"] for s in stats]
        baselines[bias] = Baseline(bias=bias, n=ns, d=d, se=[s["limit_se"] for s in stats],
                                   d_monotone=_pava_nonincreasing(d))

    cells = []
    for (n_real, n_synth, bias) in sorted(groups, key=lambda k: (-k[2], k[0], k[1])):
        group = groups[(n_real, n_synth, bias)]
        st = _window_stats(group, last_k)
        cell = Cell(n_real=n_real, n_synth=n_synth, bias=bias, limit=st["limit"], limit_se=st["limit_se"],
                    n_seeds=st["n_seeds"], window=st["window"], slope=st["slope"], slope_se=st["slope_se"],
                    converged=st["converged"], n_init=sorted({c.n_init for c in group}),
                    slope_detectable=st["slope_detectable"], generations=st["generations"])
        _n_init_check(cell, group, last_k)
        if baseline_bias is not None:
            base = baselines.get(float(baseline_bias))
        else:
            base = baselines.get(bias) or baselines.get(1.0)
        if base is not None:
            cell.baseline_bias = base.bias
            cell.n_e, cell.extrapolated = effective_n(cell.limit, base.n, base.d_monotone)
            real_only = groups.get((n_real, 0, base.bias))
            if real_only:
                window = min(st["window"], min(len(c.series) for c in real_only))
                cell.paired_diff, cell.paired_diff_se, _ = _paired(_seed_limits(real_only, window),
                                                                   _seed_limits(group, window))
        cells.append(cell)
    table = PhaseTable(metric=chosen, last_k=last_k, cells=cells, baselines=baselines)
    thresholds = table.thresholds()
    for c in cells:
        c.threshold_n_synth = thresholds[(c.n_real, c.bias)]
    return table


def _n_init_check(cell: Cell, group: list[_Chain], last_k: int) -> None:
    """Limits per n_init, and whether each agrees with the smallest n_init's: the per-seed paired
    difference (chains of one seed share their noise, see the module docstring) is within its
    two-sided 95 % t-interval of zero. Fewer than two paired seeds: ``n_init_agree`` is None."""
    by_init: dict[int, list[_Chain]] = {}
    for c in group:
        by_init.setdefault(c.n_init, []).append(c)
    for n_init, chains in sorted(by_init.items()):
        st = _window_stats(chains, last_k)
        cell.n_init_limits[n_init] = (st["limit"], st["limit_se"], st["n_seeds"])
    if len(by_init) < 2:
        return
    first, *others = sorted(by_init)
    worst_diff, worst_se, verdicts = 0.0, float("nan"), []
    for other in others:
        window = min(last_k, *(len(c.series) for k in (first, other) for c in by_init[k]))
        diff, se, n = _paired(_seed_limits(by_init[first], window), _seed_limits(by_init[other], window))
        verdicts.append(_not_significant(diff, se, n - 1, cell.limit) if n >= 2 and np.isfinite(se) else None)
        if not np.isfinite(worst_se) or abs(diff) >= abs(worst_diff):
            worst_diff, worst_se = diff, se
    agree = False if False in verdicts else (None if None in verdicts else True)
    cell.n_init_max_diff, cell.n_init_diff_se, cell.n_init_agree = worst_diff, worst_se, agree


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def phase_csv(table: PhaseTable) -> str:
    """phase.csv: one row per cell, the required columns first, then the diagnostics."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS + EXTRA_COLUMNS)
    for c in table.cells:
        w.writerow([_fmt(v) for v in (
            c.n_real, c.n_synth, c.bias, c.limit, c.limit_se, c.n_e, c.ratio, c.admissible,
            c.threshold_n_synth, c.converged, c.slope, c.slope_se, c.extrapolated, c.baseline_bias,
            c.n_seeds, c.window, ";".join(map(str, c.n_init)), c.n_init_agree, c.n_init_max_diff,
            c.n_init_diff_se, table.metric, c.paired_diff, c.paired_diff_se, c.slope_detectable,
            c.generations, c.mixing_gens, c.short)])
    return buf.getvalue()


def n_init_csv(table: PhaseTable) -> str:
    """phase_n_init.csv: the limit of every cell per n_init (MAD: they agree)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(N_INIT_COLUMNS)
    for c in table.cells:
        for n_init, (limit, se, seeds) in c.n_init_limits.items():
            w.writerow([_fmt(v) for v in (c.n_real, c.n_synth, c.bias, n_init, limit, se, seeds, c.window)])
    return buf.getvalue()


def summary(table: PhaseTable) -> str:
    """One line on the table: cells, admissible, and what a reader must not over-read (extrapolated
    n_e, cells not converged or too short to forget their start, n_init disagreements)."""
    cells = table.cells
    parts = [f"{len(cells)} cell(s) on {table.metric}", f"{sum(c.admissible for c in cells)} admissible",
             f"{sum(c.extrapolated for c in cells)} n_e extrapolated beyond the measured real-only curve",
             f"{sum(not c.converged for c in cells)} not converged"]
    short = [c for c in cells if c.short]
    if short:
        worst = max(short, key=lambda c: c.mixing_gens)
        need = f"{math.ceil(worst.mixing_gens)}" if math.isfinite(worst.mixing_gens) else "infinitely many"
        parts.append(f"{len(short)} shorter than 5 / (1 - rho) generations (warning: their limit keeps part of "
                     f"the start-up; worst n_real={worst.n_real} n_synth={worst.n_synth} lambda={worst.bias:g}: "
                     f"{worst.generations} of about {need})")
    disagree = sum(c.n_init_agree is False for c in cells)
    if any(c.n_init_agree is not None for c in cells):
        parts.append(f"{disagree} with n_init limits that differ (paired, 95 %)")
    return ", ".join(parts)


def write_phase(run_dir: str | Path, records: Iterable[dict], metric: str = "auto", last_k: int = 10,
                baseline_bias: Optional[float] = None) -> Optional[tuple[Path, str]]:
    """Write ``run_dir/phase.csv`` (and phase_n_init.csv) when the records make a phase diagram;
    returns the path of phase.csv and the table's ``summary`` line, or None when there is none."""
    from mad.artifacts import write_text

    table = phase_table(records, metric=metric, last_k=last_k, baseline_bias=baseline_bias)
    if table is None:
        return None
    run_dir = Path(run_dir)
    write_text(run_dir / N_INIT_CSV, n_init_csv(table))
    write_text(run_dir / PHASE_CSV, phase_csv(table))
    return run_dir / PHASE_CSV, summary(table)

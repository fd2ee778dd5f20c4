"""The HTML dashboard of a run directory: ``write_report(run_dir)`` -> ``run_dir/report.html``.

Three layers, top to bottom of this file:
  1. load    read config.yaml, chains.json, metrics.jsonl and the DONE markers into tidy records
             (only finished generations count; a torn last line of metrics.jsonl is skipped);
  2. figures turn the records into plain plotly figure dicts (and matplotlib PNGs with png=True);
  3. html    one self-contained page: plotly.js inlined once, sample grids as base64 PNG,
             written atomically so a browser reload never sees half a file.

The driver rewrites the page after every finished generation, so it must stay fast: figures are
built as plain dicts (no plotly.graph_objects validation), and neither torch nor ray is imported.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from mad.artifacts import CHAINS, CONFIG, METRICS, PREVIEW, RunDir, write_text
from mad.plots import Line, encode_png, first_two_dims, is_image_batch, tile_images

# Keys of a metrics.jsonl line that describe the line rather than measure the model.
# Dotted keys (the sweep assignment) are never metrics either.
NON_METRIC_KEYS = frozenset({"chain", "loop", "seed", "bias", "gen", "n_real", "n_synth", "synth_size", "wall_s",
                             "time", "family", "data", "index", "name", "real_seen_frac"})
METRIC_ORDER = ("fid", "precision", "recall", "density", "coverage", "w2", "trace_ratio", "logdet_ratio",
                "logdet_ratio_per_dim", "mean_shift", "class_entropy", "class_kl", "mean_confidence", "label_accuracy")
METRIC_HINTS = {  # shown in the panel titles so a reader knows which way is good
    "fid": "lower is better", "w2": "lower is better", "class_kl": "lower is better",
    "mean_shift": "0 is ideal", "trace_ratio": "1 is ideal", "logdet_ratio": "0 is ideal",
    "logdet_ratio_per_dim": "0 is ideal", "precision": "quality, higher is better",
    "recall": "diversity, higher is better", "density": "higher is better", "coverage": "higher is better",
    "class_entropy": "higher = classes more even", "mean_confidence": "higher is better",
    "label_accuracy": "higher is better", "wall_s": "seconds",
}
HEATMAP_PREFERENCE = ("fid", "w2")
# Positive ratios that decay geometrically: drawn on a log y axis (the page's buttons still switch it).
LOG_Y_METRICS = frozenset({"trace_ratio"})
BANDS = ("mean_std", "median_iqr")  # report.band: what a group of seeds draws
MAX_PREVIEW_GENS = 12  # sample columns per chain; evenly spaced, first and last always shown
GRID_IMAGES = 16
SEED_KEY = "seed"
LOOP_ORDER = ("fully_synthetic", "synthetic_augmentation", "fresh_data")
# One hue family per loop kind; shades tell apart other swept keys within a loop kind.
LOOP_PALETTES = {
    "fully_synthetic": ("#d62728", "#ff7f0e", "#8c1c13", "#f4a582", "#e7298a"),
    "synthetic_augmentation": ("#1f77b4", "#17becf", "#08306b", "#6baed6", "#3f51b5"),
    "fresh_data": ("#2ca02c", "#8fbc3f", "#00441b", "#66c2a4", "#006d5b"),
}
OTHER_PALETTES = (("#9467bd", "#c5b0d5", "#54278f"), ("#8c564b", "#c49c94", "#543005"),
                  ("#7f7f7f", "#bcbd22", "#393939"))
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # by lambda, 1.0 first


class ReportError(ValueError):
    """The directory is not a run directory; ``str(err)`` is one line."""


# ============================================================================ 1. load
@dataclass
class ChainInfo:
    name: str
    index: int
    assignment: dict[str, Any]
    loop: str
    bias: float
    seed: Any
    family: str
    data: str
    generations: Optional[int]  # planned
    done: list[int] = field(default_factory=list)  # finished generations, ascending


@dataclass
class RunData:
    run_dir: Path
    config_text: str
    config: dict[str, Any]
    chains: list[ChainInfo]
    rows: dict[tuple[str, int], dict[str, Any]]  # (chain, gen) -> metrics line; finished gens only
    metrics: list[str]
    sweep: dict[str, list[Any]]  # swept keys with their values, in config order

    def value(self, chain: str, gen: int, key: str) -> Optional[float]:
        return _finite(self.rows.get((chain, gen), {}).get(key))

    def setting(self, chain: ChainInfo, dotted: str, default: Any = None) -> Any:
        """A chain's config value: its sweep assignment wins over the base config."""
        if dotted in chain.assignment:
            return chain.assignment[dotted]
        return _dotted_get(self.config, dotted, default)

    @property
    def n_done(self) -> int:
        return sum(len(c.done) for c in self.chains)


def _finite(v: Any) -> Optional[float]:
    """A float for plotting, or None (JSON null: a gap) for missing, non-numeric or non-finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _dotted_get(d: dict, dotted: str, default: Any = None) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _label(v: Any) -> str:
    """A value as it reads in a legend or an axis: strings bare, lists as JSON, floats short."""
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _read_metric_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the driver may be appending this very line
        if isinstance(rec, dict) and "chain" in rec and "gen" in rec:
            out.append(rec)
    return out


def _read_chains(run_dir: Path, config: dict, lines: list[dict]) -> list[ChainInfo]:
    """chains.json when present; otherwise recovered from metrics lines and chain directories."""
    base_loop = str(_dotted_get(config, "loop.kind", "?"))
    base_bias = _dotted_get(config, "sample.bias", 1.0)
    base = {"family": str(_dotted_get(config, "model.family", "?")), "data": str(_dotted_get(config, "data.name", "?")),
            "generations": _dotted_get(config, "loop.generations")}
    records: list[dict] = []
    path = run_dir / CHAINS
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            records = [r for r in loaded if isinstance(r, dict) and "name" in r] if isinstance(loaded, list) else []
        except json.JSONDecodeError:
            records = []
    if not records:
        first_line: dict[str, dict] = {}
        for rec in lines:
            first_line.setdefault(str(rec["chain"]), rec)
        names = list(first_line)
        for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):  # chains with no line yet
            if entry.is_dir() and entry.name not in first_line and (Path(entry.path) / "gen_001").is_dir():
                names.append(entry.name)
        for name in names:
            rec = first_line.get(name, {})
            records.append({"name": name, "loop": rec.get("loop"), "bias": rec.get("bias"), "seed": rec.get("seed"),
                            "assignment": {k: v for k, v in rec.items() if "." in k}})
    chains = []
    for i, r in enumerate(records):
        assignment = dict(r.get("assignment") or {})
        gens = r.get("generations", assignment.get("loop.generations", base["generations"]))
        chains.append(ChainInfo(
            name=str(r["name"]), index=int(r.get("index", i)), assignment=assignment,
            loop=str(r.get("loop") or assignment.get("loop.kind", base_loop)),
            bias=float(r.get("bias") if r.get("bias") is not None else assignment.get("sample.bias", base_bias)),
            seed=r.get("seed", assignment.get(SEED_KEY, _dotted_get(config, "seed"))),
            family=str(r.get("family") or assignment.get("model.family", base["family"])),
            data=str(r.get("data") or assignment.get("data.name", base["data"])),
            generations=int(gens) if gens is not None else None,
        ))
    return chains


def _order_metrics(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    known = [k for k in METRIC_ORDER if k in keys]
    return known + sorted(keys - set(known))


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory into tidy records; only finished (DONE) generations count."""
    import yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise ReportError(f"{run_dir} is not a run directory (no config.yaml)")
    text = cfg_path.read_text()
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{cfg_path}: malformed YAML ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{cfg_path}: the top level is not a mapping")
    lines = _read_metric_lines(run_dir / METRICS)
    chains = _read_chains(run_dir, config, lines)
    layout = RunDir(run_dir)
    for c in chains:
        # the driver's notion of finished: DONE, consecutive from generation 1 (after a gap it redoes)
        c.done = layout.done_generations(c.name)
    done = {c.name: set(c.done) for c in chains}
    rows: dict[tuple[str, int], dict] = {}
    for rec in lines:  # a resumed driver may append a generation twice: the later line wins
        try:
            key = (str(rec["chain"]), int(rec["gen"]))
        except (TypeError, ValueError):
            continue
        if key[1] in done.get(key[0], ()):
            rows[key] = rec
    metric_keys = {k for rec in rows.values() for k, v in rec.items()
                   if k not in NON_METRIC_KEYS and "." not in k and _finite(v) is not None}
    sweep = config.get("sweep") if isinstance(config.get("sweep"), dict) else {}
    if not sweep:  # no sweep in the config: recover the swept keys from the chains
        seen: dict[str, list] = {}
        for c in chains:
            for k, v in c.assignment.items():
                if v not in seen.setdefault(k, []):
                    seen[k].append(v)
        sweep = seen
    return RunData(run_dir=run_dir, config_text=text, config=config, chains=chains, rows=rows,
                   metrics=_order_metrics(metric_keys), sweep={k: list(v) for k, v in sweep.items()})


class LiveRun:
    """``load_run`` for a run that is still growing, at a cost that does not grow with it: config.yaml,
    chains.json and the DONE markers are read once, then each ``load()`` parses only the lines appended
    to metrics.jsonl since the last one. The driver appends a line only after its generation is DONE,
    so an appended line is a finished generation. A metrics.jsonl that shrank (rewritten on resume)
    is read again from scratch.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._run: Optional[RunData] = None
        self._offset = 0
        self._metric_keys: set[str] = set()

    def load(self) -> RunData:
        path = self.run_dir / METRICS
        size = path.stat().st_size if path.is_file() else 0
        if self._run is None or size < self._offset:
            self._run = load_run(self.run_dir)
            self._metric_keys = set(self._run.metrics)
            # everything up to the last whole line has been read by load_run
            self._offset = self._whole_lines_end(path, 0, size)
            return self._run
        run = self._run
        with open(path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read(size - self._offset)
        end = chunk.rfind(b"\n") + 1  # a torn last line waits for the next load
        self._offset += end
        by_name = {c.name: c for c in run.chains}
        for line in chunk[:end].decode().splitlines():
            try:
                rec = json.loads(line)
                key = (str(rec["chain"]), int(rec["gen"]))
            except (ValueError, KeyError, TypeError):
                continue
            chain = by_name.get(key[0])
            if chain is None:
                continue
            run.rows[key] = rec
            if key[1] not in chain.done:
                chain.done.append(key[1])
                chain.done.sort()
            self._metric_keys.update(k for k, v in rec.items()
                                     if k not in NON_METRIC_KEYS and "." not in k and _finite(v) is not None)
        run.metrics = _order_metrics(self._metric_keys)
        return run

    @staticmethod
    def _whole_lines_end(path: Path, start: int, size: int) -> int:
        if not path.is_file():
            return 0
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
        return start + data.rfind(b"\n") + 1


# ============================================================================ 2. figures
@dataclass
class Group:
    """Chains that differ only in seed: drawn as one curve (mean ± std or median and IQR over seeds)."""

    label: str
    loop: str
    bias: float
    others: tuple[tuple[str, str], ...]  # other swept keys, as (key, value label)
    chains: list[ChainInfo]
    color: str = "#333333"
    dash: str = "solid"


def group_chains(run: RunData) -> list[Group]:
    """Group by everything swept except the seed; colour by loop kind, dash by lambda."""
    buckets: dict[tuple, Group] = {}
    for c in run.chains:
        others = tuple((k, _label(v)) for k, v in c.assignment.items()
                       if k not in (SEED_KEY, "loop.kind", "sample.bias"))
        key = (c.loop, c.bias, others)
        if key not in buckets:
            buckets[key] = Group(label="", loop=c.loop, bias=c.bias, others=others, chains=[])
        buckets[key].chains.append(c)
    groups = list(buckets.values())
    loops = list(dict.fromkeys(g.loop for g in groups))
    loop_rank = {lk: (LOOP_ORDER.index(lk) if lk in LOOP_ORDER else len(LOOP_ORDER) + loops.index(lk))
                 for lk in loops}
    other_rank = {o: i for i, o in enumerate(dict.fromkeys(g.others for g in groups))}
    groups.sort(key=lambda g: (loop_rank[g.loop], other_rank[g.others], -g.bias))
    biases = sorted({g.bias for g in groups}, reverse=True)
    # a short key name (n_synth) unless two swept keys share it (train.steps, sample.steps)
    other_keys = list(dict.fromkeys(k for g in groups for k, _ in g.others))
    short = {k: k.rsplit(".", 1)[-1] for k in other_keys}
    if len(set(short.values())) < len(short):
        short = {k: k for k in other_keys}
    shade: dict[str, dict[tuple, int]] = {}
    for g in groups:
        shades = shade.setdefault(g.loop, {})
        idx = shades.setdefault(g.others, len(shades))
        palette = LOOP_PALETTES.get(g.loop) or OTHER_PALETTES[(loop_rank[g.loop] - len(LOOP_ORDER)) % len(OTHER_PALETTES)]
        g.color = palette[idx % len(palette)]
        g.dash = DASHES[biases.index(g.bias) % len(DASHES)]
        g.label = " · ".join([g.loop, f"λ={g.bias:g}"] + [f"{short[k]}={v}" for k, v in g.others])
        g.chains.sort(key=lambda c: (0, c.seed, "") if isinstance(c.seed, (int, float)) else (1, 0, _label(c.seed)))
    return groups


def _gens_with(run: RunData, chain: ChainInfo, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for gen in chain.done:
        v = run.value(chain.name, gen, key)
        if v is not None:
            xs.append(gen)
            ys.append(v)
    return xs, ys


def _theory_sizes(run: RunData, group: Group) -> Optional[tuple[list[int], list[Optional[float]], bool]]:
    """(generations, training-set size of each, MLE?) of a fully synthetic Gaussian group, or None where
    no closed form applies. Generation 1 fits n_init real samples, each later one the previous
    generation's samples (n_synth + n_real as recorded, else the config's n_synth or n_init)."""
    first = group.chains[0]
    if group.loop != "fully_synthetic" or first.family != "gaussian":
        return None
    if str(run.setting(first, "loop.synth_source", "last")) != "last":
        return None  # the closed form assumes each generation learns from its predecessor only
    last = max((g for c in group.chains for g in c.done), default=0)
    if last < 1:
        return None
    mle = str(run.setting(first, "model.estimator", "unbiased")) == "mle"
    n_init = run.setting(first, "loop.n_init", None)
    n_synth = run.setting(first, "loop.n_synth", None) or n_init
    gens, sizes = [], []
    for gen in range(1, last + 1):
        row = next((run.rows[(c.name, gen)] for c in group.chains if (c.name, gen) in run.rows), {})
        if gen == 1:
            n = _finite(row.get("n_real")) or n_init
        else:
            n = ((_finite(row.get("n_synth")) or 0) + (_finite(row.get("n_real")) or 0)) or n_synth
        gens.append(gen)
        sizes.append(None if n is None else float(n))
    return gens, sizes, mle


def theory_trace_ratio(run: RunData, group: Group) -> Optional[Line]:
    """E[trace_ratio] for the fully synthetic Gaussian loop (MAD section 3.1): the MEAN over chains.

    Generation 1 is fitted on real data, so E = 1 (unbiased) or (n_init - 1)/n_init (MLE). Each later
    generation is fitted on samples of N(mu, lambda Sigma) from the previous one, multiplying the
    expectation by lambda (unbiased) or lambda (n - 1)/n (MLE, n samples). The typical chain falls
    below it (see :func:`theory_logdet_ratio`).
    """
    setup = _theory_sizes(run, group)
    if setup is None:
        return None
    gens, sizes, mle = setup
    ys = []
    expected = 1.0
    for gen, n in zip(gens, sizes):
        factor = 1.0 if gen == 1 else group.bias
        if mle:
            if not n or n < 2:
                return None
            factor *= (n - 1) / n
        expected *= factor
        ys.append(expected)
    formula = "(λ(n−1)/n)^(t−1)" if mle else "λ^(t−1)"
    return Line(x=gens, y=ys, label=f"theory E[trace_ratio] = {formula} (mean)", group="theory", color="black",
                dash=group.dash, role="theory", hover=f"theory (mean), λ={group.bias:g}")


def logdet_refit_term(n: float, d: int, mle: bool = False) -> Optional[float]:
    """E[log det S - log det Sigma] for S fitted to n samples of N(mu, Sigma) in d dimensions.

    (n-1) S_unbiased = n S_mle is Wishart(n-1, Sigma); by Bartlett's decomposition its determinant is
    det Sigma times a product of independent chi^2 with n-1, ..., n-d degrees of freedom, and
    E[log chi^2_k] = psi(k/2) + log 2. So the unbiased fit adds
    sum_{i<d} psi((n-1-i)/2) + d log 2 - d log(n-1), the MLE the same with n in the last term.
    None when n <= d: the fit is singular, its log det -inf."""
    if n is None or n <= d:
        return None
    from scipy.special import digamma  # here, not at import: the report module stays light

    k = (n - 1 - np.arange(d)) / 2.0
    return float(np.sum(digamma(k)) + d * math.log(2.0) - d * math.log(n if mle else n - 1))


def expected_logdet_ratio(d: int, sizes: Iterable[Optional[float]], bias: float,
                          mle: bool = False) -> Optional[list[float]]:
    """E[log det Sigma_t - log det Sigma_real], t = 1, 2, ..., for the fully synthetic Gaussian loop
    whose generation t is fitted to ``sizes[t-1]`` samples (generation 1: real data). Generation 1
    adds c(n_init) (:func:`logdet_refit_term`); each later one samples from N(mu, lambda Sigma) and
    refits, adding d log lambda + c(n). It falls linearly even at lambda = 1: the typical chain
    collapses while E[trace_ratio] stays 1. None when a fit would be singular (n <= d)."""
    out, total = [], 0.0
    for t, n in enumerate(sizes, start=1):
        c = logdet_refit_term(n, d, mle)
        if c is None:
            return None
        total += c + (d * math.log(bias) if t > 1 else 0.0)
        out.append(total)
    return out


def theory_logdet_ratio(run: RunData, group: Group, per_dim: bool = False) -> Optional[Line]:
    """E[logdet_ratio] (or per dimension) for a fully synthetic Gaussian group on Gaussian real data:
    the typical path, next to the mean that :func:`theory_trace_ratio` draws."""
    setup = _theory_sizes(run, group)
    first = group.chains[0]
    if setup is None or first.data != "gaussian" or group.bias <= 0:
        return None
    gens, sizes, mle = setup
    d = run.setting(first, "data.dim", None)
    if not isinstance(d, int) or d < 1:
        return None
    ys = expected_logdet_ratio(d, sizes, group.bias, mle)
    if ys is None:
        return None
    if per_dim:
        ys = [y / d for y in ys]
    metric = "logdet_ratio_per_dim" if per_dim else "logdet_ratio"
    return Line(x=gens, y=ys, label=f"theory E[{metric}] (typical path)", group="theory", color="black",
                dash=group.dash, role="theory", hover=f"theory E[log det], λ={group.bias:g}")


def _summary(vals: np.ndarray, band: str, log_y: bool) -> tuple[float, Optional[float], Optional[float]]:
    """(centre, lower edge, upper edge) of one generation's values over seeds.

    mean_std: mean -+ std (ddof 1); median_iqr: median and the 25th/75th percentiles (numpy's
    linear interpolation). No band from a single value. On a log axis mean - std is often <= 0,
    which a log axis cannot draw: there the lower edge is clipped to the lowest seed's value."""
    if band == "median_iqr":
        centre = float(np.median(vals))
        if len(vals) < 2:
            return centre, None, None
        return centre, float(np.percentile(vals, 25)), float(np.percentile(vals, 75))
    centre = float(vals.mean())
    if len(vals) < 2:
        return centre, None, None
    s = float(vals.std(ddof=1))
    lo = centre - s
    if log_y and lo <= 0:
        lowest = float(vals.min())
        lo = lowest if lowest > 0 else None
    return centre, lo, centre + s


def metric_lines(run: RunData, groups: list[Group], metric: str, band: str = "mean_std") -> list[Line]:
    """The curves of one metric panel: per group a single line, or faint seeds plus the group's
    summary over seeds (``band``: mean_std or median_iqr, see :func:`_summary`)."""
    if band not in BANDS:
        raise ReportError(f"report.band: unknown band {band!r}; choose one of {', '.join(BANDS)}")
    log_y = metric in LOG_Y_METRICS
    lines: list[Line] = []
    for g in groups:
        series = [(c, *_gens_with(run, c, metric)) for c in g.chains]
        series = [s for s in series if s[1]]
        if not series:
            continue
        if len(g.chains) == 1:
            c, xs, ys = series[0]
            lines.append(Line(x=xs, y=ys, label=g.label, group=g.label, color=g.color, dash=g.dash,
                              role="single", hover=c.name))
            continue
        for c, xs, ys in series:
            lines.append(Line(x=xs, y=ys, label=c.name, group=g.label, color=g.color, dash=g.dash,
                              role="chain", hover=c.name))
        gens = sorted({x for _, xs, _ in series for x in xs})
        centre, lo, hi, counts = [], [], [], []
        for gen in gens:
            vals = np.array([ys[xs.index(gen)] for _, xs, ys in series if gen in xs])
            c, low, high = _summary(vals, band, log_y)
            centre.append(c)
            lo.append(low)
            hi.append(high)
            counts.append(len(vals))
        what = "median, IQR" if band == "median_iqr" else "mean ± std"
        lines.append(Line(x=gens, y=centre, label=f"{g.label} ({what}, {len(g.chains)} seeds)", group=g.label,
                          color=g.color, dash=g.dash, role="mean", hover=g.label, lo=lo, hi=hi,
                          extra={"counts": counts, "band": band}))
    if metric == "trace_ratio":
        lines += [t for t in (theory_trace_ratio(run, g) for g in groups) if t is not None]
    elif metric in ("logdet_ratio", "logdet_ratio_per_dim"):
        per_dim = metric == "logdet_ratio_per_dim"
        lines += [t for t in (theory_logdet_ratio(run, g, per_dim) for g in groups) if t is not None]
    return lines


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _plotly_traces(line: Line, metric: str, axis: str, legend_shown: set[str]) -> list[dict]:
    """plotly traces for one Line on subplot ``axis`` ("" for the first, then "2", "3", ...)."""
    where = {"xaxis": f"x{axis}", "yaxis": f"y{axis}"}
    first = line.group not in legend_shown
    if line.role == "chain":
        return [{"type": "scatter", "mode": "lines", "x": line.x, "y": line.y, "name": line.hover,
                 "legendgroup": line.group, "showlegend": False, "opacity": 0.35,
                 "line": {"color": line.color, "dash": line.dash, "width": 1},
                 "hovertemplate": f"{html.escape(line.hover)}<br>gen %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>",
                 **where}]
    traces = []
    if line.role == "mean" and line.lo is not None:
        band = {"type": "scatter", "mode": "lines", "x": line.x, "legendgroup": line.group, "showlegend": False,
                "hoverinfo": "skip", "line": {"width": 0, "color": line.color}, **where}
        traces.append({**band, "y": line.hi})
        traces.append({**band, "y": line.lo, "fill": "tonexty", "fillcolor": _rgba(line.color, 0.18)})
    legend_shown.add(line.group)
    if line.role == "theory":
        style = {"line": {"color": "black", "dash": line.dash, "width": 1.5},
                 "marker": {"symbol": "x", "size": 6, "color": "black"}}
    else:
        style = {"line": {"color": line.color, "dash": line.dash, "width": 2.5 if line.role == "mean" else 2},
                 "marker": {"size": 5, "color": line.color}}
    extra = ""
    if "counts" in line.extra:
        extra = "<br>%{customdata} seeds"
    trace = {"type": "scatter", "mode": "lines+markers", "x": line.x, "y": line.y, "name": line.label,
             "legendgroup": line.group, "showlegend": first, **style,
             "hovertemplate": f"{html.escape(line.hover)}<br>gen %{{x}}<br>{metric} %{{y:.4g}}{extra}<extra></extra>",
             **where}
    if "counts" in line.extra:
        trace["customdata"] = line.extra["counts"]
    traces.append(trace)
    return traces


def _grid_domains(n: int, cols: int, panel_px: int, gap_px: int) -> tuple[list[tuple], int]:
    """Subplot domains (x0, x1, y0, y1) in paper units for n panels, and the plot area height in px."""
    rows = math.ceil(n / cols)
    height = rows * panel_px + (rows - 1) * gap_px
    hgap = 0.07 if cols > 1 else 0.0
    w = (1 - hgap * (cols - 1)) / cols
    h, vgap = panel_px / height, gap_px / height
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        y1 = 1 - r * (h + vgap)
        out.append((c * (w + hgap), c * (w + hgap) + w, max(0.0, y1 - h), y1))
    return out, height


def metrics_figure(panels: list[tuple[str, list[Line]]]) -> dict:
    """All metric panels in one figure, so one legend click hides a group in every panel."""
    cols = min(3, len(panels))
    domains, plot_h = _grid_domains(len(panels), cols, panel_px=260, gap_px=80)
    max_gen = max((x for _, lines in panels for ln in lines for x in ln.x), default=1)
    data: list[dict] = []
    legend_shown: set[str] = set()
    layout: dict[str, Any] = {
        "height": plot_h + 100, "margin": {"t": 40, "b": 60, "l": 60, "r": 10}, "hovermode": "closest",
        "legend": {"x": 1.01, "y": 1, "xanchor": "left", "font": {"size": 11}, "tracegroupgap": 2},
        "plot_bgcolor": "white", "paper_bgcolor": "white", "annotations": [],
    }
    for i, ((metric, lines), (x0, x1, y0, y1)) in enumerate(zip(panels, domains)):
        axis = "" if i == 0 else str(i + 1)
        for line in lines:
            data += _plotly_traces(line, metric, axis, legend_shown)
        grid = {"showgrid": True, "gridcolor": "#e6e6e6", "zeroline": False, "linecolor": "#888", "showline": True}
        layout[f"xaxis{axis}"] = {"domain": [x0, x1], "anchor": f"y{axis}", "title": {"text": "generation"},
                                  "tickformat": "d", **({"dtick": 1} if max_gen <= 15 else {}), **grid}
        layout[f"yaxis{axis}"] = {"domain": [y0, y1], "anchor": f"x{axis}", "title": {"text": metric},
                                  "exponentformat": "power", **grid,
                                  **({"type": "log"} if metric in LOG_Y_METRICS else {})}
        hint = METRIC_HINTS.get(metric)
        title = f"<b>{metric}</b>" + (f" <span style='color:#777'>({hint})</span>" if hint else "")
        layout["annotations"].append({"text": title, "x": (x0 + x1) / 2, "y": y1, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                                      "font": {"size": 14}})
    return {"data": data, "layout": layout, "yaxes": [f"yaxis{'' if i == 0 else i + 1}" for i in range(len(panels))]}


def select_gens(done: list[int], limit: int = MAX_PREVIEW_GENS) -> list[int]:
    """At most ``limit`` generations, evenly spread, always the first and the last."""
    if len(done) <= limit:
        return list(done)
    idx = np.unique(np.round(np.linspace(0, len(done) - 1, limit)).astype(int))
    return [done[i] for i in idx]


def load_preview(run_dir: Path, chain: str, gen: int) -> Optional[np.ndarray]:
    path = RunDir(run_dir).gen_dir(chain, gen) / PREVIEW
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["x"]) if "x" in f.files else None
    except (OSError, ValueError, KeyError):
        return None


def scatter_figure(previews: list[tuple[int, np.ndarray]], color: str) -> dict:
    """Generations side by side with shared axes, so a shrinking or drifting cloud shows."""
    n = len(previews)
    data, layout = [], {"height": 230, "margin": {"t": 28, "b": 30, "l": 40, "r": 10}, "showlegend": False,
                        "plot_bgcolor": "white", "annotations": [], "hovermode": "closest"}
    gap = 0.02
    w = (1 - gap * (n - 1)) / n
    for i, (gen, x) in enumerate(previews):
        axis = "" if i == 0 else str(i + 1)
        pts = first_two_dims(x)
        data.append({"type": "scatter", "mode": "markers", "x": [_finite(v) for v in pts[:, 0]],
                     "y": [_finite(v) for v in pts[:, 1]], "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                     "marker": {"size": 4, "color": color, "opacity": 0.7}, "name": f"gen {gen}",
                     "hovertemplate": f"gen {gen}<br>(%{{x:.3g}}, %{{y:.3g}})<extra></extra>"})
        x0 = i * (w + gap)
        common = {"showgrid": True, "gridcolor": "#eee", "zeroline": True, "zerolinecolor": "#ccc",
                  "showline": True, "linecolor": "#aaa", "tickfont": {"size": 9}}
        layout[f"xaxis{axis}"] = {"domain": [x0, x0 + w], "anchor": f"y{axis}", **common,
                                  **({"matches": "x"} if i else {})}
        layout[f"yaxis{axis}"] = {"domain": [0, 1], "anchor": f"x{axis}", **common,
                                  **({"matches": "y", "showticklabels": False} if i else {})}
        layout["annotations"].append({"text": f"gen {gen}", "x": x0 + w / 2, "y": 1, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False})
    return {"data": data, "layout": layout}


def _heatmap_axes(run: RunData) -> list[str]:
    """Swept keys other than the seed that take at least two values."""
    return [k for k, vals in run.sweep.items() if k != SEED_KEY and len(vals) > 1]


def final_value(run: RunData, chain: ChainInfo, metric: str) -> tuple[Optional[float], Optional[int]]:
    for gen in reversed(chain.done):
        v = run.value(chain.name, gen, metric)
        if v is not None:
            return v, gen
    return None, None



TABLE_METRICS = ("fid", "precision", "recall", "w2", "trace_ratio")  # the headline numbers, in this order


def text_table(run: RunData, metrics: Optional[Iterable[str]] = None, max_gens: int = MAX_PREVIEW_GENS) -> str:
    """The per-generation table printed at the end of a run and by ``python run.py report``: one
    block per headline metric, a row per chain, a column per finished generation (at most
    ``max_gens``, evenly spread, first and last always). Missing values show as ``-``."""
    shown = [m for m in (TABLE_METRICS if metrics is None else metrics) if m in run.metrics]
    done = sorted({g for c in run.chains for g in c.done})
    if not done:
        return "no finished generations yet"
    if not shown:
        return f"none of {', '.join(TABLE_METRICS if metrics is None else metrics)} recorded in this run"
    gens = select_gens(done, max_gens)
    name_w = max(len("chain"), *(len(c.name) for c in run.chains))
    col_w = max(8, *(len(f"gen {g}") + 2 for g in gens))
    features = _dotted_get(run.config, "metrics.features")
    blocks = []
    for m in shown:
        title = m if m != "fid" or not features else f"fid on {features} features"
        hint = METRIC_HINTS.get(m)
        lines = [f"{title} ({hint})" if hint else title,
                 f"  {'chain':<{name_w}}" + "".join(f"{'gen ' + str(g):>{col_w}}" for g in gens)]
        for c in run.chains:
            cells = (run.value(c.name, g, m) for g in gens)
            lines.append(f"  {c.name:<{name_w}}" + "".join(f"{'-' if v is None else f'{v:.4g}':>{col_w}}"
                                                           for v in cells))
        blocks.append("\n".join(lines))
    if len(gens) < len(done):
        blocks.append(f"({len(gens)} of {len(done)} generations shown; all of them in metrics.jsonl)")
    return "\n\n".join(blocks)


@dataclass
class Heatmap:
    title: str
    x_key: str
    x_labels: list[str]
    y_key: str
    y_labels: list[str]
    z: dict[str, list[list[Optional[float]]]]  # metric -> rows (y) x columns (x)
    text: dict[str, list[list[str]]]
    default: str


def heatmaps(run: RunData) -> list[Heatmap]:
    """Final metric values over the first two swept keys; one heatmap per value of any further key."""
    keys = _heatmap_axes(run)
    if len(keys) < 2 or not run.metrics:
        return []
    x_key, y_key, rest = keys[0], keys[1], keys[2:]
    x_labels = [_label(v) for v in run.sweep[x_key]]
    y_labels = [_label(v) for v in run.sweep[y_key]]
    default = next((m for m in HEATMAP_PREFERENCE if m in run.metrics), run.metrics[0])
    facets: dict[tuple, list[ChainInfo]] = {}
    for c in run.chains:
        facets.setdefault(tuple(_label(c.assignment.get(k)) for k in rest), []).append(c)
    out = []
    for facet, chains in facets.items():
        z, text = {}, {}
        for metric in run.metrics:
            zm = [[None] * len(x_labels) for _ in y_labels]
            tm = [[""] * len(x_labels) for _ in y_labels]
            cells: dict[tuple[int, int], list[tuple[float, int]]] = {}
            for c in chains:
                xl, yl = _label(c.assignment.get(x_key)), _label(c.assignment.get(y_key))
                if xl not in x_labels or yl not in y_labels:
                    continue
                v, gen = final_value(run, c, metric)
                if v is not None:
                    cells.setdefault((y_labels.index(yl), x_labels.index(xl)), []).append((v, gen))
            for (i, j), vals in cells.items():
                zm[i][j] = float(np.mean([v for v, _ in vals]))
                gens = sorted({g for _, g in vals})
                tm[i][j] = f"{zm[i][j]:.3g}<br>gen {'/'.join(map(str, gens))}, n={len(vals)}"
            z[metric], text[metric] = zm, tm
        title = ", ".join(f"{k}={v}" for k, v in zip(rest, facet))
        out.append(Heatmap(title=title, x_key=x_key, x_labels=x_labels, y_key=y_key, y_labels=y_labels,
                           z=z, text=text, default=default))
    return out


def heatmap_figure(hm: Heatmap) -> dict:
    """A heatmap with a dropdown over metrics (default: fid, else w2)."""
    def trace_update(metric: str) -> dict:
        return {"z": [hm.z[metric]], "text": [hm.text[metric]], "colorbar.title.text": [metric]}

    title = f"final value over the sweep{' · ' + hm.title if hm.title else ''}"
    trace = {"type": "heatmap", "x": hm.x_labels, "y": hm.y_labels, "z": hm.z[hm.default], "text": hm.text[hm.default],
             "texttemplate": "%{text}", "colorscale": "Viridis", "colorbar": {"title": {"text": hm.default}},
             "hovertemplate": f"{hm.x_key}=%{{x}}<br>{hm.y_key}=%{{y}}<br>%{{text}}<extra></extra>",
             "xgap": 2, "ygap": 2}
    buttons = [{"label": m, "method": "restyle", "args": [trace_update(m)]} for m in hm.z]
    layout = {"height": 140 + 70 * len(hm.y_labels), "margin": {"t": 60, "b": 60, "l": 140, "r": 20},
              "title": {"text": title, "x": 0.5, "font": {"size": 14}},
              "xaxis": {"title": {"text": hm.x_key}, "type": "category"},
              "yaxis": {"title": {"text": hm.y_key}, "type": "category", "autorange": "reversed"},  # sweep order, top down
              "updatemenus": [{"buttons": buttons, "active": list(hm.z).index(hm.default), "x": 0, "xanchor": "left",
                               "y": 1.02, "yanchor": "bottom", "showactive": True}]}
    return {"data": [trace], "layout": layout}


def run_phase_table(run: RunData):
    """The fresh-data phase diagram of a run (mad.phase), with the run's report.phase settings."""
    from mad.phase import phase_table

    p = _dotted_get(run.config, "report.phase", None) or {}
    try:
        last_k = int(p.get("last_k", 10))
    except (TypeError, ValueError):
        last_k = 10
    return phase_table(run.rows.values(), metric=str(p.get("metric", "auto")), last_k=last_k,
                       baseline_bias=p.get("baseline_bias"))


def phase_figure(table) -> dict:
    """n_synth against n_real per lambda, coloured by n_e / n_real (white at 1), with the admissible
    boundary (the largest admissible n_synth per n_real) drawn as a black line."""
    biases = sorted({c.bias for c in table.cells}, reverse=True)
    n_reals = sorted({c.n_real for c in table.cells})
    n_synths = sorted({c.n_synth for c in table.cells})
    xl, yl = [str(n) for n in n_reals], [str(n) for n in n_synths]
    domains, plot_h = _grid_domains(len(biases), min(3, len(biases)), panel_px=80 + 34 * len(yl), gap_px=70)
    ratios = [c.ratio for c in table.cells if math.isfinite(c.ratio) and c.ratio > 0]
    span = max([abs(math.log2(r)) for r in ratios] + [0.25])
    thresholds = table.thresholds()
    data: list[dict] = []
    layout: dict[str, Any] = {
        "height": plot_h + 110, "margin": {"t": 50, "b": 60, "l": 70, "r": 20}, "annotations": [],
        "plot_bgcolor": "white", "paper_bgcolor": "white",
        # log2 colour scale: halving and doubling n_e look equally strong; white = n_e = n_real
        "coloraxis": {"colorscale": "RdBu", "cmin": -span, "cmid": 0.0, "cmax": span,
                      "colorbar": {"title": {"text": "log2(n_e/n_r)"}}},
        "legend": {"orientation": "h", "y": -0.12},
    }
    for i, (bias, (x0, x1, y0, y1)) in enumerate(zip(biases, domains)):
        axis = "" if i == 0 else str(i + 1)
        z = [[None] * len(xl) for _ in yl]
        text = [[""] * len(xl) for _ in yl]
        for c in table.cells:
            if c.bias != bias:
                continue
            r, j = n_synths.index(c.n_synth), n_reals.index(c.n_real)
            if math.isfinite(c.ratio) and c.ratio > 0:
                z[r][j] = math.log2(c.ratio)
            marks = ("*" if c.extrapolated else "") + ("" if c.converged else "~")
            text[r][j] = (f"{c.ratio:.2f}{marks}" if math.isfinite(c.ratio) else "?") + \
                f"<br>{table.metric} {c.limit:.3g}"
        data.append({"type": "heatmap", "x": xl, "y": yl, "z": z, "text": text, "texttemplate": "%{text}",
                     "coloraxis": "coloraxis", "xaxis": f"x{axis}", "yaxis": f"y{axis}", "xgap": 2, "ygap": 2,
                     "hovertemplate": "n_real=%{x}<br>n_synth=%{y}<br>n_e/n_r=%{text}<extra>λ=" + f"{bias:g}</extra>"})
        bx = [str(n) for n in n_reals if thresholds.get((n, bias)) is not None]
        by = [str(thresholds[(n, bias)]) for n in n_reals if thresholds.get((n, bias)) is not None]
        data.append({"type": "scatter", "mode": "lines+markers", "x": bx, "y": by, "xaxis": f"x{axis}",
                     "yaxis": f"y{axis}", "line": {"color": "black", "width": 3}, "marker": {"size": 9},
                     "name": "admissible boundary (largest n_s with n_e/n_r >= 1)", "legendgroup": "boundary",
                     "showlegend": i == 0, "hovertemplate": "λ=" + f"{bias:g}" + ": n_s <= %{y} at n_r=%{x}<extra></extra>"})
        layout[f"xaxis{axis}"] = {"domain": [x0, x1], "anchor": f"y{axis}", "type": "category",
                                  "categoryorder": "array", "categoryarray": xl, "title": {"text": "n_real"}}
        layout[f"yaxis{axis}"] = {"domain": [y0, y1], "anchor": f"x{axis}", "type": "category",
                                  "categoryorder": "array", "categoryarray": yl, "title": {"text": "n_synth"}}
        layout["annotations"].append({"text": f"<b>λ = {bias:g}</b>", "x": (x0 + x1) / 2, "y": y1, "xref": "paper",
                                      "yref": "paper", "xanchor": "center", "yanchor": "bottom",
                                      "showarrow": False, "font": {"size": 14}})
    return {"data": data, "layout": layout}


def baseline_figure(table) -> dict:
    """The real-only curve d_real(n) per lambda (log-log), with the cell limits it is read against."""
    data = []
    for i, (bias, b) in enumerate(sorted(table.baselines.items(), reverse=True)):
        color = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f")[i % 6]
        data.append({"type": "scatter", "mode": "lines+markers", "x": b.n, "y": [_finite(v) for v in b.d],
                     "error_y": {"type": "data", "array": [_finite(v) or 0.0 for v in b.se], "visible": True},
                     "name": f"real only, λ={bias:g}", "line": {"color": color}})
    return {"data": data, "layout": {
        "height": 340, "margin": {"t": 30, "b": 50, "l": 70, "r": 20},
        "xaxis": {"type": "log", "title": {"text": "n (real samples per generation)"}},
        "yaxis": {"type": "log", "title": {"text": f"d_real(n): {table.metric} over the last {table.last_k} generations"}},
        "plot_bgcolor": "white", "paper_bgcolor": "white"}}


def _phase_section(run: RunData, figures: list[dict]) -> str:
    try:
        table = run_phase_table(run)
    except Exception as err:  # the analysis must not take the page down with it
        return f"<h2>Phase diagram</h2><p class='note'>not computed: {html.escape(str(err))}</p>"
    if table is None or not table.cells:
        return ""
    figures.append({"id": "phase", **phase_figure(table)})
    figures.append({"id": "phase-baseline", **baseline_figure(table)})
    return ("<h2>Phase diagram (fresh data, MAD section 5)</h2><p class='note'>Each cell: n_e / n_real, where "
            f"n_e is the number of real samples per generation whose real-only chains reach the cell's limiting "
            f"{html.escape(table.metric)} (mean of the last {table.last_k} generations over seeds). Blue: the "
            "synthetic data helped (n_e &gt; n_real); red: it hurt. Black line: the admissible threshold, the largest "
            "n_synth with n_e / n_real &ge; 1. * = n_e extrapolated beyond the real-only range; ~ = not converged "
            "(slope over the window significant). All numbers in phase.csv.</p>"
            "<div class='card'><div id='phase'></div></div>"
            "<div class='card'><div id='phase-baseline'></div></div>")


# ============================================================================ 3. html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 24px 40px;color:#222;background:#fafafa}
h1{font-size:22px;margin:18px 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:13px;margin:10px 0 4px;font-weight:600;font-family:ui-monospace,monospace}
.status{color:#555;font-size:14px} .note{color:#666;font-size:13px;margin:4px 0 8px}
.card{background:white;border:1px solid #e3e3e3;border-radius:6px;padding:8px;margin:8px 0}
.gens{display:flex;gap:10px;overflow-x:auto;padding-bottom:4px}
figure{margin:0;text-align:center} figcaption{font-size:11px;color:#555}
img.sample-grid{image-rendering:pixelated;border:1px solid #ddd;background:white}
table{border-collapse:collapse;font-size:12px;background:white} td,th{border:1px solid #e0e0e0;padding:3px 7px;text-align:left}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:white;border:1px solid #e3e3e3;padding:10px;font-size:12px;overflow:auto;max-height:600px}
.empty{font-size:18px;color:#a33;margin:30px 0} button{margin-right:4px}
.swatch{display:inline-block;width:22px;height:0;border-top-width:3px;vertical-align:middle;margin-right:4px}
"""

_ERRORS_JS = """
// Records script errors on <html data-mad-errors>, so a headless check of the dumped DOM sees them.
window.addEventListener('error', function(e){
  var el = document.documentElement;
  el.setAttribute('data-mad-errors', (el.getAttribute('data-mad-errors') || '') + (e.message || 'error') + '; ');
});
"""

_BOOT_JS = """
(function(){
  var figs = JSON.parse(document.getElementById('mad-figures').textContent);
  var root = document.documentElement, drawn = 0, failed = [];
  function fail(id, e){
    failed.push(id);
    root.setAttribute('data-mad-errors', (root.getAttribute('data-mad-errors') || '') + id + ': ' + e + '; ');
    console.error('mad report: figure ' + id + ' failed: ' + e);
  }
  figs.forEach(function(f){
    var cfg = Object.assign({responsive: true, displaylogo: false}, f.config || {});
    try {
      Plotly.newPlot(f.id, f.data, f.layout, cfg).then(function(){
        drawn += 1; root.setAttribute('data-mad-drawn', String(drawn));
      }, function(e){ fail(f.id, e); });
    } catch (e) { fail(f.id, e); }
  });
  root.setAttribute('data-mad-figures', String(figs.length));
  window.madSetYScale = function(id, kind){
    var f = figs.filter(function(g){ return g.id === id; })[0], upd = {};
    f.yaxes.forEach(function(a){ upd[a + '.type'] = kind; });
    Plotly.relayout(id, upd);
  };
})();
"""

_RELOAD_JS = """
(function(){
  var box = document.getElementById('mad-autoreload');
  if (!box) return;
  try { box.checked = sessionStorage.getItem('mad-autoreload') === '1'; } catch (e) {}
  box.addEventListener('change', function(){
    try { sessionStorage.setItem('mad-autoreload', box.checked ? '1' : '0'); } catch (e) {}
    if (box.checked) location.reload();
  });
  if (box.checked) setTimeout(function(){ location.reload(); }, 30000);
})();
"""


def _json_for_script(obj: Any) -> str:
    # allow_nan=False: NaN would be invalid JSON; values were already mapped to null by _finite
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def _sample_section(run: RunData, groups: list[Group], figures: list[dict]) -> str:
    parts = []
    for g in groups:
        for c in g.chains:
            gens = select_gens(c.done)
            previews = [(gen, x) for gen in gens if (x := load_preview(run.run_dir, c.name, gen)) is not None]
            if not previews:
                continue
            head = (f"<h3><span class='swatch' style='border-top:3px {_css_dash(g.dash)} {g.color}'></span>"
                    f"{html.escape(c.name)}</h3>")
            if all(is_image_batch(x) for _, x in previews):
                cells = []
                for gen, x in previews:
                    grid = tile_images(x, GRID_IMAGES)
                    width = max(128, min(192, grid.shape[1] * 3))
                    src = "data:image/png;base64," + base64.b64encode(encode_png(grid)).decode()
                    cells.append(f"<figure><img class='sample-grid' width='{width}' src='{src}' "
                                 f"alt='{html.escape(c.name)} gen {gen}'><figcaption>gen {gen}</figcaption></figure>")
                parts.append(f"<div class='card'>{head}<div class='gens'>{''.join(cells)}</div></div>")
            else:
                fid = f"samples-{c.index}-{len(figures)}"
                figures.append({"id": fid, "config": {"displayModeBar": False},
                                **scatter_figure([(gen, x) for gen, x in previews if not is_image_batch(x)], g.color)})
                parts.append(f"<div class='card'>{head}<div class='sample-plot' id='{fid}'></div></div>")
    if not parts:
        return ""
    return ("<h2>Samples per generation</h2><p class='note'>The first samples of each finished generation "
            f"(at most {MAX_PREVIEW_GENS} generations per chain, evenly spaced; vectors: first two dimensions, "
            "shared axes per chain).</p>" + "".join(parts))


def _css_dash(dash: str) -> str:
    return {"solid": "solid", "dot": "dotted"}.get(dash, "dashed")


def _progress_table(run: RunData, groups: list[Group]) -> str:
    extra_keys = [k for k in run.sweep if k not in (SEED_KEY, "loop.kind", "sample.bias")]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["chain", "loop", "λ", "seed", *extra_keys, "done / planned", "wall s per generation", "total s"])
    body = []
    for g in groups:
        for c in g.chains:
            walls = [run.value(c.name, gen, "wall_s") for gen in c.done]
            known = [w for w in walls if w is not None]
            per_gen = ", ".join("?" if w is None else f"{w:.3g}" for w in walls[-20:])
            if len(walls) > 20:
                per_gen = "…, " + per_gen
            planned = c.generations if c.generations is not None else "?"
            cells = [html.escape(c.name), html.escape(c.loop), f"{c.bias:g}", html.escape(_label(c.seed)),
                     *(html.escape(_label(c.assignment.get(k, ""))) for k in extra_keys),
                     f"{len(c.done)} / {planned}", per_gen, f"{sum(known):.3g}" if known else ""]
            body.append("<tr>" + "".join(f"<td{' class=num' if i >= 3 else ''}>{v}</td>"
                                         for i, v in enumerate(cells)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def run_band(run: RunData, band: Optional[str] = None) -> str:
    """``band`` when given (the report command's --band), else the run's ``report.band``, else mean_std."""
    value = band if band is not None else _dotted_get(run.config, "report.band", None) or "mean_std"
    if value not in BANDS:
        raise ReportError(f"report.band: unknown band {value!r}; choose one of {', '.join(BANDS)}")
    return str(value)


def render_html(run: RunData, png_dir: Optional[Path] = None, band: Optional[str] = None) -> str:
    """The whole page as a string; with ``png_dir``, also the matplotlib PNGs for papers.
    ``band`` overrides the run's ``report.band`` (mean_std or median_iqr)."""
    band = run_band(run, band)
    groups = group_chains(run)
    planned = sum(c.generations or 0 for c in run.chains)
    finished = bool(planned) and run.n_done >= planned
    name = run.run_dir.resolve().name
    family = ", ".join(sorted({c.family for c in run.chains})) or str(_dotted_get(run.config, "model.family", "?"))
    data = ", ".join(sorted({c.data for c in run.chains})) or str(_dotted_get(run.config, "data.name", "?"))
    sweep_txt = "; ".join(f"{k} ∈ {{{', '.join(_label(v) for v in vals)}}}" for k, vals in run.sweep.items())
    status = (f"{run.n_done} / {planned or '?'} generations finished across {len(run.chains)} chain(s) · "
              f"family {html.escape(family)} · data {html.escape(data)} · written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    reload_box = ("" if finished else " · <label><input type='checkbox' id='mad-autoreload'> reload every 30 s</label>")
    parts = [f"<h1>mad run: {html.escape(name)}</h1><div class='status'>{status}{reload_box}</div>"]
    if sweep_txt:
        parts.append(f"<div class='status'>sweep: {html.escape(sweep_txt)}</div>")
    figures: list[dict] = []
    has_rows = bool(run.rows)
    if not has_rows:
        parts.append("<p class='empty'>nothing finished yet: no generation is marked DONE. "
                     "Reload this page once the first generation finishes.</p>")
    else:
        panel_keys = list(run.metrics) + (["wall_s"] if any(_finite(r.get("wall_s")) is not None
                                                            for r in run.rows.values()) else [])
        panels = [(m, metric_lines(run, groups, m, band)) for m in panel_keys]
        fig = metrics_figure(panels)
        figures.append({"id": "metrics", **fig})
        theory = any(ln.role == "theory" for _, lines in panels for ln in lines)
        seeds = any(len(g.chains) > 1 for g in groups)
        notes = ["One colour per loop kind (shades: other swept keys), one dash per λ.",
                 "Click a legend entry to hide a group everywhere; double-click to isolate it."]
        if seeds and band == "median_iqr":
            notes.append("Groups with several seeds: thick line = median, band = interquartile range (25th to 75th "
                         "percentile) over seeds, faint lines = seeds.")
        elif seeds:
            notes.append("Groups with several seeds: thick line = mean, band = ± one std over seeds (on log axes "
                         "clipped below at the lowest seed), faint lines = seeds.")
        if theory:
            notes.append("Black curves with ×: the theory of the fully synthetic Gaussian loop, in the dash of their "
                         "λ. On trace_ratio the MEAN E[tr Σ_t / tr Σ_0] = λ^(t−1), which stays flat at λ = 1 while "
                         "most chains collapse; on logdet_ratio the typical path E[log det Σ_t − log det Σ_real], "
                         "which falls linearly even at λ = 1 (null in metrics.jsonl, a gap here: a singular fit).")
        parts.append("<h2>Metrics vs generation</h2>"
                     f"<p class='note'>{' '.join(notes)}</p>"
                     "<div>y axes: <button onclick=\"madSetYScale('metrics','linear')\">linear</button>"
                     "<button onclick=\"madSetYScale('metrics','log')\">log</button></div>"
                     "<div class='card'><div id='metrics' class='metric-plot'></div></div>")
        hms = heatmaps(run)
        if hms:
            parts.append("<h2>Sweep heatmap</h2><p class='note'>Each cell: the value at each chain's last finished "
                         "generation, averaged over seeds. Pick the metric in the menu.</p>")
            for i, hm in enumerate(hms):
                figures.append({"id": f"heatmap-{i}", **heatmap_figure(hm)})
                parts.append(f"<div class='card'><div id='heatmap-{i}' class='heatmap-plot'></div></div>")
        parts.append(_phase_section(run, figures))
        parts.append(_sample_section(run, groups, figures))
        if png_dir is not None:
            _write_pngs(run, groups, panels, hms, png_dir)
    parts.append("<h2>Progress</h2>" + _progress_table(run, groups))
    parts.append("<h2>Resolved config</h2><details open><summary>config.yaml</summary>"
                 f"<pre>{html.escape(run.config_text)}</pre></details>")
    scripts = ""
    if figures:
        from plotly.offline import get_plotlyjs  # plotly.js is inlined: the page must open offline

        scripts = (f"<script>{get_plotlyjs()}</script>"
                   f"<script type='application/json' id='mad-figures'>{_json_for_script(figures)}</script>"
                   f"<script>{_BOOT_JS}</script>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>mad · {html.escape(name)}</title><script>{_ERRORS_JS}</script><style>{_CSS}</style></head><body>"
            + "".join(parts) + scripts + f"<script>{_RELOAD_JS}</script></body></html>")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def _write_pngs(run: RunData, groups: list[Group], panels: list[tuple[str, list[Line]]], hms: list[Heatmap],
                out: Path) -> None:
    from mad.plots import save_heatmap_png, save_metric_png, save_samples_png

    out.mkdir(parents=True, exist_ok=True)
    for metric, lines in panels:
        save_metric_png(out / f"metric_{_safe_name(metric)}.png", metric, lines, log_y=metric in LOG_Y_METRICS)
    for g in groups:
        for c in g.chains:
            previews = [(gen, x) for gen in select_gens(c.done)
                        if (x := load_preview(run.run_dir, c.name, gen)) is not None]
            if previews:
                save_samples_png(out / f"samples_{_safe_name(c.name)}.png", c.name, previews, color=g.color)
    for i, hm in enumerate(hms):
        for metric in hm.z:
            suffix = f"_{i}" if len(hms) > 1 else ""
            save_heatmap_png(out / f"heatmap_{_safe_name(metric)}{suffix}.png", metric, hm.x_key, hm.x_labels,
                             hm.y_key, hm.y_labels, hm.z[metric], title=f"final {metric} {hm.title}".strip())


def write_run_report(run: RunData, png: bool = False, band: Optional[str] = None) -> Path:
    """``write_report`` for a run already loaded with ``load_run``."""
    page = render_html(run, png_dir=run.run_dir / "figures" if png else None, band=band)
    path = run.run_dir / "report.html"
    write_text(path, page)
    return path


def write_report(run_dir: str | Path, png: bool = False, band: Optional[str] = None) -> Path:
    """Write ``run_dir/report.html`` (and with ``png=True`` the figures as PNGs under ``run_dir/figures``).
    ``band`` (mean_std or median_iqr) overrides the run's ``report.band``.

    Safe to call while the driver is still running: unfinished generations are ignored.
    Raises ReportError when ``run_dir`` has no config.yaml, or for an unknown band.
    """
    return write_run_report(load_run(run_dir), png=png, band=band)

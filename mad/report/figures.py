"""Figures of a run as plain plotly figure dicts (no plotly import: the live report is rewritten after
every generation and must stay fast): metric panels per group of seeds, theory curves, heatmaps over
the sweep and over generations, sample scatter plots and the phase diagram.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from mad.plots import Line, first_two_dims
from mad.report import names
from mad.report.names import HEATMAP_PREFERENCE, METRIC_HINTS
from mad.report.read import (BANDS, SEED_KEY, ChainInfo, ReportError, RunData, _dotted_get, _finite, _label,
                             final_value, select_gens)

LOOP_ORDER = ("fully_synthetic", "synthetic_augmentation", "fresh_data")
# One hue per loop kind; the groups of a loop kind (lambda, other swept keys) get shades of it.
LOOP_HUES = {"fully_synthetic": "#d62728", "synthetic_augmentation": "#1f77b4", "fresh_data": "#2ca02c"}
OTHER_HUES = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARKER_MAX_GENS = 20  # more generations than this: lines only, markers would hide them
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # by lambda, 1.0 first


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
    """Group by everything swept except the seed: a hue per loop kind, a shade of it per group of that
    loop kind, a dash per lambda (per other swept key where lambda is not swept)."""
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
    variants: dict[str, list[tuple]] = {}  # loop -> its groups' (others, lambda), in drawing order
    for g in groups:
        variants.setdefault(g.loop, []).append((g.others, g.bias))
    others_all = list(dict.fromkeys(g.others for g in groups))
    for g in groups:
        hue = LOOP_HUES.get(g.loop) or OTHER_HUES[(loop_rank[g.loop] - len(LOOP_ORDER)) % len(OTHER_HUES)]
        mine = variants[g.loop]
        g.color = shade(hue, mine.index((g.others, g.bias)), len(mine))
        # the dash follows lambda when lambda is swept, else the other swept keys
        g.dash = DASHES[(biases.index(g.bias) if len(biases) > 1 else others_all.index(g.others)) % len(DASHES)]
        g.label = " · ".join([g.loop, f"λ={g.bias:g}"] + [f"{short[k]}={v}" for k, v in g.others])
        g.chains.sort(key=lambda c: (0, c.seed, "") if isinstance(c.seed, (int, float)) else (1, 0, _label(c.seed)))
    return groups


def shade(hue: str, i: int, n: int) -> str:
    """The i-th of n shades of ``hue``, dark to light: mixed with black for the first, white for the last."""
    if n <= 1:
        return hue
    t = -0.45 + 1.0 * i / (n - 1)  # -0.45 (darker) .. 0.55 (lighter)
    r, g, b = (int(hue.lstrip("#")[k:k + 2], 16) for k in (0, 2, 4))
    target = 255 if t > 0 else 0
    mix = [round(c + (target - c) * abs(t)) for c in (r, g, b)]
    return "#" + "".join(f"{c:02x}" for c in mix)


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

    mean_std: the mean with a band of one std (ddof 1) around it; median_iqr: the median and the
    25th/75th percentiles (numpy's linear interpolation; the same on any monotone axis). No band
    from a single value. On a log axis the spread is taken in log space: the band is the mean
    times / divided by the geometric standard deviation exp(std(log v)), so it is symmetric on
    the axis and never reaches zero. The centre stays the arithmetic mean there, the quantity the
    trace-ratio theory curve predicts. Non-positive values (undrawable on a log axis) are left out
    of the log-space spread; fewer than two positive values: no band."""
    if band == "median_iqr":
        centre = float(np.median(vals))
        if len(vals) < 2:
            return centre, None, None
        return centre, float(np.percentile(vals, 25)), float(np.percentile(vals, 75))
    centre = float(vals.mean())
    if len(vals) < 2:
        return centre, None, None
    if log_y:
        pos = vals[vals > 0]
        if len(pos) < 2 or centre <= 0:
            return centre, None, None
        gsd = math.exp(float(np.log(pos).std(ddof=1)))
        return centre, centre / gsd, centre * gsd
    s = float(vals.std(ddof=1))
    return centre, centre - s, centre + s


def metric_lines(run: RunData, groups: list[Group], metric: str, band: str = "mean_std",
                 log_y: Optional[bool] = None) -> list[Line]:
    """The curves of one metric panel: per group a single line, or faint seeds plus the group's
    summary over seeds (``band``: mean_std or median_iqr, see :func:`_summary`; ``log_y``: the
    panel's scale, by default :func:`names.log_by_default`). A summary point over fewer seeds than
    the group has (a generation some seeds have not finished) is listed in ``extra["partial"]``."""
    if band not in BANDS:
        raise ReportError(f"report.band: unknown band {band!r}; choose one of {', '.join(BANDS)}")
    log_y = names.log_by_default(metric) if log_y is None else log_y
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
        # a generation not every seed has finished: its value would jump when the rest arrive
        finished = {gen: sum(gen in c.done for c in g.chains) for gen in gens}
        partial = [i for i, gen in enumerate(gens) if finished[gen] < len(g.chains)]
        what = "median, IQR" if band == "median_iqr" else ("mean, ×/÷ geometric std" if log_y else "mean ± std")
        lines.append(Line(x=gens, y=centre, label=f"{g.label} ({what}, {len(g.chains)} seeds)", group=g.label,
                          color=g.color, dash=g.dash, role="mean", hover=g.label, lo=lo, hi=hi,
                          extra={"counts": counts, "band": band, "partial": partial, "seeds": len(g.chains)}))
    lines += floor_lines(run, groups, metric)
    if metric == "trace_ratio":
        lines += [t for t in (theory_trace_ratio(run, g) for g in groups) if t is not None]
    elif metric in ("logdet_ratio", "logdet_ratio_per_dim"):
        per_dim = metric == "logdet_ratio_per_dim"
        lines += [t for t in (theory_logdet_ratio(run, g, per_dim) for g in groups) if t is not None]
    return lines


def floor_lines(run: RunData, groups: list[Group], metric: str) -> list[Line]:
    """The metric's real-vs-real floor (``names.FLOORS``: e.g. ``fid_floor``, the FID of real samples
    disjoint from the reference set, as many as are scored) as a horizontal line over the generations
    drawn; one line per distinct value (a comparison of runs may hold several)."""
    key = names.FLOORS.get(metric)
    if key is None:
        return []
    gens: list[int] = []
    values: dict[float, None] = {}
    for g in groups:
        for c in g.chains:
            for gen in c.done:
                v = run.value(c.name, gen, key)
                if v is not None:
                    values.setdefault(v)
                    gens.append(gen)
    if not values:
        return []
    lo, hi = min(gens), max(gens)
    return [Line(x=[lo, hi], y=[v, v], label=f"real vs real: {metric} {v:.3g} (floor)", group=f"floor {v:.6g}",
                 color="#555555", dash="dot", role="floor",
                 hover=f"{metric} of real samples vs the reference set (the floor)") for v in values]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _plotly_traces(line: Line, metric: str, axis: str, legend_shown: set[str], markers: bool) -> list[dict]:
    """plotly traces for one Line on subplot ``axis`` ("" for the first, then "2", "3", ...).
    ``markers``: a marker on every point (few generations); points over only some seeds get a
    hollow marker either way."""
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
    partial = set(line.extra.get("partial", ()))
    if line.role == "theory":
        style = {"line": {"color": "black", "dash": line.dash, "width": 1.5},
                 "marker": {"symbol": "x", "size": 6 if markers else 0, "color": "black"}}
    elif line.role == "floor":
        style = {"line": {"color": line.color, "dash": line.dash, "width": 1.5}, "marker": {"size": 0}}
    else:
        size = 5 if markers else 0
        style = {"line": {"color": line.color, "dash": line.dash, "width": 2.5 if line.role == "mean" else 2},
                 "marker": {"size": [9 if i in partial else size for i in range(len(line.x))] if partial else size,
                            "symbol": [("circle-open" if i in partial else "circle") for i in range(len(line.x))]
                            if partial else "circle", "color": line.color, "line": {"width": 2, "color": line.color}}}
    extra = ""
    if "counts" in line.extra:
        extra = "<br>%{customdata}"
    trace = {"type": "scatter", "mode": "lines+markers" if markers or partial else "lines", "x": line.x,
             "y": line.y, "name": line.label, "legendgroup": line.group, "showlegend": first, **style,
             "hovertemplate": f"{html.escape(line.hover)}<br>gen %{{x}}<br>{metric} %{{y:.4g}}{extra}<extra></extra>",
             **where}
    if "counts" in line.extra:
        n = line.extra.get("seeds", 0)
        trace["customdata"] = [f"{k} of {n} seeds" + (" (not finished by every seed)" if i in partial else "")
                               for i, k in enumerate(line.extra["counts"])]
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


def _log_ticks(lines: list[Line]) -> dict:
    """Ticks at 1, 2, 5 x 10^k over the panel's positive values, labelled as plain numbers: used
    whenever the axis is logarithmic (plotly's own log ticks label the minor ones with bare digits)."""
    vals = [v for ln in lines for seq in (ln.y, ln.lo or [], ln.hi or []) for v in seq if v is not None and v > 0]
    if not vals:
        return {}
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    ticks = [m * 10.0 ** k for k in range(lo, hi + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if min(vals) / 2.5 <= t <= max(vals) * 2.5]
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks]}


def metrics_figure(panels: list[tuple[str, list[Line]]], features: Optional[str] = None,
                   log_axes: Optional[Iterable[str]] = None) -> dict:
    """All metric panels in one figure, so one legend click hides a group in every panel. Axis titles
    from :mod:`mad.report.names` (with the feature space); ``log_axes``: the metrics drawn on a log
    y axis (default: :func:`names.log_by_default`)."""
    log_set = {m for m, _ in panels if names.log_by_default(m)} if log_axes is None else set(log_axes)
    cols = min(3, len(panels))
    domains, plot_h = _grid_domains(len(panels), cols, panel_px=260, gap_px=80)
    max_gen = max((x for _, lines in panels for ln in lines for x in ln.x), default=1)
    markers = max_gen <= MARKER_MAX_GENS
    data: list[dict] = []
    legend_shown: set[str] = set()
    layout: dict[str, Any] = {
        "height": plot_h + 100, "margin": {"t": 40, "b": 60, "l": 70, "r": 10}, "hovermode": "closest",
        "legend": {"x": 1.01, "y": 1, "xanchor": "left", "font": {"size": 11}, "tracegroupgap": 2},
        "plot_bgcolor": "white", "paper_bgcolor": "white", "annotations": [],
    }
    for i, ((metric, lines), (x0, x1, y0, y1)) in enumerate(zip(panels, domains)):
        axis = "" if i == 0 else str(i + 1)
        for line in lines:
            data += _plotly_traces(line, metric, axis, legend_shown, markers)
        grid = {"showgrid": True, "gridcolor": "#e6e6e6", "zeroline": False, "linecolor": "#888", "showline": True}
        layout[f"xaxis{axis}"] = {"domain": [x0, x1], "anchor": f"y{axis}", "title": {"text": "generation"},
                                  "tickformat": "d", **({"dtick": 1} if max_gen <= 15 else {}), **grid}
        layout[f"yaxis{axis}"] = {"domain": [y0, y1], "anchor": f"x{axis}",
                                  "title": {"text": names.title(metric, features), "font": {"size": 11}},
                                  "exponentformat": "power", "meta": metric, **grid,
                                  # tickvals set a plotly axis to tickmode array unless told otherwise
                                  **_log_ticks(lines),
                                  **({"type": "log", "tickmode": "array"} if metric in log_set else {"tickmode": "auto"})}
        hint = METRIC_HINTS.get(metric)
        title = f"<b>{html.escape(metric)}</b>" + (f" <span style='color:#777'>({hint})</span>" if hint else "")
        layout["annotations"].append({"text": title, "x": (x0 + x1) / 2, "y": y1, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                                      "font": {"size": 14}})
    return {"data": data, "layout": layout, "yaxes": [f"yaxis{'' if i == 0 else i + 1}" for i in range(len(panels))],
            "metrics": [m for m, _ in panels]}


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


@dataclass
class Heatmap:
    title: str
    x_key: str
    x_labels: list[str]
    y_key: str
    y_labels: list[str]
    z: dict[str, list[list[Optional[float]]]]  # metric -> rows (y) x columns (x), at each chain's last generation
    text: dict[str, list[list[str]]]
    default: str
    # metric -> [(generation, z, text)]: the same cells at one generation, for the slider
    by_gen: dict[str, list[tuple[int, list, list]]] = field(default_factory=dict)


HEATMAP_SLIDER_STEPS = 40  # generations on the slider at most; evenly spread, the last always kept


def _cells(run: RunData, chains: list[ChainInfo], hm_keys: tuple[str, str], labels: tuple[list, list],
           metric: str, gen: Optional[int]) -> tuple[list, list]:
    """Mean over seeds of each sweep cell: at generation ``gen``, or at each chain's last one (None)."""
    (x_key, y_key), (x_labels, y_labels) = hm_keys, labels
    zm: list[list[Optional[float]]] = [[None] * len(x_labels) for _ in y_labels]
    tm = [[""] * len(x_labels) for _ in y_labels]
    cells: dict[tuple[int, int], list[tuple[float, int]]] = {}
    for c in chains:
        xl, yl = _label(c.assignment.get(x_key)), _label(c.assignment.get(y_key))
        if xl not in x_labels or yl not in y_labels:
            continue
        v, g = final_value(run, c, metric) if gen is None else (run.value(c.name, gen, metric), gen)
        if v is not None:
            cells.setdefault((y_labels.index(yl), x_labels.index(xl)), []).append((v, g))
    for (i, j), vals in cells.items():
        zm[i][j] = float(np.mean([v for v, _ in vals]))
        gens = sorted({g for _, g in vals})
        tm[i][j] = f"{zm[i][j]:.3g}<br>gen {'/'.join(map(str, gens))}, n={len(vals)}"
    return zm, tm


def heatmaps(run: RunData) -> list[Heatmap]:
    """Metric values over the first two swept keys, at the last generation and at each generation
    (the slider); one heatmap per value of any further key."""
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
        z, text, by_gen = {}, {}, {}
        gens = select_gens(sorted({g for c in chains for g in c.done}), HEATMAP_SLIDER_STEPS)
        for metric in run.metrics:
            z[metric], text[metric] = _cells(run, chains, (x_key, y_key), (x_labels, y_labels), metric, None)
            by_gen[metric] = [(g, *_cells(run, chains, (x_key, y_key), (x_labels, y_labels), metric, g)) for g in gens]
        title = ", ".join(f"{k}={v}" for k, v in zip(rest, facet))
        out.append(Heatmap(title=title, x_key=x_key, x_labels=x_labels, y_key=y_key, y_labels=y_labels,
                           z=z, text=text, default=default, by_gen=by_gen))
    return out


def _heat_slider(hm: Heatmap, metric: str) -> dict:
    steps = [{"label": "last", "method": "restyle", "args": [{"z": [hm.z[metric]], "text": [hm.text[metric]]}]}]
    steps += [{"label": str(g), "method": "restyle", "args": [{"z": [z], "text": [t]}]}
              for g, z, t in hm.by_gen.get(metric, [])]
    return {"active": 0, "steps": steps, "x": 0.05, "len": 0.9, "y": 0, "yanchor": "top", "pad": {"t": 50},
            "currentvalue": {"prefix": "generation: ", "font": {"size": 12}}}


def heatmap_figure(hm: Heatmap) -> dict:
    """A heatmap with a dropdown over metrics (default: fid, else w2) and a slider over generations
    ("last": each chain's last finished generation). The colour scale is reversed for metrics where
    lower is better, so that bright means good on every metric."""
    def update(metric: str) -> list[dict]:
        return [{"z": [hm.z[metric]], "text": [hm.text[metric]], "colorbar.title.text": [metric],
                 "reversescale": [names.lower_is_better(metric) is True]},
                {"sliders": [_heat_slider(hm, metric)]}]

    title = f"value over the sweep{' · ' + hm.title if hm.title else ''}"
    trace = {"type": "heatmap", "x": hm.x_labels, "y": hm.y_labels, "z": hm.z[hm.default], "text": hm.text[hm.default],
             "texttemplate": "%{text}", "colorscale": "Viridis", "colorbar": {"title": {"text": hm.default}},
             "reversescale": names.lower_is_better(hm.default) is True,
             "hovertemplate": f"{hm.x_key}=%{{x}}<br>{hm.y_key}=%{{y}}<br>%{{text}}<extra></extra>",
             "xgap": 2, "ygap": 2}
    buttons = [{"label": m, "method": "update", "args": update(m)} for m in hm.z]
    layout = {"height": 230 + 70 * len(hm.y_labels), "margin": {"t": 60, "b": 60, "l": 140, "r": 20},
              "title": {"text": title, "x": 0.5, "font": {"size": 14}},
              "xaxis": {"title": {"text": hm.x_key}, "type": "category"},
              "yaxis": {"title": {"text": hm.y_key}, "type": "category", "autorange": "reversed"},  # sweep order, top down
              "updatemenus": [{"buttons": buttons, "active": list(hm.z).index(hm.default), "x": 0, "xanchor": "left",
                               "y": 1.02, "yanchor": "bottom", "showactive": True}],
              "sliders": [_heat_slider(hm, hm.default)]}
    return {"data": [trace], "layout": layout}


def class_histograms(run: RunData) -> list[tuple[ChainInfo, list[int], list[list[float]]]]:
    """Per chain with recorded class histograms (labelled data, classifier features): its
    generations and, per class, the fraction of generated samples predicted as that class."""
    out = []
    for c in run.chains:
        gens, cols = [], []
        for g in c.done:
            hist = run.rows.get((c.name, g), {}).get(names.CLASS_HIST_KEY)
            if isinstance(hist, list) and hist and all(_finite(v) is not None for v in hist):
                gens.append(g)
                cols.append([float(v) for v in hist])
        if gens:
            k = max(len(col) for col in cols)
            z = [[col[i] if i < len(col) else None for col in cols] for i in range(k)]  # class x generation
            out.append((c, gens, z))
    return out


def class_heatmap_figure(chain: ChainInfo, gens: list[int], z: list[list[float]]) -> dict:
    """Class x generation: the share of each class among a chain's generated samples."""
    k = len(z)
    trace = {"type": "heatmap", "x": gens, "y": [str(i) for i in range(k)], "z": z, "zmin": 0,
             "zmax": max(0.01, max((v for row in z for v in row if v is not None), default=0.01)),
             "colorscale": "Viridis", "colorbar": {"title": {"text": "share"}, "thickness": 12},
             "hovertemplate": "gen %{x}<br>class %{y}<br>share %{z:.3f}<extra></extra>", "xgap": 1, "ygap": 1}
    layout = {"height": 110 + 16 * k, "margin": {"t": 30, "b": 40, "l": 50, "r": 10},
              "title": {"text": chain.name, "x": 0.01, "font": {"size": 12}},
              "xaxis": {"title": {"text": "generation"}, "tickformat": "d"},
              "yaxis": {"title": {"text": "class"}, "type": "category", "autorange": "reversed"}}
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

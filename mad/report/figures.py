"""Figures of a run as plain plotly figure dicts (no plotly import: the live report is rewritten after
every generation and must stay fast): metric panels per group of seeds, theory curves, heatmaps over
the sweep and over generations, sample scatter plots and the phase diagram.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from mad.plots import Line, first_two_dims
from mad.report import names
from mad.report.names import HEATMAP_PREFERENCE, LOG_Y_METRICS, METRIC_HINTS
from mad.report.read import (BANDS, SEED_KEY, ChainInfo, ReportError, RunData, _dotted_get, _finite, _label,
                             final_value)

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

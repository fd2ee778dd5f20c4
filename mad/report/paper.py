"""Figures for a paper, drawn with matplotlib's object API (no pyplot, no global state): the MAD-style
multi-panel figure (FID, precision, recall against generation, one legend below), one figure per
metric, one sample figure (a row of real data, then a row per group of chains, a column per
generation) and the sweep heatmaps. ``python run.py report RUN_DIR --figures pdf|svg|png --dpi N``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mad.plots import MPL_DASHES, Line, first_two_dims, is_image_batch, save_heatmap_png, tile_images
from mad.report import names
from mad.report.figures import MARKER_MAX_GENS, Group, group_chains, heatmaps, metric_lines
from mad.report.read import RunData, load_preview_xy, run_band, select_gens

FORMATS = ("pdf", "svg", "png")
PANEL_W, PANEL_H = 3.0, 2.4  # inches per panel: three fit a two-column paper's full width
SAMPLE_COLUMNS = 8
SAMPLE_IMAGES = 16


def _figure(width_in: float, height_in: float, dpi: int, layout: Optional[str] = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _arr(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def draw_panel(ax, metric: str, lines: Sequence[Line], features: Optional[str], log_y: bool, markers: bool) -> None:
    """One metric against generation on ``ax``, styled like the page: a hue per loop kind, a shade and
    a dash per group, faint seeds, the band over seeds, hollow markers where not every seed finished."""
    if log_y:
        ax.set_yscale("log", nonpositive="mask")
    for line in lines:
        x, y = np.asarray(line.x, dtype=float), _arr(line.y)
        style = MPL_DASHES.get(line.dash, "-")
        if line.role == "chain":
            ax.plot(x, y, color=line.color, linestyle=style, linewidth=0.6, alpha=0.3)
        elif line.role == "floor":  # the real-vs-real floor of FID / KID
            ax.plot(x, y, color=line.color, linestyle=":", linewidth=1.0, label="real vs real", zorder=2)
        elif line.role == "theory":
            ax.plot(x, y, color="black", linestyle=style, linewidth=1.0, marker="x" if markers else None,
                    markersize=3, label="theory", zorder=3)
        else:
            if line.lo is not None and line.hi is not None:
                ax.fill_between(x, _arr(line.lo), _arr(line.hi), color=line.color, alpha=0.15, linewidth=0)
            ax.plot(x, y, color=line.color, linestyle=style, linewidth=1.6, marker="o" if markers else None,
                    markersize=2.5, label=line.group)
            partial = line.extra.get("partial") or []
            if partial:
                ax.plot(x[partial], y[partial], linestyle="none", marker="o", markersize=5, markerfacecolor="white",
                        markeredgecolor=line.color, markeredgewidth=1.2)
    ax.set_xlabel("generation")
    ax.set_ylabel(names.title(metric, features))
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)


def _legend_below(fig, axes) -> None:
    """One legend for all panels, below them: each group once, the theory curves once."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(3, len(seen)),
                   fontsize=7, frameon=False)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def write_figures(run: RunData, out: Path, fmt: str = "png", dpi: int = 200, band: Optional[str] = None,
                  real: bool = True) -> list[Path]:
    """Write the paper figures of ``run`` under ``out`` as ``fmt`` (pdf, svg or png) at ``dpi``:
    ``paper.<fmt>`` (the MAD-style panels), ``metric_<name>.<fmt>`` per metric, ``samples.<fmt>``
    and ``heatmap_<metric>.<fmt>`` for sweeps over two keys. Returns the paths written.
    ``real``: put a row of real data at the top of the sample figure (loads the run's data)."""
    if fmt not in FORMATS:
        raise ValueError(f"--figures: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    band = run_band(run, band)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_chains(run)
    features = names.feature_space(run.config)
    keys = list(run.metrics) + (["wall_s"] if any(isinstance(r.get("wall_s"), (int, float)) for r in run.rows.values())
                                else [])
    panels = {m: metric_lines(run, groups, m, band) for m in keys}
    max_gen = max((x for lines in panels.values() for ln in lines for x in ln.x), default=1)
    markers = max_gen <= MARKER_MAX_GENS
    written: list[Path] = []
    if not panels:
        return written

    headline = [m for m in names.PAPER_METRICS if m in panels] or list(panels)[:3]
    fig = _figure(PANEL_W * len(headline), PANEL_H + 0.6, dpi)
    axes = fig.subplots(1, len(headline), squeeze=False)[0]
    for ax, m in zip(axes, headline):
        draw_panel(ax, m, panels[m], features, names.log_by_default(m), markers)
        hint = names.hint(m)
        ax.set_title(f"{m}" + (f" ({hint})" if hint else ""), fontsize=8)
    _legend_below(fig, axes)
    written.append(out / f"paper.{fmt}")
    fig.savefig(written[-1], dpi=dpi)

    for m, lines in panels.items():
        fig = _figure(PANEL_W + 0.6, PANEL_H + 0.6, dpi)
        ax = fig.add_subplot()
        draw_panel(ax, m, lines, features, names.log_by_default(m), markers)
        _legend_below(fig, [ax])
        written.append(out / f"metric_{_safe(m)}.{fmt}")
        fig.savefig(written[-1], dpi=dpi)

    path = write_sample_figure(run, groups, out / f"samples.{fmt}", dpi, real)
    if path is not None:
        written.append(path)
    hms = heatmaps(run)
    for i, hm in enumerate(hms):
        for m in hm.z:
            suffix = f"_{i}" if len(hms) > 1 else ""
            written.append(out / f"heatmap_{_safe(m)}{suffix}.{fmt}")
            save_heatmap_png(written[-1], m, hm.x_key, hm.x_labels, hm.y_key, hm.y_labels, hm.z[m],
                             title=f"final {m} {hm.title}".strip(), dpi=dpi,
                             reverse=names.lower_is_better(m) is True)
    return written


def _real_preview(run: RunData) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
    """A few real samples of the run's data (the held-out reference set), or None if unavailable."""
    try:
        from mad.config import load_config
        from mad.data import load_real

        cfg = load_config(run.run_dir / "config.yaml")
        _, (x, y) = load_real(cfg.data, cfg.seed)
        return np.asarray(x[:256]), None if y is None else np.asarray(y[:256])
    except Exception:  # the data may live elsewhere or be large to fetch: the figure does without
        return None


def _in_class_order(x: np.ndarray, y: Optional[np.ndarray], n: int) -> np.ndarray:
    """``n`` samples, classes in order (0, 1, 2, ..., then again) when labels are known."""
    if y is None or len(y) != len(x):
        return x[:n]
    y = np.asarray(y).reshape(-1)
    by_class = [list(np.flatnonzero(y == k)) for k in np.unique(y)]
    order: list[int] = []
    while len(order) < min(n, len(x)) and any(by_class):
        for idx in by_class:
            if idx and len(order) < n:
                order.append(idx.pop(0))
    return x[order]


def write_sample_figure(run: RunData, groups: list[Group], path: Path, dpi: int, real: bool = True) -> Optional[Path]:
    """Rows: real data, then the first chain of each group; columns: generations (at most
    ``SAMPLE_COLUMNS``, evenly spread, first and last kept). Image data: a grid of samples per cell,
    classes in order when the samples carry labels; vectors: the first two dimensions."""
    rows: list[tuple[str, str, dict[int, tuple]]] = []
    for g in groups:
        c = g.chains[0]
        cells = {gen: p for gen in select_gens(c.done, SAMPLE_COLUMNS)
                 if (p := load_preview_xy(*c.files(run.run_dir), gen)) is not None}
        if cells:
            rows.append((g.label, g.color, cells))
    if not rows:
        return None
    gens = sorted({gen for _, _, cells in rows for gen in cells})
    if len(gens) > SAMPLE_COLUMNS:
        gens = select_gens(gens, SAMPLE_COLUMNS)
    real_xy = _real_preview(run) if real else None
    if real_xy is not None:
        rows.insert(0, ("real data", "#000000", {gens[0]: real_xy}))
    fig = _figure(1.0 * len(gens) + 1.6, 1.0 * len(rows) + 0.4, dpi, layout=None)
    fig.subplots_adjust(left=1.5 / (1.0 * len(gens) + 1.6), right=0.99, bottom=0.02,
                        top=1 - 0.3 / (1.0 * len(rows) + 0.4), wspace=0.05, hspace=0.08)
    axes = fig.subplots(len(rows), len(gens), squeeze=False)
    vectors = [first_two_dims(x) for _, _, cells in rows for x, _ in cells.values() if not is_image_batch(x)]
    if vectors:  # one box for every cell, so a collapsing cloud visibly shrinks
        pts = np.concatenate(vectors)
        lo, hi = np.nanmin(pts, axis=0), np.nanmax(pts, axis=0)
        lo, hi = lo - 0.05 * np.maximum(hi - lo, 1e-9), hi + 0.05 * np.maximum(hi - lo, 1e-9)
    for r, (label, color, cells) in enumerate(rows):
        for k, gen in enumerate(gens):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"gen {gen}", fontsize=7)
            if k == 0:
                ax.set_ylabel(label.replace(" · ", "\n"), fontsize=6, rotation=0, ha="right", va="center")
            if gen not in cells:
                ax.set_axis_off() if k else [s.set_visible(False) for s in ax.spines.values()]
                continue
            x, y = cells[gen]
            if is_image_batch(x):
                grid = tile_images(_in_class_order(x, y, SAMPLE_IMAGES), SAMPLE_IMAGES)
                ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
            else:
                p = first_two_dims(x)
                ax.scatter(p[:, 0], p[:, 1], s=1.5, color=color, alpha=0.7, linewidths=0)
                ax.set_xlim(lo[0], hi[0])
                ax.set_ylim(lo[1], hi[1])
    fig.savefig(path, dpi=dpi)
    return path

"""The HTML dashboard: one self-contained page (plotly.js inlined once, sample grids as base64 PNG),
written atomically so that a browser reload never sees half a file.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Optional

from mad.artifacts import write_text
from mad.plots import encode_png, is_image_batch, tile_images
from mad.report.figures import (MARKER_MAX_GENS, Group, baseline_figure, class_heatmap_figure, class_histograms,
                                group_chains, heatmap_figure, heatmaps, metric_lines, metrics_figure, phase_figure,
                                run_phase_table, scatter_figure)
from mad.report.names import feature_space
from mad.report.read import (MAX_PREVIEW_GENS, SEED_KEY, RunData, _dotted_get, _finite, _label, compare_runs,
                             family_config, load_preview, load_run, run_band, select_gens)
from mad.report.tables import SUMMARY_CSV, summary_csv

GRID_IMAGES = 16
MAX_CLASS_HEATMAPS = 24  # chains with a class-drift heatmap on the page


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
  window.madSetYScale = function(id, kind, axis){
    var f = figs.filter(function(g){ return g.id === id; })[0], upd = {};
    (axis ? [axis] : f.yaxes).forEach(function(a){
      // log: the 1-2-5 ticks the figure carries; linear: plotly's automatic ticks
      upd[a + '.type'] = kind; upd[a + '.tickmode'] = kind === 'log' && f.layout[a].tickvals ? 'array' : 'auto';
    });
    Plotly.relayout(id, upd);
    if (!axis) document.querySelectorAll('select[data-axis]').forEach(function(s){ s.value = kind; });
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
            previews = [(gen, x) for gen in gens if (x := load_preview(*c.files(run.run_dir), gen)) is not None]
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


def _scale_controls(fig: dict) -> str:
    """A linear/log switch per panel; the default scale is selected."""
    out = []
    for axis, metric in zip(fig["yaxes"], fig["metrics"]):
        log = fig["layout"][axis].get("type") == "log"
        opts = "".join(f"<option value='{k}'{' selected' if (k == 'log') == log else ''}>{k}</option>"
                       for k in ("linear", "log"))
        out.append(f"<label class='scale'>{html.escape(metric)} <select data-axis='{axis}' "
                   f"onchange=\"madSetYScale('metrics', this.value, '{axis}')\">{opts}</select></label>")
    return ("<div class='note'>y axis per panel: " + " ".join(out) +
            " <button onclick=\"madSetYScale('metrics','linear')\">all linear</button>"
            "<button onclick=\"madSetYScale('metrics','log')\">all log</button></div>")


def _class_section(run: RunData, figures: list[dict]) -> str:
    hists = class_histograms(run)
    if not hists:
        return ""
    shown = hists[:MAX_CLASS_HEATMAPS]
    parts = []
    for c, gens, z in shown:
        fid = f"classes-{c.index}"
        figures.append({"id": fid, "config": {"displayModeBar": False}, **class_heatmap_figure(c, gens, z)})
        parts.append(f"<div class='card'><div id='{fid}' class='class-plot'></div></div>")
    more = (f" The first {len(shown)} of {len(hists)} chains are shown; every histogram is in metrics.jsonl "
            "(class_hist)." if len(hists) > len(shown) else "")
    return ("<h2>Class drift</h2><p class='note'>Per chain: the share of generated samples the classifier assigns "
            "to each class, per generation (a uniform 10-class target is 0.1 everywhere). A class fading out is "
            f"mode collapse; a class taking over is drift.{more}</p>" + "".join(parts))


def _config_section(run: RunData) -> str:
    import yaml

    families = sorted({c.family for c in run.chains}) or [str(_dotted_get(run.config, "model.family", "?"))]
    shown = family_config(run.config, families)
    text = yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)
    return ("<h2>Resolved config</h2><p class='note'>The model section shows only the keys "
            f"{html.escape(', '.join(families))} read{'s' if len(families) == 1 else ''}; "
            "config.yaml holds them all.</p>"
            f"<details open><summary>config (family keys only)</summary><pre>{html.escape(text)}</pre></details>"
            f"<details><summary>config.yaml as written</summary><pre>{html.escape(run.config_text)}</pre></details>")


def render_html(run: RunData, png_dir: Optional[Path] = None, band: Optional[str] = None,
                comparison: Optional[list[tuple[str, Path]]] = None) -> str:
    """The whole page as a string; with ``png_dir``, also the paper figures as PNGs there.
    ``band`` overrides the run's ``report.band`` (mean_std or median_iqr). ``comparison``: the
    (label, run directory) of each run merged into ``run`` (:func:`compare_runs`)."""
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
    heading = f"comparison of {len(comparison)} runs" if comparison else f"mad run: {html.escape(name)}"
    parts = [f"<h1>{heading}</h1><div class='status'>{status}{reload_box}</div>"]
    if comparison:
        rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(path))}</td></tr>"
                       for label, path in comparison)
        parts.append("<p class='note'>Each run is a group (label: the config keys in which the runs differ).</p>"
                     f"<table><thead><tr><th>run</th><th>directory</th></tr></thead><tbody>{rows}</tbody></table>")
    elif sweep_txt:
        parts.append(f"<div class='status'>sweep: {html.escape(sweep_txt)}</div>")
    figures: list[dict] = []
    if not run.rows:
        parts.append("<p class='empty'>nothing finished yet: no generation is marked DONE. "
                     "Reload this page once the first generation finishes.</p>")
    else:
        panel_keys = list(run.metrics) + (["wall_s"] if any(_finite(r.get("wall_s")) is not None
                                                            for r in run.rows.values()) else [])
        panels = [(m, metric_lines(run, groups, m, band)) for m in panel_keys]
        fig = metrics_figure(panels, features=feature_space(run.config))
        figures.append({"id": "metrics", **fig})
        theory = any(ln.role == "theory" for _, lines in panels for ln in lines)
        seeds = any(len(g.chains) > 1 for g in groups)
        partial = any(ln.extra.get("partial") for _, lines in panels for ln in lines)
        notes = ["One hue per loop kind; a shade of it and a dash per λ (or other swept key).",
                 f"Markers only up to {MARKER_MAX_GENS} generations.",
                 "Click a legend entry to hide a group everywhere; double-click to isolate it."]
        if seeds and band == "median_iqr":
            notes.append("Groups with several seeds: thick line = median, band = interquartile range (25th to 75th "
                         "percentile) over seeds, faint lines = seeds.")
        elif seeds:
            notes.append("Groups with several seeds: thick line = mean, band = ± one std over seeds; on log axes "
                         "(trace ratio and W2 by default) the band is the mean ×/÷ the geometric std, computed "
                         "in log space; faint lines = seeds.")
        if partial:
            notes.append("<b>Hollow markers</b>: generations not yet finished by every seed of the group (hover: "
                         "k of n seeds); their value will move when the rest arrive.")
        if theory:
            notes.append("Black curves with ×: the theory of the fully synthetic Gaussian loop, in the dash of their "
                         "λ. On trace_ratio the MEAN E[tr Σ_t / tr Σ_0] = λ^(t−1), which stays flat at λ = 1 while "
                         "most chains collapse; on logdet_ratio the typical path E[log det Σ_t − log det Σ_real], "
                         "which falls linearly even at λ = 1 (null in metrics.jsonl, a gap here: a singular fit).")
        parts.append("<h2>Metrics vs generation</h2>"
                     f"<p class='note'>{' '.join(notes)}</p>" + _scale_controls(fig) +
                     "<div class='card'><div id='metrics' class='metric-plot'></div></div>")
        hms = heatmaps(run)
        if hms:
            parts.append("<h2>Sweep heatmap</h2><p class='note'>Each cell: the value averaged over seeds, at each "
                         "chain's last finished generation or at the generation the slider picks. Pick the metric "
                         "in the menu; the colour scale is reversed where lower is better, so bright is good.</p>")
            for i, hm in enumerate(hms):
                figures.append({"id": f"heatmap-{i}", **heatmap_figure(hm)})
                parts.append(f"<div class='card'><div id='heatmap-{i}' class='heatmap-plot'></div></div>")
        parts.append(_class_section(run, figures))
        if not comparison:
            parts.append(_phase_section(run, figures))
        parts.append(_sample_section(run, groups, figures))
        if png_dir is not None:
            from mad.report.paper import write_figures

            write_figures(run, png_dir, "png", band=band, real=False)
    parts.append("<h2>Progress</h2>" + _progress_table(run, groups))
    if not comparison:
        parts.append(_config_section(run))
    scripts = ""
    if figures:
        from plotly.offline import get_plotlyjs  # plotly.js is inlined: the page must open offline

        scripts = (f"<script>{get_plotlyjs()}</script>"
                   f"<script type='application/json' id='mad-figures'>{_json_for_script(figures)}</script>"
                   f"<script>{_BOOT_JS}</script>")
    title = "comparison" if comparison else name
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>mad · {html.escape(title)}</title><script>{_ERRORS_JS}</script><style>{_CSS}</style></head><body>"
            + "".join(parts) + scripts + f"<script>{_RELOAD_JS}</script></body></html>")


def write_run_report(run: RunData, png: bool = False, band: Optional[str] = None,
                     out: Optional[Path] = None, comparison: Optional[list[tuple[str, Path]]] = None) -> Path:
    """``write_report`` for a run already loaded with ``load_run``: ``report.html`` and ``summary.csv``
    in ``out`` (default: the run directory)."""
    out = Path(out) if out is not None else run.run_dir
    page = render_html(run, png_dir=out / "figures" if png else None, band=band, comparison=comparison)
    path = out / "report.html"
    write_text(out / SUMMARY_CSV, summary_csv(run))
    write_text(path, page)
    return path


def write_report(run_dir: str | Path, png: bool = False, band: Optional[str] = None) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/summary.csv`` (with ``png=True`` also the paper
    figures as PNGs under ``run_dir/figures``). ``band`` (mean_std or median_iqr) overrides the run's
    ``report.band``.

    Safe to call while the driver is still running: unfinished generations are ignored.
    Raises ReportError when ``run_dir`` has no config.yaml, or for an unknown band.
    """
    return write_run_report(load_run(run_dir), png=png, band=band)


def write_comparison(run_dirs: list[str | Path], out: str | Path, band: Optional[str] = None) -> Path:
    """One page overlaying several runs (``out/report.html`` and ``out/summary.csv``): each run a
    group, labelled by the config keys in which the runs differ."""
    merged, labels = compare_runs([load_run(d) for d in run_dirs])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return write_run_report(merged, band=band, out=out, comparison=labels)

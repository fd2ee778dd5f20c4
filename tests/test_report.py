"""The HTML dashboard: loading a run directory, figure contents, the empty page, PNG export, and a
headless Chromium render (no script errors, plots drawn, sample grids shown, a non-blank screenshot).

``_render_check(run_dir)`` is the reusable part: apply it to real driver runs as well.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mad.report.figures import _summary
from mad.report import (ReportError, group_chains, load_run, metric_lines, text_table, theory_logdet_ratio,
                        theory_trace_ratio, write_report)
from report_fixtures import write_digits_run, write_empty_run, write_gaussian_run

GAUSS_GENS, GAUSS_SEEDS = 5, 2


@pytest.fixture(scope="module")
def gauss_run(tmp_path_factory) -> Path:
    return write_gaussian_run(tmp_path_factory.mktemp("gauss") / "run", generations=GAUSS_GENS, seeds=GAUSS_SEEDS)


TYPICAL_GENS, TYPICAL_SEEDS, TYPICAL_DIM, TYPICAL_N = 4, 5, 3, 10


@pytest.fixture(scope="module")
def typical_run(tmp_path_factory) -> Path:
    """Fully synthetic Gaussian chains with log-det records, enough seeds for a median and quartiles."""
    return write_gaussian_run(tmp_path_factory.mktemp("typical") / "run", generations=TYPICAL_GENS,
                              seeds=TYPICAL_SEEDS, dim=TYPICAL_DIM, n=TYPICAL_N, kinds=("fully_synthetic",),
                              partial=False, logdet=True)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return write_digits_run(tmp_path_factory.mktemp("digits") / "run", generations=3)


def _figures(page: str) -> dict[str, dict]:
    m = re.search(r"<script type='application/json' id='mad-figures'>(.*?)</script>", page, re.S)
    assert m, "the page carries no figure data"
    return {f["id"]: f for f in json.loads(m.group(1).replace("<\\/", "</"))}


def _metric_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


# ----------------------------------------------------------------------------- loading
def test_load_counts_only_finished_generations(gauss_run):
    run = load_run(gauss_run)
    assert len(run.chains) == 2 * 2 * GAUSS_SEEDS
    assert all(c.done == list(range(1, GAUSS_GENS + 1)) for c in run.chains)
    # metrics.jsonl also holds a line for an unfinished generation 6 (no DONE) and a torn last line
    assert max(gen for _, gen in run.rows) == GAUSS_GENS
    assert len(run.rows) == len(run.chains) * GAUSS_GENS
    assert run.metrics == ["w2", "trace_ratio", "mean_shift"]
    assert list(run.sweep) == ["loop.kind", "sample.bias", "seed"]


def test_text_table_shows_every_chain_and_generation(gauss_run):
    run = load_run(gauss_run)
    table = text_table(run)
    blocks = table.split("\n\n")
    # the fixture's Gaussian runs record w2 and trace_ratio (no FID/precision/recall)
    assert [b.splitlines()[0].split(":")[0] for b in blocks] == ["w2", "trace_ratio"]
    assert blocks[0].splitlines()[0].startswith("w2: W2 to the real distribution (lower is better)")
    recorded = {(r["chain"], r["gen"]): r for r in _metric_lines(gauss_run / "metrics.jsonl") if r["gen"] <= GAUSS_GENS}
    for block in blocks:
        metric = block.splitlines()[0].split(":")[0]
        rows = block.splitlines()[2:]
        assert len(rows) == len(run.chains)
        for c, row in zip(run.chains, rows):
            cells = row.split()
            assert cells[0] == c.name and len(cells) == 1 + GAUSS_GENS
            for gen, cell in zip(range(1, GAUSS_GENS + 1), cells[1:]):
                assert cell == f"{recorded[(c.name, gen)][metric]:.4g}"
    # long runs: at most max_gens columns, first and last kept, and the table says so
    short = text_table(run, metrics=["w2"], max_gens=3)
    assert short.splitlines()[1].split()[1:] == ["gen", "1", "gen", "3", "gen", str(GAUSS_GENS)]
    assert f"3 of {GAUSS_GENS} generations shown" in short
    assert text_table(run, metrics=["fid"]) == "none of fid recorded in this run"


def test_groups_differ_only_in_seed_and_style_by_loop_and_lambda(gauss_run):
    groups = group_chains(load_run(gauss_run))
    assert len(groups) == 4
    for g in groups:
        assert len(g.chains) == GAUSS_SEEDS
        assert len({(c.loop, c.bias) for c in g.chains}) == 1
        assert sorted(c.seed for c in g.chains) == list(range(GAUSS_SEEDS))
    color = {(g.loop, g.bias): g.color for g in groups}
    dash = {(g.loop, g.bias): g.dash for g in groups}
    # one hue per loop kind: the lambda groups of a loop kind are distinct shades of it
    assert color[("fresh_data", 1.0)] != color[("fresh_data", 0.7)]
    assert color[("fully_synthetic", 1.0)] != color[("fully_synthetic", 0.7)]

    def hue(hex_color):
        import colorsys
        return colorsys.rgb_to_hsv(*(int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)))[0]

    assert abs(hue(color[("fresh_data", 1.0)]) - hue(color[("fresh_data", 0.7)])) < 0.02
    assert abs(hue(color[("fully_synthetic", 1.0)]) - hue(color[("fresh_data", 1.0)])) > 0.2
    assert dash[("fresh_data", 1.0)] == dash[("fully_synthetic", 1.0)] != dash[("fully_synthetic", 0.7)]


def test_theory_curve_for_trace_ratio(gauss_run, tmp_path):
    run = load_run(gauss_run)
    by_key = {(g.loop, g.bias): g for g in group_chains(run)}
    unbiased = theory_trace_ratio(run, by_key[("fully_synthetic", 0.7)])
    assert unbiased.x == list(range(1, GAUSS_GENS + 1))
    assert unbiased.label == "theory E[trace_ratio] = λ^(t−1) (mean)"  # the mean, not the typical chain
    np.testing.assert_allclose(unbiased.y, [0.7 ** (t - 1) for t in unbiased.x])
    assert theory_trace_ratio(run, by_key[("fresh_data", 0.7)]) is None  # no closed form drawn there

    # the same run under the MLE estimator: each generation also shrinks by (n - 1)/n
    mle_dir = tmp_path / "mle"
    shutil.copytree(gauss_run, mle_dir)
    cfg = mle_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("estimator: unbiased", "estimator: mle"))
    run = load_run(mle_dir)
    group = {(g.loop, g.bias): g for g in group_chains(run)}[("fully_synthetic", 0.7)]
    n = run.config["loop"]["n_init"]  # fixture: n_init = n_synth
    expected = [(n - 1) / n * (0.7 * (n - 1) / n) ** (t - 1) for t in range(1, GAUSS_GENS + 1)]
    np.testing.assert_allclose(theory_trace_ratio(run, group).y, expected)


def test_chains_recovered_without_chains_json(gauss_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(gauss_run, run_dir)
    (run_dir / "chains.json").unlink()
    before, after = load_run(gauss_run), load_run(run_dir)
    assert sorted(c.name for c in after.chains) == sorted(c.name for c in before.chains)
    assert after.rows.keys() == before.rows.keys()
    assert sorted(len(g.chains) for g in group_chains(after)) == [GAUSS_SEEDS] * 4


# ----------------------------------------------------------------------------- the typical path
def _records_by_group(run_dir: Path) -> dict[tuple[float, int], list[dict]]:
    out: dict[tuple[float, int], list[dict]] = {}
    for r in _metric_lines(run_dir / "metrics.jsonl"):
        out.setdefault((r["bias"], r["gen"]), []).append(r)
    return out


def test_median_iqr_band_equals_numpy_on_the_records(typical_run):
    run = load_run(typical_run)
    groups = group_chains(run)
    recs = _records_by_group(typical_run)
    for metric in ("w2", "trace_ratio", "logdet_ratio"):
        centres = [ln for ln in metric_lines(run, groups, metric, "median_iqr") if ln.role == "mean"]
        assert len(centres) == 2  # lambda 1 and 0.7
        for line, g in zip(centres, groups):
            assert line.label == f"{g.label} (median, IQR, {TYPICAL_SEEDS} seeds)"
            assert line.x == list(range(1, TYPICAL_GENS + 1))
            for gen, c, lo, hi in zip(line.x, line.y, line.lo, line.hi):
                vals = [r[metric] for r in recs[(g.bias, gen)]]
                assert len(vals) == TYPICAL_SEEDS
                assert c == np.median(vals) and lo == np.percentile(vals, 25) and hi == np.percentile(vals, 75)
        means = [ln for ln in metric_lines(run, groups, metric) if ln.role == "mean"]  # the default: mean ± std
        for line, g in zip(means, groups):
            vals = [r[metric] for r in recs[(g.bias, 1)]]
            # the centre is the arithmetic mean on every axis (log axes: the trace-ratio theory is a mean)
            what = "mean, ×/÷ geometric std" if metric in ("w2", "trace_ratio") else "mean ± std"
            assert line.y[0] == pytest.approx(np.mean(vals)) and what in line.label
    with pytest.raises(ReportError, match="report.band"):
        metric_lines(run, groups, "w2", "median")


def test_bands_on_log_axes_stay_positive():
    vals = np.array([0.01, 0.02, 5.0])  # mean - std < 0: a log axis cannot draw it
    m, lo, hi = _summary(vals, "mean_std", log_y=True)
    # log space: the mean times / divided by the geometric std, symmetric on the axis
    gsd = np.exp(np.log(vals).std(ddof=1))
    assert m == pytest.approx(vals.mean()) and lo == pytest.approx(m / gsd) and hi == pytest.approx(m * gsd)
    assert lo > 0 and np.log(hi) - np.log(m) == pytest.approx(np.log(m) - np.log(lo))
    assert _summary(vals, "mean_std", log_y=False)[1] == pytest.approx(vals.mean() - vals.std(ddof=1))
    assert _summary(vals, "median_iqr", log_y=True)[1] == np.percentile(vals, 25) > 0
    assert _summary(np.array([0.0, 0.0, 3.0]), "mean_std", log_y=True)[1] is None  # one positive value: no spread
    assert _summary(np.array([2.0]), "median_iqr", log_y=True) == (2.0, None, None)


def test_logdet_theory_line_equals_the_formula(typical_run):
    from scipy.special import digamma

    run = load_run(typical_run)
    d, n = TYPICAL_DIM, TYPICAL_N
    c = sum(digamma((n - 1 - i) / 2) for i in range(d)) + d * np.log(2) - d * np.log(n - 1)
    for g in group_chains(run):
        line = theory_logdet_ratio(run, g)
        expected = [c + (t - 1) * (d * np.log(g.bias) + c) for t in range(1, TYPICAL_GENS + 1)]
        assert line.x == list(range(1, TYPICAL_GENS + 1))
        np.testing.assert_allclose(line.y, expected, rtol=1e-13)
        np.testing.assert_allclose(theory_logdet_ratio(run, g, per_dim=True).y, np.array(expected) / d, rtol=1e-13)
        assert "typical path" in line.label
        # the panel carries it, and the trace panel its mean counterpart
        assert [ln.y for ln in metric_lines(run, [g], "logdet_ratio") if ln.role == "theory"] == [line.y]
    # MLE: n in place of n - 1 in the last term
    mle_dir = typical_run.parent / "mle"
    shutil.copytree(typical_run, mle_dir)
    cfg = mle_dir / "config.yaml"
    cfg.write_text(cfg.read_text().replace("estimator: unbiased", "estimator: mle"))
    run = load_run(mle_dir)
    c_mle = c + d * np.log(n - 1) - d * np.log(n)
    g = group_chains(run)[0]
    np.testing.assert_allclose(theory_logdet_ratio(run, g).y,
                               [c_mle + (t - 1) * (d * np.log(g.bias) + c_mle) for t in range(1, TYPICAL_GENS + 1)],
                               rtol=1e-13)


def test_band_from_config_and_command_line(typical_run, tmp_path):
    from conftest import run_cli

    run_dir = tmp_path / "run"
    shutil.copytree(typical_run, run_dir)
    cfg = run_dir / "config.yaml"
    assert "band: mean_std" in cfg.read_text()
    cfg.write_text(cfg.read_text().replace("band: mean_std", "band: median_iqr"))
    figs = _figures(write_report(run_dir).read_text())
    names = [t.get("name", "") for t in figs["metrics"]["data"]]
    assert any("median, IQR" in n for n in names) and not any("mean ± std" in n for n in names)
    # the page: trace_ratio on a log axis, its band edges positive; the log-det theory drawn
    layout = figs["metrics"]["layout"]
    axis = {layout[k]["meta"]: k for k in figs["metrics"]["yaxes"]}
    assert layout[axis["trace_ratio"]]["type"] == "log" == layout[axis["w2"]]["type"]
    assert "type" not in layout[axis["logdet_ratio"]]  # a log already: linear
    on_trace = [t for t in figs["metrics"]["data"] if t["yaxis"] == axis["trace_ratio"].replace("axis", "")]
    assert all(v > 0 for t in on_trace for v in t["y"] if v is not None)
    theory = [t for t in figs["metrics"]["data"] if t.get("legendgroup") == "theory"]
    assert len(theory) == 2 * 3  # lambda 1 and 0.7 on trace_ratio, logdet_ratio, logdet_ratio_per_dim

    proc = run_cli("report", str(run_dir), "--band", "mean_std")  # the flag wins over the config
    assert proc.returncode == 0, proc.stderr
    names = [t.get("name", "") for t in _figures((run_dir / "report.html").read_text())["metrics"]["data"]]
    assert any("mean ± std" in n for n in names) and not any("median, IQR" in n for n in names)

    (run_dir / "report.html").unlink()
    proc = run_cli("report", str(run_dir), "--band=quartiles")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--band" in lines[0] and "median_iqr" in lines[0]
    assert not (run_dir / "report.html").exists()


def test_png_export_of_the_typical_path(typical_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(typical_run, run_dir)
    write_report(run_dir, png=True, band="median_iqr")
    for metric in ("trace_ratio", "logdet_ratio"):
        img = np.asarray(Image.open(run_dir / "figures" / f"metric_{metric}.png").convert("L"), dtype=float)
        assert img.shape[0] > 100 and img.std() > 10


# ----------------------------------------------------------------------------- the page
def test_report_page_contents(gauss_run):
    path = write_report(gauss_run)
    assert path == gauss_run / "report.html"
    page = path.read_text()
    assert not list(gauss_run.glob(".report.html.*"))  # the temporary file was moved into place
    # self-contained: plotly.js inlined exactly once, nothing fetched from the network
    assert page.count("plotly.js v") == 1
    assert re.findall(r"<script[^>]+src=", page) == []
    figs = _figures(page)
    run = load_run(gauss_run)

    metrics = figs["metrics"]
    assert metrics["metrics"] == [metrics["layout"][k]["meta"] for k in metrics["yaxes"]]
    assert metrics["metrics"] == ["w2", "trace_ratio", "mean_shift", "wall_s"]
    titles = [metrics["layout"][k]["title"]["text"] for k in metrics["yaxes"]]
    assert titles == ["W2 to the real distribution", "tr Σ_t / tr Σ_real", "‖μ_t − μ_real‖", "wall time (s)"]
    assert all(metrics["layout"][k.replace("y", "x", 1)]["title"]["text"] == "generation" for k in metrics["yaxes"])
    for axis, metric in zip(["y", "y2", "y3"], ["w2", "trace_ratio", "mean_shift"]):
        traces = [t for t in metrics["data"] if t["yaxis"] == axis]
        for c in run.chains:  # every chain drawn, with exactly its finished values
            (mine,) = [t for t in traces if t.get("name") == c.name]
            np.testing.assert_allclose(mine["y"], [run.rows[(c.name, g)][metric] for g in mine["x"]])
        means = [t for t in traces if t.get("name", "").endswith(f"{GAUSS_SEEDS} seeds)")]
        assert len(means) == 4
        bands = [t for t in traces if t.get("fill") == "tonexty"]
        assert len(bands) == 4
    assert max(v for t in metrics["data"] for v in t["y"] if v is not None) < 1e5  # the unfinished gen 6 is out
    theory = [t for t in metrics["data"] if t.get("legendgroup") == "theory"]
    assert len(theory) == 2 and all(t["yaxis"] == "y2" for t in theory)  # fully synthetic, lambda in {1, 0.7}

    # heatmap: final w2 over loop.kind x sample.bias, averaged over seeds
    heat = figs["heatmap-0"]["data"][0]
    assert heat["x"] == ["fully_synthetic", "fresh_data"] and heat["y"] == ["1", "0.7"]
    lines = _metric_lines(gauss_run / "metrics.jsonl")
    for i, bias in enumerate([1.0, 0.7]):
        for j, kind in enumerate(["fully_synthetic", "fresh_data"]):
            finals = [r["w2"] for r in lines if r.get("loop") == kind and r.get("bias") == bias and r["gen"] == GAUSS_GENS]
            assert len(finals) == GAUSS_SEEDS
            assert heat["z"][i][j] == pytest.approx(np.mean(finals))
    # vectors: one scatter figure per chain, one panel per generation
    scatters = [f for fid, f in figs.items() if fid.startswith("samples-")]
    assert len(scatters) == len(run.chains)
    assert all(len(f["data"]) == GAUSS_GENS and len(f["data"][0]["x"]) == 64 for f in scatters)
    assert page.count(f"{len(run.chains) * GAUSS_GENS} / {len(run.chains) * GAUSS_GENS} generations finished") == 1


def test_digits_page_has_image_grids(digits_run):
    page = write_report(digits_run).read_text()
    srcs = re.findall(r"<img class='sample-grid'[^>]* src='data:image/png;base64,([^']+)'", page)
    assert len(srcs) == 2 * 3  # 2 chains x 3 generations
    grid = np.asarray(Image.open(BytesIO(base64.b64decode(srcs[0]))))
    assert grid.shape == (4 * 9 + 1, 4 * 9 + 1)  # 16 digits of 8x8 in a 4x4 grid, 1 px padding
    assert grid.std() > 20
    figs = _figures(page)
    assert "heatmap-0" not in figs  # one swept key: no heatmap
    assert figs["metrics"]["layout"]["yaxis"]["title"]["text"] == "FID (LeNet features)"  # metrics.features: classifier


def test_empty_run_says_nothing_finished(tmp_path):
    run_dir = write_empty_run(tmp_path / "run")
    page = write_report(run_dir).read_text()
    assert page.count("nothing finished yet") == 1
    assert len(page) < 100_000 and page.count("mad-figures") == 0  # no plotly.js needed
    assert page.count("<td class=num>0 / 3</td>") == 1 and page.count("<pre>") == 2  # progress table and config (the family's keys, as written) are still there


def test_not_a_run_dir(tmp_path):
    for bad in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ReportError, match="not a run directory") as err:
            write_report(bad)
        assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert not (tmp_path / "report.html").exists()


def test_png_export(digits_run):
    write_report(digits_run, png=True)
    out = digits_run / "figures"
    names = sorted(p.name for p in out.glob("*.png"))
    expected_metrics = {f"metric_{m}.png" for m in ("fid", "precision", "recall", "class_entropy", "class_kl", "wall_s")}
    assert expected_metrics <= set(names)
    assert "samples.png" in names and "paper.png" in names
    for name in ("metric_fid.png", names[-1]):
        img = np.asarray(Image.open(out / name).convert("L"), dtype=float)
        assert img.shape[0] > 100 and img.std() > 10


def test_importing_report_is_light():
    code = ("import sys, mad.report; heavy = [m for m in ('torch', 'ray', 'plotly', 'matplotlib') if m in sys.modules];"
            " assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- headless Chromium
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
                  "--window-size=1400,3000"]
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _DomIndex(HTMLParser):
    """Counts (tag, class) of the descendants of every element that has an id, and keeps root attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.inside: dict[str, Counter] = {}
        self.classes: dict[str, str] = {}
        self.root: dict[str, str] = {}
        self.imgs: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.root = a
        if tag == "img":
            self.imgs.append(a)
        drawn = not (tag == "path" and len(a.get("d", "")) < 4)  # an empty path draws nothing
        for _, owner in self.stack:
            if owner is not None and drawn:
                for cls in a.get("class", "").split() or [""]:
                    self.inside[owner][(tag, cls)] += 1
        if "id" in a:
            self.inside.setdefault(a["id"], Counter())
            self.classes[a["id"]] = a.get("class", "")
        if tag not in _VOID:
            self.stack.append((tag, a.get("id")))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _render_check(run_dir: Path, report: Path | None = None) -> dict:
    """Write the report (or take ``report``, a page written already), render it in headless Chromium,
    and assert it is drawn and error-free.

    Checks: no console message or script error; every plotly figure drawn (lines in each metric panel,
    cells in each heatmap, points in each vector sample plot); one <img> per image sample grid; and a
    screenshot that is not a flat colour. Returns what it counted, for extra assertions.
    """
    exe = _chromium()
    if exe is None:
        print("chromium not installed: apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    if report is None:
        report = write_report(run_dir)
    page = report.read_text()
    figs = _figures(page) if "id='mad-figures'" in page else {}
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--screenshot={shot}",
                               "--dump-dom", report.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
        assert not console, "browser console:\n" + "\n".join(console)
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    dom = _DomIndex()
    dom.feed(proc.stdout)
    assert "data-mad-errors" not in dom.root, dom.root.get("data-mad-errors")
    found = {"figures": len(figs), "pixels_std": float(pixels.std())}
    if figs:
        assert dom.root.get("data-mad-figures") == str(len(figs))
        assert dom.root.get("data-mad-drawn") == str(len(figs)), "not every figure finished drawing"
    for fid, fig in figs.items():
        inside = dom.inside.get(fid, Counter())
        assert inside[("svg", "main-svg")] >= 1, f"{fid}: plotly drew no svg"
        if fid == "metrics":
            panels = len(fig["yaxes"])
            assert inside[("g", "subplot")] >= panels
            lines = sum(t.get("mode", "").startswith("lines") and t.get("line", {}).get("width", 1) > 0
                        for t in fig["data"])
            assert inside[("path", "js-line")] >= lines, f"{inside[('path', 'js-line')]} of {lines} lines drawn"
            found["lines"] = inside[("path", "js-line")]
        elif fid.startswith(("heatmap", "classes")):
            assert inside[("g", "hm")] >= 1 and inside[("image", "")] >= 1, f"{fid}: no heatmap cells"
            if fig["layout"].get("sliders"):  # the generation slider: a rail and a step per generation
                assert inside[("g", "slider-container")] == 1, f"{fid}: no slider drawn"
                assert inside[("rect", "slider-grip-rect")] == 1
                assert inside[("rect", "slider-tick-rect")] == len(fig["layout"]["sliders"][0]["steps"])
        elif fid.startswith("samples"):
            points = sum(len(t["x"]) for t in fig["data"])
            assert inside[("path", "point")] == points, f"{fid}: {inside[('path', 'point')]} of {points} points"
    expected_grids = len(re.findall(r"<img class='sample-grid'", page))
    grids = [a for a in dom.imgs if "sample-grid" in a.get("class", "") and a.get("src", "").startswith("data:image/png")]
    assert len(grids) == expected_grids
    found["image_grids"] = len(grids)
    # a rendered page has text (and lines, images): not one flat colour; even the empty page has std ~12
    assert pixels.std() > 8 and len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 20
    return found


def test_chromium_renders_seed_bands(gauss_run):
    # the fixture sweep has two seeds per group: mean lines, std bands and seed lines must all draw
    found = _render_check(gauss_run)
    assert found["figures"] == 1 + 1 + 8  # metrics, heatmap, one scatter per chain


def test_chromium_renders_digits_class_drift_and_sliders(digits_run, gauss_run):
    found = _render_check(digits_run)
    # metrics, a class-drift heatmap per chain; one swept key: no sweep heatmap
    assert found["figures"] == 1 + 2 and found["image_grids"] == 2 * 3
    page = (gauss_run / "report.html")
    _render_check(gauss_run)
    assert "slider" in page.read_text()


def test_chromium_renders_a_comparison_page(tmp_path):
    from conftest import run_cli

    a = write_gaussian_run(tmp_path / "a", generations=4, seeds=2, kinds=("fully_synthetic",), biases=(1.0,),
                           partial=False)
    b = write_gaussian_run(tmp_path / "b", generations=4, seeds=2, kinds=("fully_synthetic",), biases=(1.0,),
                           n=20, partial=False)
    proc = run_cli("report", str(a), str(b), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "cmp" / "report.html"
    found = _render_check(tmp_path / "cmp", report)
    figs = _figures(report.read_text())
    assert found["figures"] == 1 + 4  # metrics and a scatter per chain; one group per run: no sweep heatmap
    groups = {t["legendgroup"] for t in figs["metrics"]["data"] if t.get("legendgroup") != "theory"}
    # each run is a group, labelled by the config keys that differ (n_init = n_real = n_synth = n)
    assert groups == {"fully_synthetic · λ=1 · run=n_init=40, n_real=40, n_synth=40",
                      "fully_synthetic · λ=1 · run=n_init=20, n_real=20, n_synth=20"}
    assert not (a / "report.html").exists() and not (b / "report.html").exists()  # the runs are only read


def test_chromium_renders_empty_page(tmp_path):
    found = _render_check(write_empty_run(tmp_path / "run"))
    assert found["figures"] == 0


# ----------------------------------------------------------------------------- real runs of the driver
REAL_GAUSS = ["data.name=gaussian", "data.dim=3", "data.n_reference=300", "model.family=gaussian",
              "metrics.features=raw", "metrics.n_eval=200", "loop.n_init=40", "loop.generations=3",
              "sweep.loop.kind=[fully_synthetic,fresh_data]", "sweep.sample.bias=[1.0,0.8]"]
REAL_DIGITS = ["data.name=digits", "data.n_reference=200", "model.family=diffusion", "model.channels=[16,32]",
               "model.num_train_timesteps=100", "train.steps=20", "train.batch_size=32", "sample.steps=5",
               "metrics.features=raw", "metrics.n_eval=100", "loop.n_init=200", "loop.generations=2",
               "sweep.loop.kind=[fully_synthetic]", "sweep.sample.bias=[1.0,0.5]"]


def _driver_run(out: Path, overrides: list[str]) -> Path:
    from mad.config import load_config
    from mad.driver import Driver

    if _chromium() is None:  # no point in spending the run
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    Driver(load_config(None, [f"out={out}", "report.progress=false", *overrides]), quiet=True).run()
    return out


@pytest.mark.usefixtures("ray_local")
def test_chromium_real_gaussian_run(tmp_path):
    run_dir = _driver_run(tmp_path / "run", REAL_GAUSS)
    found = _render_check(run_dir)
    assert found["figures"] == 1 + 1 + 4  # metrics, the loop.kind x lambda heatmap, a scatter per chain
    figs = _figures((run_dir / "report.html").read_text())
    axis = {figs["metrics"]["layout"][k]["meta"]: k.replace("axis", "") for k in figs["metrics"]["yaxes"]}
    theory = [t for t in figs["metrics"]["data"] if t.get("legendgroup") == "theory" and t["yaxis"] == axis["trace_ratio"]]
    assert len(theory) == 2  # fully synthetic at lambda 1 and 0.8
    np.testing.assert_allclose(sorted(theory, key=lambda t: t["y"][-1])[0]["y"], [0.8 ** t for t in range(3)])
    logdet = [t for t in figs["metrics"]["data"] if t.get("legendgroup") == "theory" and t["yaxis"] == axis["logdet_ratio"]]
    assert len(logdet) == 2


@pytest.mark.usefixtures("ray_local")
def test_chromium_real_digits_run(tmp_path):
    run_dir = _driver_run(tmp_path / "run", REAL_DIGITS)
    found = _render_check(run_dir)
    assert found["image_grids"] == 2 * 2  # 2 chains x 2 generations


def test_report_command_on_a_folder_that_is_not_a_run_directory(tmp_path):
    from conftest import run_cli

    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a run directory" in lines[0]
    assert not (tmp_path / "report.html").exists()


def test_report_command_prints_the_table(gauss_run):
    from conftest import run_cli

    proc = run_cli("report", str(gauss_run))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("w2") and "trace_ratio" in proc.stdout
    rec = _metric_lines(gauss_run / "metrics.jsonl")[0]  # one recorded value, found in its chain's row
    rows = [line.split() for line in lines if line.split()[:1] == [rec["chain"]]]
    assert f"{rec['w2']:.4g}" == rows[0][rec["gen"]]
    assert proc.stdout.strip().endswith(str(gauss_run / "report.html"))

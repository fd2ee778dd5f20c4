"""What the report exports and how it reads: summary.csv and the LaTeX table against metrics.jsonl
(recomputed here with numpy), paper figures as PDF/SVG/PNG, generations not every seed finished,
markers, the heatmap's generation slider, the class-drift heatmap, the family's config keys, and
the report command's bad inputs."""
from __future__ import annotations

import csv
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from mad.report import group_chains, load_run, metric_lines, names, write_report
from mad.report.figures import heatmap_figure, heatmaps, metrics_figure
from report_fixtures import write_digits_run, write_gaussian_run

GENS, SEEDS = 5, 3


@pytest.fixture(scope="module")
def gauss_run(tmp_path_factory) -> Path:
    return write_gaussian_run(tmp_path_factory.mktemp("gauss") / "run", generations=GENS, seeds=SEEDS, partial=False)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return write_digits_run(tmp_path_factory.mktemp("digits") / "run", generations=3)


def _copy(run_dir: Path, to: Path) -> Path:
    """A copy of a fixture run without the outputs another test may have written into it."""
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("report.html", "summary.csv", "figures", "table.tex"))
    return to


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _by_group(run_dir: Path, metric: str) -> dict[tuple[str, float, int], list[float]]:
    out: dict[tuple[str, float, int], list[float]] = {}
    for r in _records(run_dir):
        out.setdefault((r["loop"], r["bias"], r["gen"]), []).append(r[metric])
    return out


def _group_key(label: str) -> tuple[str, float]:
    loop, lam = label.split(" · ")[:2]
    return loop, float(lam.removeprefix("λ="))


# ----------------------------------------------------------------------------- summary.csv
def test_summary_csv_equals_numpy_on_the_records(gauss_run):
    write_report(gauss_run)
    with open(gauss_run / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["group", "generation", "metric", "mean", "std", "median", "n_seeds"]
    metrics = ("w2", "trace_ratio", "mean_shift")
    assert len(rows) == 4 * GENS * len(metrics)  # 2 loop kinds x 2 lambdas, every generation, every metric
    for metric in metrics:
        expected = _by_group(gauss_run, metric)
        mine = [r for r in rows if r["metric"] == metric]
        assert {(*_group_key(r["group"]), int(r["generation"])) for r in mine} == set(expected)
        for r in mine:
            vals = np.array(expected[(*_group_key(r["group"]), int(r["generation"]))])
            assert int(r["n_seeds"]) == len(vals) == SEEDS
            assert float(r["mean"]) == pytest.approx(vals.mean(), rel=1e-12)
            assert float(r["std"]) == pytest.approx(vals.std(ddof=1), rel=1e-12)
            assert float(r["median"]) == pytest.approx(np.median(vals), rel=1e-12)


# ----------------------------------------------------------------------------- LaTeX
def test_latex_table_of_chosen_generations(gauss_run, tmp_path):
    run_dir = _copy(gauss_run, tmp_path / "run")
    proc = run_cli("report", str(run_dir), "--latex", "--gens", "1,5")
    assert proc.returncode == 0, proc.stderr
    tex = (run_dir / "table.tex").read_text()
    assert tex in proc.stdout
    lines = tex.splitlines()
    # the headline metrics this run records (no FID here): w2 and trace_ratio, two generations each
    assert lines[0] == r"\begin{tabular}{l" + "cc" * 2 + "}" and lines[-1] == r"\end{tabular}"
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert lines.count(rule) == 1
    assert r"\multicolumn{2}{c}{W2 to the real distribution}" in lines[2]
    assert lines[4] == "group & " + " & ".join(["gen 1", "gen 5"] * 2) + r" \\"
    body = lines[lines.index(r"\midrule") + 1:lines.index(r"\bottomrule")]
    assert len(body) == 4
    columns = [(m, g) for m in ("w2", "trace_ratio") for g in (1, 5)]
    groups = {m: _by_group(gauss_run, m) for m in ("w2", "trace_ratio")}
    for row in body:
        label, *cells = row.removesuffix(r" \\").split(" & ")
        loop, lam = label.split(", ")
        key = (loop.replace(r"\_", "_"), float(lam.removeprefix(r"$\lambda$=")))
        assert len(cells) == len(columns)
        for cell, (m, g) in zip(cells, columns):
            vals = np.array(groups[m][(*key, g)])
            assert cell == f"${vals.mean():.3g} \\pm {vals.std(ddof=1):.2g}$"


def test_latex_rejects_an_unfinished_generation(gauss_run, tmp_path):
    run_dir = _copy(gauss_run, tmp_path / "run")
    for args in (["--gens", "1,9"], ["--gens", "one"]):
        proc = run_cli("report", str(run_dir), "--latex", *args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and "--gens" in proc.stderr
    assert not (run_dir / "table.tex").exists() and not (run_dir / "report.html").exists()


# ----------------------------------------------------------------------------- paper figures
def test_paper_figures_as_pdf_svg_and_png(digits_run, tmp_path):
    run_dir = _copy(digits_run, tmp_path / "run")
    out = run_dir / "figures"
    proc = run_cli("report", str(run_dir), "--figures", "pdf")
    assert proc.returncode == 0, proc.stderr
    expected = {"paper", "samples"} | {f"metric_{m}" for m in ("fid", "precision", "recall", "class_entropy",
                                                                "class_kl", "wall_s")}
    assert {p.stem for p in out.glob("*.pdf")} == expected
    for p in out.glob("*.pdf"):
        data = p.read_bytes()
        assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 5_000
        assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1

    proc = run_cli("report", str(run_dir), "--figures=svg")
    assert proc.returncode == 0, proc.stderr
    root = ET.parse(out / "paper.svg").getroot()
    assert root.tag.endswith("svg")
    # three panels of 3 x 2.4 inches plus the legend row: 9 x 3 inches = 648 x 216 pt
    assert float(root.get("width").removesuffix("pt")) == pytest.approx(648, abs=1)
    assert float(root.get("height").removesuffix("pt")) == pytest.approx(216, abs=1)
    svg = (out / "paper.svg").read_text()
    for text in ("FID (LeNet features)", "precision (LeNet features)", "recall (LeNet features)", "generation"):
        assert text in svg  # matplotlib writes the labels as text comments next to their glyphs

    proc = run_cli("report", str(run_dir), "--figures", "png", "--dpi", "150")
    assert proc.returncode == 0, proc.stderr
    img = Image.open(out / "paper.png")
    assert img.size == (9 * 150, 3 * 150)
    assert img.info["dpi"] == pytest.approx((150, 150), abs=0.1)
    pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10
    # the sample figure: a row of real data, then one row per group (2), 3 generation columns
    samples = np.asarray(Image.open(out / "samples.png").convert("L"), dtype=float)
    assert samples.shape[0] > samples.shape[1] * 0.5 and samples.std() > 20


def test_figures_bad_inputs(digits_run, tmp_path):
    run_dir = _copy(digits_run, tmp_path / "run")
    for args in (["--figures", "jpg"], ["--dpi", "5"], ["--dpi", "high"], ["--figures"], ["--colour"]):
        proc = run_cli("report", str(run_dir), *args)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = run_cli("report", str(run_dir), str(run_dir))
    assert proc.returncode == 2 and "--out" in proc.stderr
    assert not (run_dir / "figures").exists() and not (run_dir / "report.html").exists()


# ----------------------------------------------------------------------------- legibility
def test_generation_not_finished_by_every_seed_is_marked(gauss_run, tmp_path):
    run_dir = _copy(gauss_run, tmp_path / "run")
    run = load_run(run_dir)
    first = group_chains(run)[0].chains[0]
    (run_dir / first.name / f"gen_{GENS:03d}" / "DONE").unlink()  # one seed is still on its last generation
    run = load_run(run_dir)
    group = group_chains(run)[0]
    (mean,) = [ln for ln in metric_lines(run, [group], "w2") if ln.role == "mean"]
    assert mean.extra["partial"] == [GENS - 1] and mean.extra["counts"][-1] == SEEDS - 1
    others = [ln for ln in metric_lines(run, group_chains(run)[1:], "w2") if ln.role == "mean"]
    assert all(ln.extra["partial"] == [] for ln in others)
    page = write_report(run_dir).read_text()
    assert "Hollow markers" in page
    fig = metrics_figure([("w2", metric_lines(run, [group], "w2"))])
    (trace,) = [t for t in fig["data"] if t.get("name") == mean.label]
    assert trace["marker"]["symbol"][-1] == "circle-open" and set(trace["marker"]["symbol"][:-1]) == {"circle"}
    assert trace["customdata"][-1] == f"{SEEDS - 1} of {SEEDS} seeds (not finished by every seed)"


def test_markers_only_for_few_generations(tmp_path):
    def modes(gens):
        run = load_run(write_gaussian_run(tmp_path / f"g{gens}", generations=gens, seeds=1,
                                          kinds=("fully_synthetic",), biases=(1.0,), partial=False))
        fig = metrics_figure([("w2", metric_lines(run, group_chains(run), "w2"))])
        return {t["mode"] for t in fig["data"]}

    assert modes(4) == {"lines+markers"}
    assert modes(25) == {"lines"}


def test_heatmap_slider_and_reversed_scale(gauss_run):
    run = load_run(gauss_run)
    (hm,) = heatmaps(run)
    fig = heatmap_figure(hm)
    trace, slider = fig["data"][0], fig["layout"]["sliders"][0]
    assert trace["reversescale"] is True  # w2: lower is better, so low values are bright
    assert [s["label"] for s in slider["steps"]] == ["last"] + [str(g) for g in range(1, GENS + 1)]
    w2 = _by_group(gauss_run, "w2")
    step = slider["steps"][3]  # generation 3
    z = step["args"][0]["z"][0]
    for i, lam in enumerate([1.0, 0.7]):
        for j, kind in enumerate(["fully_synthetic", "fresh_data"]):
            assert z[i][j] == pytest.approx(np.mean(w2[(kind, lam, 3)]))
    # the metric menu swaps the slider too, and the direction of the scale
    buttons = {b["label"]: b for b in fig["layout"]["updatemenus"][0]["buttons"]}
    assert buttons["trace_ratio"]["args"][0]["reversescale"] == [False]
    assert buttons["trace_ratio"]["args"][1]["sliders"][0]["steps"][3]["args"][0]["z"][0][0][0] == pytest.approx(
        np.mean(_by_group(gauss_run, "trace_ratio")[("fully_synthetic", 1.0, 3)]))


def test_class_drift_heatmap_equals_the_records(digits_run):
    from mad.report.figures import class_histograms

    run = load_run(digits_run)
    hists = class_histograms(run)
    assert len(hists) == 2
    recs = {(r["chain"], r["gen"]): r for r in _records(digits_run)}
    for chain, gens, z in hists:
        assert gens == [1, 2, 3] and len(z) == 10
        for k in range(10):
            assert [z[k][i] for i in range(3)] == [recs[(chain.name, g)]["class_hist"][k] for g in gens]
    # lambda 0.5 keeps fewer classes each generation: the heatmap shows classes fading out
    low = next(z for c, _, z in hists if c.bias == 0.5)
    assert sum(row[-1] > 0 for row in low) < sum(row[0] > 0 for row in low)


def test_config_shows_the_family_keys_only(gauss_run):
    page = write_report(gauss_run).read_text()
    family_view = page.split("config (family keys only)</summary><pre>")[1].split("</pre>")[0]
    as_written = page.split("config.yaml as written</summary><pre>")[1].split("</pre>")[0]
    for key in ("gmm:", "kde:", "mlp_diffusion:", "gan:", "channels:", "label_dropout:"):
        assert key in as_written and key not in family_view, key
    assert "estimator: unbiased" in family_view and "family: gaussian" in family_view


def test_metric_titles_name_the_feature_space():
    assert names.title("fid", names.feature_space({"metrics": {"features": "classifier"}})) == "FID (LeNet features)"
    assert names.title("fid", names.feature_space({"metrics": {"features": "inception"}})) == "FID (Inception features)"
    assert names.title("fid") == "FID" and names.title("something_new") == "something_new"
    assert names.lower_is_better("fid") and names.lower_is_better("recall") is False
    assert names.lower_is_better("trace_ratio") is None
    assert names.log_by_default("trace_ratio") and names.log_by_default("w2") and not names.log_by_default("fid")


def test_log_axes_tick_at_one_two_five(gauss_run):
    fig = metrics_figure([(m, metric_lines(load_run(gauss_run), group_chains(load_run(gauss_run)), m))
                          for m in ("w2", "mean_shift")])
    log_axis, linear_axis = fig["layout"]["yaxis"], fig["layout"]["yaxis2"]
    assert log_axis["type"] == "log" and log_axis["tickmode"] == "array"
    mantissas = {round(t / 10 ** np.floor(np.log10(t)), 6) for t in log_axis["tickvals"]}
    assert mantissas <= {1.0, 2.0, 5.0} and log_axis["ticktext"] == [f"{t:g}" for t in log_axis["tickvals"]]
    # a linear panel keeps plotly's automatic ticks (the 1-2-5 ones wait for a switch to log)
    assert "type" not in linear_axis and linear_axis["tickmode"] == "auto"


def test_a_run_that_never_scores_samples_still_gets_its_report(tmp_path):
    """metrics.every=0: the last generation draws no samples at all; the report must not choke on that."""
    from conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli("configs/experiment/gaussian.yaml", "sweep={}", "loop.generations=3", "metrics.every=0",
                   "report.tensorboard=false", f"out={out}", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report not written" not in proc.stderr + proc.stdout
    assert (out / "report.html").stat().st_size > 10_000

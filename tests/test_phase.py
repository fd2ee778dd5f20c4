"""The fresh-data phase diagram (MAD section 5): phase.csv against n_e computed by hand from the records."""
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import run_cli
from mad.phase import COLUMNS, effective_n, phase_table

SMALL = """out: {out}
data: {{name: gaussian, dim: 2, n_reference: 100}}
model: {{family: gaussian}}
loop: {{kind: fresh_data, generations: 7, n_init: 10}}
metrics: {{features: raw, n_eval: 20}}
report: {{html: false, tensorboard: false, progress: false, phase: {{last_k: 4}}}}
sweep:
  loop.n_real: [10, 40]
  loop.n_synth: [0, 10, 80]
  sample.bias: [1.0, 0.6]
  loop.n_init: [10, 200]
  seed: [0, 1, 2]
"""
K = 4


def _by_hand(records):
    """Everything phase.csv claims, from the raw records with numpy and nothing from mad.phase."""
    chains = {}
    for r in records:
        chains.setdefault(r["chain"], {})[r["gen"]] = r
    cells = {}
    for gens in chains.values():
        g2 = gens[2]
        series = np.array([gens[g]["w2"] for g in sorted(gens) if g >= 2])
        key = (g2["n_real"], g2["n_synth"], g2["bias"])
        cells.setdefault(key, {}).setdefault(g2["seed"], {})[gens[1]["n_real"]] = series[-K:].mean()
    out = {}
    for key, seeds in cells.items():
        per_seed = np.array([np.mean(list(v.values())) for v in seeds.values()])
        per_init = {}
        for n_init in {i for v in seeds.values() for i in v}:
            vals = np.array([v[n_init] for v in seeds.values()])
            per_init[n_init] = (vals.mean(), vals.std(ddof=1) / math.sqrt(len(vals)))
        # paired per seed (chains of one seed share their noise): n_init 200 against n_init 10
        diffs = np.array([v[200] - v[10] for v in seeds.values()])
        paired = (diffs.mean(), diffs.std(ddof=1) / math.sqrt(len(diffs)))
        out[key] = {"limit": per_seed.mean(), "se": per_seed.std(ddof=1) / math.sqrt(len(per_seed)),
                    "per_init": per_init, "paired_init": paired,
                    "per_seed": {s: np.mean(list(v.values())) for s, v in seeds.items()}}
    for (n_real, n_synth, bias), cell in out.items():
        n0, n1 = 10, 40
        d0, d1 = out[(n0, 0, bias)]["limit"], out[(n1, 0, bias)]["limit"]
        assert d0 > d1, "the real-only curve should fall with n in this sweep"
        # linear in (log n, log d) through the two real-only points, extended beyond them
        t = (math.log(cell["limit"]) - math.log(d0)) / (math.log(d1) - math.log(d0))
        cell["n_e"] = math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
        cell["extrapolated"] = not (d1 <= cell["limit"] <= d0)
        # admissible: the limit minus the real-only limit at the same n_real, per seed, is <= 0 on average
        base = out[(n_real, 0, bias)]["per_seed"]
        diffs = np.array([cell["per_seed"][s] - base[s] for s in base])
        cell["paired_diff"] = (diffs.mean(), diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return out


def test_phase_csv_matches_n_e_computed_by_hand(tmp_path):
    cfg = tmp_path / "phase.yaml"
    out = tmp_path / "run"
    cfg.write_text(SMALL.format(out=out))
    proc = run_cli(str(cfg), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 72 * 7
    hand = _by_hand(records)
    with open(out / "phase.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0])[:len(COLUMNS)] == COLUMNS
    assert len(rows) == len(hand) == 12
    thresholds = {}
    for row in rows:
        key = (int(row["n_real"]), int(row["n_synth"]), float(row["bias"]))
        h = hand[key]
        assert float(row["limit"]) == pytest.approx(h["limit"], rel=1e-5)
        assert float(row["limit_se"]) == pytest.approx(h["se"], rel=1e-5)
        assert float(row["n_e"]) == pytest.approx(h["n_e"], rel=1e-4)
        assert float(row["n_e_over_n_real"]) == pytest.approx(h["n_e"] / key[0], rel=1e-4)
        diff, diff_se = h["paired_diff"]
        assert float(row["paired_diff"] or 0.0) == pytest.approx(diff, rel=1e-5, abs=1e-12)
        if key[1]:
            assert float(row["paired_diff_se"]) == pytest.approx(diff_se, rel=1e-5)
        assert row["admissible"] == ("true" if diff <= 1e-12 else "false")
        assert row["extrapolated"] == ("true" if h["extrapolated"] else "false")
        if row["admissible"] == "true":
            thresholds[key[0], key[2]] = max(thresholds.get((key[0], key[2]), -1), key[1])
        # n_init is not part of the cell; the limits per n_init are there to check it does not matter
        mean, se = h["paired_init"]
        assert row["n_init"] == "10;200"
        t95 = scipy_stats.t.ppf(0.975, 2)  # three seeds, paired
        assert row["n_init_agree"] == ("true" if abs(mean) <= t95 * se else "false")
        assert float(row["n_init_max_diff"]) == pytest.approx(mean, rel=1e-5)
        assert float(row["n_init_diff_se"]) == pytest.approx(se, rel=1e-5)
        # the slope test says what drift it could have seen: (t_0.975 + t_0.80) se, df = seeds - 1
        detect = (scipy_stats.t.ppf(0.975, 2) + scipy_stats.t.ppf(0.8, 2)) * float(row["slope_se"])
        assert float(row["slope_detectable"]) == pytest.approx(detect, rel=2e-3)
    for row in rows:  # the threshold column: the largest admissible n_synth of the (n_real, lambda)
        expect = thresholds.get((int(row["n_real"]), float(row["bias"])))
        assert row["threshold_n_synth"] == ("" if expect is None else str(expect))
    # the n_synth = 0 cells are the baseline itself: n_e = n_real exactly
    assert all(float(r["n_e_over_n_real"]) == pytest.approx(1.0) for r in rows if r["n_synth"] == "0")
    with open(out / "phase_n_init.csv") as f:
        per_init = list(csv.DictReader(f))
    assert len(per_init) == 24
    for row in per_init:
        h = hand[(int(row["n_real"]), int(row["n_synth"]), float(row["bias"]))]["per_init"][int(row["n_init"])]
        assert float(row["limit"]) == pytest.approx(h[0], rel=1e-5)

    # `python run.py report` rewrites the same table and draws it
    text = (out / "phase.csv").read_text()
    (out / "phase.csv").unlink()
    from mad.cli import main

    assert main(["report", str(out)]) == 0
    assert (out / "phase.csv").read_text() == text
    page = (out / "report.html").read_text()
    assert "id='phase'" in page and "admissible boundary" in page


def _records(cells):
    """Hand-made records: {(n_real, n_synth, seed): [w2 at generations 1..G]}."""
    out = []
    for (n_real, n_synth, seed), series in cells.items():
        for gen, v in enumerate(series, start=1):
            out.append({"chain": f"{n_real}-{n_synth}-{seed}", "loop": "fresh_data", "seed": seed, "bias": 0.9,
                        "gen": gen, "n_real": 100 if gen == 1 else n_real, "n_synth": 0 if gen == 1 else n_synth,
                        "w2": v})
    return out


def test_extrapolation_monotone_baseline_and_convergence_flags():
    g = 12
    flat = lambda v: [9.0] + [v] * (g - 1)  # noqa: E731
    rng = np.random.default_rng(0)
    cells = {}
    for seed in range(3):
        cells[(10, 0, seed)] = flat(2.0)
        cells[(20, 0, seed)] = flat(1.0)
        cells[(40, 0, seed)] = flat(1.2)  # a noisy real-only curve that rises: pooled with n = 20
        cells[(20, 5, seed)] = [9.0] + list(1.5 + 0.01 * rng.standard_normal(g - 1))
        cells[(20, 50, seed)] = [9.0] + [4.0] * (g - 1)  # worse than the smallest real-only n
        cells[(20, 99, seed)] = [9.0] + list(np.linspace(1.0, 3.0, g - 1) + 0.01 * seed)  # still climbing
    table = phase_table(_records(cells), last_k=5)
    by = {(c.n_real, c.n_synth): c for c in table.cells}
    base = table.baselines[0.9]
    assert base.d_monotone == [2.0, 1.1, 1.1]
    # 1.5 lies between d(10) = 2 and the pooled d = 1.1 at the geometric mean of 20 and 40
    n_mid = math.sqrt(20 * 40)
    t = (math.log(1.5) - math.log(2.0)) / (math.log(1.1) - math.log(2.0))
    assert by[(20, 5)].n_e == pytest.approx(math.exp(math.log(10) + t * (math.log(n_mid) - math.log(10))), rel=1e-3)
    assert not by[(20, 5)].extrapolated and by[(20, 5)].converged
    assert by[(20, 50)].extrapolated and by[(20, 50)].n_e < 10 and not by[(20, 50)].admissible
    assert not by[(20, 99)].converged
    assert effective_n(1.1, [20, 40], [1.1, 1.1]) == (pytest.approx(n_mid), False)
    # pooling put d(20) at 1.1 > its own limit 1.0: the n_synth = 0 cell is admissible, nothing else is
    assert by[(20, 0)].extrapolated and by[(20, 0)].admissible
    assert table.thresholds()[(20, 0.9)] == 0


def test_no_phase_table_without_real_only_chains():
    recs = _records({(20, 5, 0): [3.0, 2.0, 2.0]})
    assert phase_table(recs) is None
    assert phase_table([dict(r, loop="fully_synthetic") for r in _records({(20, 0, 0): [3.0, 2.0]})]) is None


AUTO = """out: {out}
data: {{name: gaussian, dim: 2, n_reference: 100}}
model: {{family: gaussian}}
loop: {{kind: fresh_data, generations: 7, n_init: 10}}
metrics: {{features: raw, n_eval: 20}}
report: {{html: false, tensorboard: false, progress: false, phase: {{last_k: 4, baseline: auto}}}}
sweep:
  loop.n_real: [10, 40]
  loop.n_synth: [0, 10, 80]
  sample.bias: [1.0, 0.6]
  seed: [0, 1, 2]
"""


def test_auto_baseline_measures_d_real_up_to_n_real_plus_n_synth(tmp_path):
    """report.phase.baseline=auto adds real-only chains from the smallest n_real (10) to the largest
    n_real + n_synth (120), per seed and lambda, so n_e is read off measured points: a cell is
    extrapolated only where its limit lies above d_real at the smallest n, and every n_e matches a
    hand computation (isotonic regression from scikit-learn, numpy's interpolation)."""
    from sklearn.isotonic import IsotonicRegression

    cfg = tmp_path / "auto.yaml"
    out = tmp_path / "run"
    cfg.write_text(AUTO.format(out=out))
    dry = run_cli(str(cfg), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "phase baseline (report.phase.baseline=auto)" in dry.stdout
    proc = run_cli(str(cfg), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    chains = {}
    for r in records:
        chains.setdefault(r["chain"], {})[r["gen"]] = r
    per = {}  # (n_real, n_synth, bias) -> {seed: last-K mean}
    for gens in chains.values():
        g2 = gens[2]
        series = np.array([gens[g]["w2"] for g in sorted(gens) if g >= 2])
        per.setdefault((g2["n_real"], g2["n_synth"], g2["bias"]), {})[g2["seed"]] = series[-K:].mean()
    base_n = sorted({n for (n, s, b) in per if s == 0 and b == 1.0})
    assert base_n[0] == 10 and base_n[-1] == 120 and len(base_n) >= 8  # the grid spans n_real .. n_real + n_synth
    assert all(b / a <= 1.5 for a, b in zip(base_n, base_n[1:]))  # no gap wider than a half-doubling
    assert all(len(per[(n, 0, 0.6)]) == 3 for n in base_n)  # per seed and per lambda
    with open(out / "phase.csv") as f:
        rows = {(int(r["n_real"]), int(r["n_synth"]), float(r["bias"])): r for r in csv.DictReader(f)}
    for bias in (1.0, 0.6):
        d = np.array([np.mean(list(per[(n, 0, bias)].values())) for n in base_n])
        d_mono = IsotonicRegression(increasing=False).fit_transform(np.log(base_n), d)
        # collapse flat stretches to one point at their geometric-mean n, as documented
        pts = {}
        for n, v in zip(base_n, d_mono):
            pts.setdefault(round(v, 12), []).append(math.log(n))
        xs = np.array([np.mean(v) for v in pts.values()])
        ys = np.log(np.array(list(pts.keys())))
        order = np.argsort(ys)
        for n_real in (10, 40):
            for n_synth in (10, 80):
                row = rows[(n_real, n_synth, bias)]
                limit = np.mean(list(per[(n_real, n_synth, bias)].values()))
                inside = ys.min() <= math.log(limit) <= ys.max()
                assert row["extrapolated"] == ("false" if inside else "true")
                if inside:
                    n_e = math.exp(np.interp(math.log(limit), ys[order], xs[order]))
                    assert float(row["n_e"]) == pytest.approx(n_e, rel=1e-4)
                diffs = [per[(n_real, n_synth, bias)][s] - per[(n_real, 0, bias)][s] for s in (0, 1, 2)]
                assert row["admissible"] == ("true" if np.mean(diffs) <= 1e-12 else "false")
    # the only extrapolation left is below the smallest n, where the cell is inadmissible anyway
    assert all(r["admissible"] == "false" for r in rows.values() if r["extrapolated"] == "true")


def test_phase_summary_counts_and_short_cells():
    """The summary line counts extrapolated and non-converged cells, and warns about cells shorter than
    5 / (1 - rho) generations (rho = lambda n_synth / (n_real + n_synth))."""
    from mad.phase import baseline_grid, mixing_generations, summary

    assert mixing_generations(25, 400, 1.0) == pytest.approx(5 / (1 - 400 / 425))
    assert mixing_generations(100, 0, 0.8) == pytest.approx(5.0)
    assert mixing_generations(0, 10, 1.0) == float("inf")
    grid = baseline_grid([50, 100, 200], [50, 450, 600])
    assert grid[0] == 50 and grid[-1] == 600 and {100, 200} <= set(grid)
    cells = {}
    for n_synth in (0, 400):
        for seed in (0, 1):
            cells[(25, n_synth, seed)] = [1.0] + [0.5 + 0.01 * seed + 0.001 * n_synth] * 8
    table = phase_table(_records(cells), metric="w2", last_k=4)
    line = summary(table)
    assert "2 cell(s) on w2" in line and "1 shorter than 5 / (1 - rho)" in line
    short = [c for c in table.cells if c.short]
    assert [(c.n_real, c.n_synth) for c in short] == [(25, 400)] and short[0].generations == 9

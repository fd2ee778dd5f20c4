"""Tables of a run: the console table of headline metrics per chain and generation, summary.csv
(each group of seeds, generation and metric: mean, std, median, number of seeds) and a booktabs
LaTeX table of chosen generations.
"""
from __future__ import annotations

import csv
import io
from typing import Iterable, Optional, Sequence

import numpy as np

from mad.report.names import COMPANION_KEYS, METRIC_HINTS, PAPER_METRICS, TABLE_METRICS, feature_space, title
from mad.report.read import MAX_PREVIEW_GENS, RunData, _finite, select_gens


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
    col_w = max(8, *(len(f"gen {g}") for g in gens))
    features = feature_space(run.config)
    gap = "  "  # columns never touch, however wide a value
    blocks = []
    for m in shown:
        full = title(m, features)
        head = full if full.startswith(m) else f"{m}: {full}"  # the key first: grep finds it
        hint = METRIC_HINTS.get(m)
        lines = [f"{head} ({hint})" if hint else head,
                 f"  {'chain':<{name_w}}" + "".join(f"{gap}{'gen ' + str(g):>{col_w}}" for g in gens)]
        for c in run.chains:
            cells = (run.value(c.name, g, m) for g in gens)
            lines.append(f"  {c.name:<{name_w}}" + "".join(f"{gap}{'-' if v is None else f'{v:.4g}':>{col_w}}"
                                                           for v in cells))
        blocks.append("\n".join(lines))
    if len(gens) < len(done):
        blocks.append(f"({len(gens)} of {len(done)} generations shown; all of them in metrics.jsonl)")
    return "\n\n".join(blocks)


SUMMARY_CSV = "summary.csv"
SUMMARY_COLUMNS = ("group", "generation", "metric", "mean", "std", "median", "n_seeds")


def summary_rows(run: RunData, metrics: Optional[Iterable[str]] = None) -> list[dict]:
    """Per group of seeds, finished generation and metric: mean, std (ddof 1; empty from one seed),
    median and the number of seeds that have a value there. Groups as the report draws them."""
    from mad.report.figures import group_chains

    shown = list(run.metrics if metrics is None else metrics)
    if metrics is None:  # the companions (the FID floor, KID's spread) are no panels, but rows here
        shown += [k for k in COMPANION_KEYS if any(_finite(r.get(k)) is not None for r in run.rows.values())]
    rows = []
    for g in group_chains(run):
        gens = sorted({gen for c in g.chains for gen in c.done})
        for gen in gens:
            for m in shown:
                vals = [v for c in g.chains if (v := run.value(c.name, gen, m)) is not None]
                if not vals:
                    continue
                arr = np.asarray(vals, dtype=float)
                rows.append({"group": g.label, "generation": gen, "metric": m, "mean": float(arr.mean()),
                             "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
                             "median": float(np.median(arr)), "n_seeds": len(arr)})
    return rows


def summary_csv(run: RunData) -> str:
    """summary.csv as text: :func:`summary_rows`, numbers with full precision (repr)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for r in summary_rows(run):
        writer.writerow(["" if r[k] is None else repr(r[k]) if isinstance(r[k], float) else r[k]
                         for k in SUMMARY_COLUMNS])
    return buf.getvalue()


_TEX = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
        "λ": r"$\lambda$", "Σ": r"$\Sigma$", "μ": r"$\mu$", "‖": r"$\|$", "−": "-", "·": ",", "∈": r"$\in$"}


def tex(text: str) -> str:
    """Plain text (a group label, a metric title) as LaTeX."""
    return "".join(_TEX.get(ch, ch) for ch in text.replace(" · ", ", "))


def _pm(mean: float, std: Optional[float]) -> str:
    return f"${mean:.3g}$" if std is None else f"${mean:.3g} \\pm {std:.2g}$"


def latex_table(run: RunData, gens: Optional[Sequence[int]] = None, metrics: Optional[Sequence[str]] = None) -> str:
    """A booktabs table: a row per group of seeds, per metric a block of columns, one per generation
    in ``gens`` (default: first, middle, last finished), cells mean ± std over seeds (:func:`summary_rows`).
    Needs ``\\usepackage{booktabs}``. A cell a group has no value for is "--"."""
    done = sorted({g for c in run.chains for g in c.done})
    if not done:
        raise ValueError("no finished generations yet")
    gens = list(select_gens(done, 3) if gens is None else gens)
    missing = [g for g in gens if g not in done]
    if missing:
        raise ValueError(f"--gens: generation {missing[0]} is not finished by any chain (finished: 1-{done[-1]})"
                         if done == list(range(1, done[-1] + 1)) else
                         f"--gens: generation {missing[0]} is not finished by any chain")
    if metrics is None:
        metrics = [m for m in PAPER_METRICS if m in run.metrics] or [m for m in TABLE_METRICS if m in run.metrics] \
            or run.metrics[:3]
    features = feature_space(run.config)
    cells = {(r["group"], r["generation"], r["metric"]): r for r in summary_rows(run, metrics)}
    groups = list(dict.fromkeys(r[0] for r in cells))
    n = len(gens)
    lines = [r"\begin{tabular}{l" + ("c" * n) * len(metrics) + "}", r"\toprule",
             " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{tex(title(m, features))}}}" for m in metrics) + r" \\",
             " ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(metrics))),
             "group & " + " & ".join(f"gen {g}" for _ in metrics for g in gens) + r" \\", r"\midrule"]
    for label in groups:
        row = []
        for m in metrics:
            for g in gens:
                r = cells.get((label, g, m))
                row.append("--" if r is None else _pm(r["mean"], r["std"]))
        lines.append(tex(label) + " & " + " & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"

"""Tables of a run: the console table of headline metrics per chain and generation, summary.csv
(each group of seeds, generation and metric: mean, std, median, number of seeds) and a booktabs
LaTeX table of chosen generations.
"""
from __future__ import annotations

from typing import Iterable, Optional

from mad.report.names import METRIC_HINTS, TABLE_METRICS
from mad.report.read import MAX_PREVIEW_GENS, RunData, _dotted_get, select_gens


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

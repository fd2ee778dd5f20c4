"""Medians over seeds of recorded metrics per cell, as a markdown table (the README's "Beyond MAD" tables).

    python benchmarks/medians.py RUN_DIR METRIC[,METRIC...] GEN[,GEN...] KEY[,KEY...]

e.g. ``python benchmarks/medians.py runs/accumulate trace_ratio,w2 1,10,25,50 loop.kind,loop.synth_source``:
one row per value of the swept KEYs (the cell), one column per metric and generation.
"""
from __future__ import annotations

import collections
import json
import sys

import numpy as np


def table(run: str, metrics: list[str], gens: list[int], keys: list[str]) -> str:
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    cells = collections.defaultdict(list)
    for r in rows:
        cells[tuple(str(r.get(k)) for k in keys)].append(r)
    head = keys + [f"{m} gen {g}" for m in metrics for g in gens]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for cell, rs in sorted(cells.items()):
        vals = []
        for m in metrics:
            for g in gens:
                v = [r[m] for r in rs if r["gen"] == g and r.get(m) is not None]
                vals.append(f"{np.median(v):.3g}" if v else "-")
        out.append("| " + " | ".join(cell) + " | " + " | ".join(vals) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    print(table(sys.argv[1], sys.argv[2].split(","), [int(g) for g in sys.argv[3].split(",")], sys.argv[4].split(",")))

"""The report of a run directory: ``write_report(run_dir)`` -> ``run_dir/report.html``.

One module a layer:
  names    metric names, titles with the feature space, which way is good, log axes by default;
  read     config.yaml, chains.json, metrics.jsonl and the DONE markers into tidy records;
  figures  plotly figure dicts (no plotly import: the driver rewrites the page after every generation);
  tables   the console table, summary.csv and the LaTeX table;
  paper    matplotlib figures for papers (PDF, SVG, PNG);
  html     the self-contained page, and the comparison of several runs.
Importing this package imports neither torch, ray, plotly nor matplotlib.
"""
from mad.report.figures import (Group, group_chains, metric_lines, theory_logdet_ratio, theory_trace_ratio,
                                expected_logdet_ratio, logdet_refit_term)
from mad.report.html import render_html, write_comparison, write_report, write_run_report
from mad.report.names import METRIC_HINTS, NON_METRIC_KEYS, TABLE_METRICS
from mad.report.read import BANDS, ChainInfo, LiveRun, ReportError, RunData, compare_runs, load_run, run_band
from mad.report.tables import latex_table, summary_csv, summary_rows, text_table

__all__ = [
    "BANDS", "ChainInfo", "Group", "LiveRun", "METRIC_HINTS", "NON_METRIC_KEYS", "ReportError", "RunData",
    "TABLE_METRICS", "expected_logdet_ratio", "group_chains", "load_run", "logdet_refit_term", "metric_lines",
    "render_html", "run_band", "text_table", "theory_logdet_ratio", "theory_trace_ratio", "write_report",
    "write_run_report", "write_comparison", "compare_runs", "latex_table", "summary_csv", "summary_rows",
]

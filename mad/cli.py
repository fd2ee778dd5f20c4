"""Command line: ``python run.py [CONFIG.yaml] [key=value ...] [--dry-run]`` and ``python run.py report RUN_DIR``.

Parses, loads and validates the config, prints it, hands over to the driver. No science here.
Bad input exits with status 2 and one line on stderr, before anything is written.
"""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: python run.py [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--quiet]
       python run.py report RUN_DIR [--png] [--band mean_std|median_iqr]

Runs the self-consuming loop described by CONFIG (default configs/default.yaml).
  --dry-run   print the resolved config and the chains of the sweep; write nothing
  --quiet     no progress output
"""


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv and argv[0] == "report":
        return _report(argv[1:])
    return _run(argv)


def _run(argv: List[str]) -> int:
    from mad.config import ConfigError, load_config, to_yaml
    from mad.plan import plan_chains

    flags = {a for a in argv if a.startswith("--")}
    unknown = flags - {"--dry-run", "--quiet"}
    if unknown:
        return _fail(f"unknown option {sorted(unknown)[0]} (see python run.py --help)")
    args = [a for a in argv if not a.startswith("--")]
    path = None
    if args and "=" not in args[0]:
        path = args.pop(0)
    bad = [a for a in args if "=" not in a]
    if bad:
        return _fail(f"{bad[0]}: expected dotted.key=value (only one CONFIG file may be given)")
    try:
        cfg = load_config(path, args)
    except ConfigError as err:
        return _fail(str(err))
    chains = plan_chains(cfg)
    quiet = "--quiet" in flags or not cfg.report.progress
    if "--dry-run" in flags:
        print(to_yaml(cfg), end="")
        print(f"# {len(chains)} chain(s), {cfg.loop.generations} generation(s) each; nothing written (--dry-run)")
        for c in chains:
            print(f"#   {c.name}")
        return 0
    if not quiet:
        print(to_yaml(cfg), end="")
    from mad.artifacts import ResumeError
    from mad.data import DataUnavailableError
    from mad.driver import run

    try:
        run(cfg, quiet=quiet)
    except (ResumeError, DataUnavailableError) as err:
        return _fail(str(err))
    return 0


def _report(argv: List[str]) -> int:
    usage = "usage: python run.py report RUN_DIR [--png] [--band mean_std|median_iqr]"
    png = "--png" in argv
    rest = [a for a in argv if a != "--png"]
    band = None  # --band X or --band=X: what groups of seeds draw, overriding the run's report.band
    for i, a in enumerate(rest):
        if a == "--band" or a.startswith("--band="):
            band = a.partition("=")[2] if "=" in a else (rest[i + 1] if i + 1 < len(rest) else "")
            rest = rest[:i] + rest[i + (1 if "=" in a else 2):]
            break
    if len(rest) != 1 or rest[0].startswith("--"):
        return _fail(usage)
    from mad.report import BANDS, ReportError, load_run, run_band, text_table, write_run_report

    if band is not None and band not in BANDS:
        return _fail(f"--band: unknown band {band!r}; choose one of {', '.join(BANDS)}")
    try:
        run = load_run(rest[0])
        band = run_band(run, band)
    except ReportError as err:
        return _fail(str(err))
    path = write_run_report(run, png=png, band=band)
    print(text_table(run))
    print(f"\ndashboard: {path}")
    return 0

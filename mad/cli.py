"""Command line: ``python run.py [CONFIG.yaml] [key=value ...] [--dry-run]``, ``python run.py report RUN_DIR``
and ``python run.py verify RUN_DIR``.

Parses, loads and validates the config, prints it, hands over to the driver. No science here.
Bad input exits with status 2 and one line on stderr, before anything is written.
"""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: python run.py [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--quiet] [--no-repair]
       python run.py report RUN_DIR [--png] [--band mean_std|median_iqr]
       python run.py verify RUN_DIR

Runs the self-consuming loop described by CONFIG (default configs/default.yaml).
  --dry-run    print the resolved config and the chains of the sweep; write nothing
  --quiet      no progress output
  --no-repair  on resume, stop (exit 2) when a finished generation's files fail their checksums,
               instead of recomputing that generation and the chain's later ones
Exit status: 0 done, 1 a chain failed (diverged; see its FAILED.json), 2 bad input or unusable run directory.
verify: checks every finished generation's files against their checksums; exit 0 clean, 1 problems found.
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
    if argv and argv[0] == "verify":
        return _verify(argv[1:])
    return _run(argv)


def _run(argv: List[str]) -> int:
    from mad.config import ConfigError, load_config, to_yaml
    from mad.plan import describe_compute, estimate_compute, plan_chains

    flags = {a for a in argv if a.startswith("--")}
    unknown = flags - {"--dry-run", "--quiet", "--no-repair"}
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
        gens = sorted({c.cfg.loop.generations for c in chains})
        each = str(gens[0]) if len(gens) == 1 else f"{gens[0]}-{gens[-1]}"
        print(f"# {len(chains)} chain(s), {each} generation(s) each; nothing written (--dry-run)")
        print(f"# compute: {describe_compute(estimate_compute(chains))}")
        for c in chains:
            print(f"#   {c.name}")
        return 0
    if not quiet:
        print(to_yaml(cfg), end="")
    from mad.artifacts import ResumeError
    from mad.data import DataUnavailableError
    from mad.driver import Driver

    driver = Driver(cfg, quiet=quiet, repair="--no-repair" not in flags)
    try:
        driver.run()
    except (ResumeError, DataUnavailableError, ConfigError) as err:  # ConfigError: a folder pool too small
        return _fail(str(err))
    return 1 if driver.failed else 0


def _verify(argv: List[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("--"):
        return _fail("usage: python run.py verify RUN_DIR")
    from mad.artifacts import ResumeError, verify_run

    try:
        problems, summary = verify_run(argv[0])
    except ResumeError as err:
        return _fail(str(err))
    for line in problems:
        print(line)
    print(summary)
    return 1 if problems else 0


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
    from mad.phase import write_phase

    phase = _dotted(run.config, "report.phase") or {}
    phase_path = write_phase(run.run_dir, run.rows.values(), phase.get("metric", "auto"),
                             int(phase.get("last_k", 10)), phase.get("baseline_bias"))
    if phase_path is not None:
        print(f"phase diagram: {phase_path}")
    print(f"\ndashboard: {path}")
    return 0


def _dotted(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d

"""Command line: ``python run.py [CONFIG.yaml] [key=value ...] [--dry-run]``, ``python run.py report RUN_DIR``
and ``python run.py verify RUN_DIR``; the console script ``mad`` (:func:`console`) says the same as
``mad run [CONFIG.yaml] [key=value ...]``, ``mad report RUN_DIR`` and ``mad verify RUN_DIR``.

Parses, loads and validates the config, prints it, hands over to the driver. No science here.

Exit status and stderr:

* 2: bad input (config, ``out``, the data): one line on stderr, before anything is written;
* 1: a failure during the run (a task's exception, a full disk, a permission error): one line
  naming what failed (a task's full traceback is written under ``RUN_DIR/errors/``);
* 130 (SIGINT, Ctrl-C) or 143 (SIGTERM): interrupted, one line; rerunning the same command resumes.
  A signal after the run's last line (``mad: done ...``) is ignored: the run has finished, the exit
  status is its own and nothing more is printed (see :func:`program`).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, List, NoReturn, Optional

INTERRUPTED = "interrupted; rerun the same command to resume"
TERMINATED = "terminated (SIGTERM); rerun the same command to resume"
SIGNAL_EXIT = {signal.SIGINT: (130, INTERRUPTED), signal.SIGTERM: (143, TERMINATED)}
EXIT_GRACE_S = 1.0  # after a signal, the process ends this soon even if the interrupt is swallowed

USAGE = """usage: python run.py [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--quiet] [--no-repair]
       python run.py report RUN_DIR [RUN_DIR ...] [--out DIR] [--band mean_std|median_iqr]
                            [--figures pdf|svg|png] [--dpi N] [--latex] [--gens 1,5,10]
       python run.py verify RUN_DIR

Runs the self-consuming loop described by CONFIG (default configs/default.yaml).
  --dry-run    print the resolved config and the chains of the sweep; write nothing
  --quiet      no progress output; only where the run directory and its report are, at the end
  --no-repair  on resume, stop (exit 2) when a finished generation's files fail their checksums,
               instead of recomputing that generation and the chain's later ones
Exit status: 0 done, 1 a chain failed (diverged; see its FAILED.json), 2 bad input or unusable run directory,
  130 interrupted (Ctrl-C), 143 terminated (SIGTERM); rerun the same command to resume.
report: writes RUN_DIR/report.html and RUN_DIR/summary.csv and prints the per-generation table;
  --figures F  paper figures (the FID/precision/recall panels, one per metric, samples) under figures/
  --dpi N      their resolution (default 200; --png is --figures png)
  --latex      a booktabs table of generations --gens (default: first, middle, last), mean ± std
  several RUN_DIRs with --out DIR: one page overlaying the runs, each run a group
verify: checks every finished generation's files against their checksums; exit 0 clean, 1 problems found.
"""


MAD_USAGE = """usage: mad run [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--quiet] [--no-repair]
       mad report RUN_DIR [RUN_DIR ...] [--out DIR] [--band ...] [--figures ...] [--latex] [--gens ...]
       mad verify RUN_DIR
       mad --version

Simulate self-consuming generative loops (the same as python run.py in a source checkout).
commands:
  run     run the loop described by CONFIG (default configs/default.yaml); resumes a stopped run
  report  write RUN_DIR/report.html and summary.csv (and paper figures, a LaTeX table) from a run
  verify  check a run directory's files against their checksums
`mad COMMAND --help` says more about each.
"""

RUN_USAGE = """usage: {prog} [CONFIG.yaml] [dotted.key=value ...] [--dry-run] [--quiet] [--no-repair]

Runs the self-consuming loop described by CONFIG (default configs/default.yaml), with dotted.key=value
overrides (sweep.KEY=[a,b] sweeps a key); rerunning the same command resumes a stopped run.
  --dry-run    print the resolved config and the chains of the sweep; write nothing
  --quiet      no progress output; only where the run directory and its report are, at the end
  --no-repair  on resume, stop (exit 2) when a finished generation's files fail their checksums,
               instead of recomputing that generation and the chain's later ones
Exit status: 0 done, 1 a chain failed (diverged; see its FAILED.json), 2 bad input or unusable run
directory, 130 interrupted.
"""

REPORT_HELP = """usage: {prog} RUN_DIR [RUN_DIR ...] [--out DIR] [--band mean_std|median_iqr]
       [--figures pdf|svg|png] [--dpi N] [--latex] [--gens 1,5,10]

Writes RUN_DIR/report.html and RUN_DIR/summary.csv and prints the per-generation table.
  --band B     what groups of seeds draw (default: the run's report.band)
  --figures F  paper figures (the FID/precision/recall panels, one per metric, samples) under figures/
  --dpi N      their resolution (default 200; --png is --figures png)
  --latex      a booktabs table of generations --gens (default: first, middle, last), mean ± std
  several RUN_DIRs with --out DIR: one page overlaying the runs, each run a group
"""

VERIFY_HELP = """usage: {prog} RUN_DIR

Checks every finished generation's files against their checksums (reads only).
Exit status: 0 clean, 1 problems found (one line each), 2 not a run directory.
"""

_HELP = ("-h", "--help")


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def console_script() -> NoReturn:
    """The ``mad`` console script's entry point: :func:`console` under :func:`program`'s signal handling."""
    program(console)


def console(argv: Optional[List[str]] = None) -> int:
    """The ``mad`` command: ``mad run|report|verify ...``, each with ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        return _fail("mad needs a command: run, report or verify (mad --help)")
    command, rest = argv[0], argv[1:]
    if command in _HELP or command == "help":
        print(MAD_USAGE, end="")
        return 0
    if command == "--version":
        from mad import __version__

        print(f"mad {__version__}")
        return 0
    if command == "run":
        if rest and rest[0] in ("report", "verify"):  # a config file named like a command needs a path
            return _fail(f"mad run {rest[0]}: did you mean mad {rest[0]}? (a CONFIG file named "
                         f"{rest[0]} is ./{rest[0]})")
        return main(rest, prog="mad run")
    if command in ("report", "verify"):
        return main(argv, prog="mad")
    return _fail(f"unknown command {command!r}: choose run, report or verify (mad --help)")


def program(entry: Any = None) -> NoReturn:
    """``run.py`` (and, with ``entry=console``, the ``mad`` command): :func:`main` with SIGINT and
    SIGTERM stopping the run in every path.

    Both are handled from the start, also when the parent ignored SIGINT (``cmd &`` in a script does
    that, and a ``kill -INT`` would then go unheard): the handler raises KeyboardInterrupt, so the
    driver's ``finally`` blocks run, and arms a timer that ends the process with the same one line
    should the interrupt be swallowed on its way (a ``__del__``, a callback inside Ray). Once the
    driver has printed its last line (``Driver.complete``), both signals are ignored: the run has
    finished and the process ends at once with its own status, without a traceback. SIGKILL is
    mad.reaper's business.
    """
    for signum in SIGNAL_EXIT:
        signal.signal(signum, _on_signal)
    try:
        rc = (entry or main)()
    finally:
        _ignore_signals()
    # Finished: end now, with the run's status. Ray's shutdown (1-2 s) would put SIGTERM's default
    # action back (a kill then, exit 143 without a line), and the interpreter's teardown of torch
    # only costs time; mad.reaper ends a local Ray's processes and removes its folder once this
    # process is gone, as it does however the driver ends. A joined cluster outlives this process, so
    # there the driver disconnects first: its job's task events reach the cluster's state API (and
    # dashboard) instead of showing finished tasks as never finished.
    remote = sys.modules.get("mad.remote")
    if remote is not None:
        try:
            remote.disconnect_from_cluster()
        except Exception:  # a cluster that went away: nothing left to tell it
            pass
        _ignore_signals()  # ray.shutdown restores the handlers it saw at ray.init
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    logging.shutdown()
    os._exit(rc)


_received: Optional[int] = None  # the signal that is stopping this process
_driver: Any = None  # the run's Driver, once made: its ``complete`` says the run has finished
_exiting = threading.Lock()


def _ignore_signals() -> None:
    for signum in SIGNAL_EXIT:
        signal.signal(signum, signal.SIG_IGN)


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    if getattr(_driver, "complete", False):
        _ignore_signals()
        return
    if _received is not None:  # a second signal, or the first one's interrupt went astray
        _exit_now(flush=False)
    _received = signum
    timer = threading.Timer(EXIT_GRACE_S, _exit_now, kwargs={"flush": False})
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def _exit_now(flush: bool = True) -> None:
    """The one line and the exit status of the signal received (SIGINT when the interrupt came
    another way); once per process, whichever thread comes first."""
    _exiting.acquire()  # never released: the holder ends the process
    code, msg = SIGNAL_EXIT.get(_received if _received is not None else signal.SIGINT)
    if flush:  # the main thread; the timer's thread must not wait on a buffer the main thread holds
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os.write(2, f"error: {msg}\n".encode())
    os._exit(code)


def main(argv: Optional[List[str]] = None, prog: str = "python run.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE if prog == "python run.py" else RUN_USAGE.format(prog=prog))
        return 0
    if argv and argv[0] in ("report", "verify") and any(a in _HELP for a in argv[1:]):
        sub = "python run.py" if prog == "python run.py" else "mad"
        print((REPORT_HELP if argv[0] == "report" else VERIFY_HELP).format(prog=f"{sub} {argv[0]}"), end="")
        return 0
    if argv and argv[0] not in ("report", "verify") and any(a in _HELP for a in argv):
        print(RUN_USAGE.format(prog=prog), end="")
        return 0
    try:
        if argv and argv[0] == "report":
            return _report(argv[1:])
        if argv and argv[0] == "verify":
            return _verify(argv[1:])
        return _run(argv)
    except KeyboardInterrupt:
        return _interrupted()


def _interrupted() -> int:
    """Ctrl-C or SIGTERM: one line, exit 130 or 143. Every write of the run directory is atomic, so
    stopping here is as safe as a kill; ``os._exit`` skips Ray's shutdown hooks, whose messages
    about the interrupted tasks would bury the line (the private Ray dies with this process, see
    mad.reaper)."""
    _exit_now()
    return 130  # not reached


def _os_error_line(err: OSError) -> str:
    # a failed rename names its destination second: the file the user knows
    where = err.filename2 or err.filename
    where = where if where is not None else "(unknown path)"
    what = err.strerror or errno.errorcode.get(err.errno or 0, str(err))
    return f"{where}: {what}"


def check_out(out: str) -> Optional[str]:
    """Why ``out`` cannot hold a run directory (one line), or None. Checked before anything is
    written: an existing file, a folder that cannot be created or written to. A probe directory is
    created and removed at once in the nearest existing parent, because ``os.access`` says yes to
    root on a read-only bind and on /proc."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        return f"out: {path} exists and is not a directory"
    probe_in = path
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        return f"out: cannot create {path}: {probe_in} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mad-probe-", dir=probe_in))
    except OSError as err:
        return f"out: cannot write {path}: {probe_in}: {err.strerror or err}"
    return None


def check_temp_dir(temp_dir: Optional[str]) -> Optional[str]:
    """Why ``ray.temp_dir`` cannot hold a local Ray's files (one line), or None; checked with
    ``out`` before anything is written (a file there made Ray fail after the run directory was)."""
    if temp_dir is None:
        return None
    path = Path(temp_dir)
    if path.exists() and not path.is_dir():
        return f"ray.temp_dir: {path} exists and is not a directory"
    probe_in = path
    while not probe_in.exists() and probe_in.parent != probe_in:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        return f"ray.temp_dir: cannot create {path}: {probe_in} is not a directory"
    if not os.access(probe_in, os.W_OK | os.X_OK):
        return f"ray.temp_dir: cannot write {path}: {probe_in} is not writable"
    return None


def _ray_train_missing() -> Optional[str]:
    """Why data-parallel training (Ray Train) cannot run here, or None: ``ray[train]`` is an extra
    (``pip install -e ".[ddp]"``), and ``ray.train`` refuses to import without these packages."""
    import importlib.util

    for name in ("fsspec", "pandas", "pyarrow", "requests"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # in sys.modules as None: not importable
            found = False
        if not found:
            return (f"train.num_workers: data-parallel training needs Ray Train, and {name} is not installed: "
                    'pip install -e ".[ddp]" (or pip install "ray[train]")')
    return None


def _run(argv: List[str]) -> int:
    from mad.config import ConfigError, config_notes, load_config, to_yaml
    from mad.plan import describe_compute, estimate_compute, plan_chains, plan_notes

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
    if any(c.cfg.train.num_workers > 1 for c in chains):
        problem = _ray_train_missing()
        if problem:
            return _fail(problem)
    quiet = "--quiet" in flags or not cfg.report.progress
    if "--dry-run" in flags:
        print(to_yaml(cfg), end="")
        for note in config_notes(cfg):
            print(f"# {note}")
        gens = sorted({c.cfg.loop.generations for c in chains})
        each = str(gens[0]) if len(gens) == 1 else f"{gens[0]}-{gens[-1]}"
        print(f"# {len(chains)} chain(s), {each} generation(s) each; nothing written (--dry-run)")
        print(f"# compute: {describe_compute(estimate_compute(chains))}")
        for note in plan_notes(cfg, chains):
            print(f"# {note}")
        for c in chains:
            print(f"#   {c.name}")
        return 0
    local_ray = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    problem = check_out(cfg.out) or (check_temp_dir(cfg.ray.temp_dir) if local_ray else None)
    if problem:
        return _fail(problem)
    if not quiet:
        print(to_yaml(cfg), end="")
        for note in config_notes(cfg):
            print(f"# {note}")
    from mad.artifacts import ResumeError
    from mad.data import DataError, DataUnavailableError
    from mad.driver import Driver, StageFailed

    global _driver
    driver = _driver = Driver(cfg, quiet=quiet, repair="--no-repair" not in flags)
    try:
        driver.run()
    except (ResumeError, DataUnavailableError, DataError, ConfigError) as err:  # ConfigError: a folder pool too small
        return _fail(str(err))
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # ENOSPC, EACCES, EROFS while writing: name the path
        print(f"error: {_os_error_line(err)}", file=sys.stderr)
        return 1
    return 1 if driver.failed else 0


def _verify(argv: List[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("--"):
        return _fail("usage: python run.py verify RUN_DIR")
    from mad.artifacts import ResumeError, verify_run
    from mad.config import path_problem

    problem = path_problem(argv[0])
    if problem:
        shown = argv[0] if len(argv[0]) <= 80 else argv[0][:77] + "..."
        return _fail(f"{shown}: {problem}")
    try:
        problems, summary = verify_run(argv[0])
    except ResumeError as err:
        return _fail(str(err))
    for line in problems:
        print(line)
    print(summary)
    return 1 if problems else 0


REPORT_USAGE = ("usage: python run.py report RUN_DIR [RUN_DIR ...] [--out DIR] [--band mean_std|median_iqr] "
                "[--figures pdf|svg|png] [--dpi N] [--png] [--latex] [--gens 1,5,10]")
_REPORT_VALUED = ("--band", "--figures", "--dpi", "--gens", "--out")


def _report_args(argv: List[str]) -> tuple[list[str], dict[str, str], set[str]]:
    """(run directories, --key value options, bare flags); --key=value works too. ValueError: one line."""
    dirs, opts, flags = [], {}, set()
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, value = a.partition("=")
        if key in _REPORT_VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{key} needs a value")
                i += 1
                value = argv[i]
            opts[key] = value
        elif a in ("--png", "--latex"):
            flags.add(a)
        elif a.startswith("--"):
            raise ValueError(f"unknown option {a}")
        else:
            dirs.append(a)
        i += 1
    return dirs, opts, flags


def _report(argv: List[str]) -> int:
    try:
        dirs, opts, flags = _report_args(argv)
    except ValueError as err:
        return _fail(f"{err} ({REPORT_USAGE})")
    if not dirs:
        return _fail(REPORT_USAGE)
    from mad.report import BANDS, ReportError, load_run, run_band, text_table, write_run_report
    from mad.report.paper import FORMATS

    band = opts.get("--band")  # what groups of seeds draw, overriding the run's report.band
    if band is not None and band not in BANDS:
        return _fail(f"--band: unknown band {band!r}; choose one of {', '.join(BANDS)}")
    fmt = opts.get("--figures", "png" if "--png" in flags else None)  # --png: the old spelling of --figures png
    if fmt is not None and fmt not in FORMATS:
        return _fail(f"--figures: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        dpi = int(opts.get("--dpi", "200"))
        gens = [int(g) for g in opts["--gens"].split(",")] if "--gens" in opts else None
    except ValueError:
        return _fail("--dpi takes a whole number and --gens a comma-separated list of generations, e.g. --gens 1,5,10")
    if not 20 <= dpi <= 2400:
        return _fail(f"--dpi: {dpi} is outside 20-2400")
    if len(dirs) > 1 and "--out" not in opts:
        return _fail("comparing runs needs --out DIR, the folder for the comparison page")
    from mad.artifacts import ResumeError, RunDir, config_problems

    try:
        for d in dirs:  # the report writes into the run directory: never through a link planted there
            RunDir(d).refuse_links()
    except ResumeError as err:
        return _fail(str(err))
    try:
        runs = [load_run(d) for d in dirs]
        for r in runs:
            _repair_metrics_copy(r)
            for line in config_problems(r.run_dir):  # the page shows config.yaml: say when it was edited
                print(f"mad: {line}", file=sys.stderr)
        band = run_band(runs[0], band)
        if len(runs) > 1:
            from mad.report.read import compare_runs

            run, comparison = compare_runs(runs)
        else:
            run, comparison = runs[0], None
        latex = None
        if "--latex" in flags:
            from mad.report.tables import latex_table

            latex = latex_table(run, gens)
    except ReportError as err:
        return _fail(str(err))
    except ValueError as err:  # --gens naming an unfinished generation
        return _fail(str(err))
    except OSError as err:
        return _fail(_os_error_line(err))
    out = Path(opts["--out"]) if "--out" in opts else run.run_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = write_run_report(run, band=band, out=out, comparison=comparison)
        figures = []
        if fmt is not None:
            from mad.report.paper import write_figures

            figures = write_figures(run, out / "figures", fmt, dpi, band=band)
        if latex is not None:
            from mad.artifacts import write_text

            write_text(out / "table.tex", latex)
    except OSError as err:  # a read-only run directory, a full disk
        return _fail(f"cannot write the report: {_os_error_line(err)}")
    print(text_table(run))
    if comparison is None:
        from mad.phase import write_phase

        phase = _dotted(run.config, "report.phase") or {}
        written = write_phase(run.run_dir, run.rows.values(), phase.get("metric", "auto"),
                              int(phase.get("last_k", 10)), phase.get("baseline_bias"))
        if written is not None:
            print(f"phase diagram: {written[0]} ({written[1]})")
    if latex is not None:
        print("\n" + latex + f"(LaTeX table, needs \\usepackage{{booktabs}}: {out / 'table.tex'})")
    if figures:
        print(f"\nfigures ({fmt}, {dpi} dpi): {len(figures)} in {out / 'figures'}")
    print(f"summary: {out / 'summary.csv'}")
    print(f"\ndashboard: {path}")
    return 0


def _repair_metrics_copy(run) -> None:
    """A metrics.jsonl that disagrees with the records (which the report uses): one line, and it is
    rebuilt from them unless a driver is writing the run (its resume rebuilds it)."""
    if run.metrics_note is None:
        return
    from mad.artifacts import RunDir

    rows = [run.rows[k] for k in sorted(run.rows)]
    try:
        rebuilt = RunDir(run.run_dir).rewrite_metrics_if_idle(rows)
    except OSError as err:
        print(f"mad: {run.metrics_note}; not rebuilt ({_os_error_line(err)})", file=sys.stderr)
        return
    print(f"mad: {run.metrics_note}; " + ("rebuilt it from them" if rebuilt else
                                          "not rebuilt now: a driver holds the run (its resume rebuilds it)"),
          file=sys.stderr)


def _dotted(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d

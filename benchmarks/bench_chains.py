"""Throughput of K independent chains run concurrently against the same chains run one after another.

    python benchmarks/bench_chains.py [--family gaussian diffusion] [--chains 2] [--repeats 2]

* concurrent: one Driver run whose sweep holds the K chains (one per loop kind), default resources
  (1 CPU per task), so on this 2-core machine Ray runs two tasks at once;
* sequential: K Driver runs of one chain each, every task asking for 2 CPUs, so each task has the whole
  machine to itself (torch's thread count follows the CPUs Ray assigns, see mad/remote.py).

One local Ray session serves every run, and each family is run once untimed first (worker processes
started, torch and diffusers imported, the metrics' classifier trained and cached), so start-up costs
are excluded from both sides; only ``Driver.run()`` is timed. The two sides alternate within each repeat
so a change in the load of a shared machine hits both (the 1-minute load average is printed with each
measurement). Their metrics are compared: bit for bit for the Gaussian family; for diffusion only the
counts must match, as float sums in torch depend on its thread count (1 vs 2 here), so the largest metric
difference is printed instead. Prints seconds per side and the ratio sequential / concurrent (> 1:
concurrency wins).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mad import remote
from mad.config import RayConfig, load_config
from mad.driver import TIMING_FIELDS, Driver

KINDS = ["fully_synthetic", "fresh_data", "synthetic_augmentation"]
# Dashboards off: this measures running chains, not rewriting report.html / TensorBoard files.
COMMON = ["report.progress=false", "report.html=false", "report.tensorboard=false", "seed=0"]
EXACT = {"gaussian": True, "diffusion": False}  # are metrics bitwise independent of the thread count?
FAMILIES = {
    # Tasks take milliseconds: the driver's own per-generation cost decides.
    "gaussian": ["data.name=gaussian", "data.dim=10", "data.n_reference=1000", "model.family=gaussian",
                 "metrics.features=raw", "metrics.n_eval=500", "loop.n_init=100", "loop.generations=20"],
    # Tasks take seconds (a small UNet on 8x8 digits): torch's use of the cores decides.
    "diffusion": ["data.name=digits", "model.family=diffusion", "metrics.features=classifier",
                  "model.channels=[32,64]", "train.steps=200", "train.batch_size=64", "sample.steps=20",
                  "loop.n_init=500", "metrics.n_eval=300", "loop.generations=2"],
}
WHOLE_MACHINE = ["resources.train_cpus=2", "resources.sample_cpus=2", "resources.eval_cpus=2"]


def time_run(overrides: list[str], out: Path) -> tuple[float, list[dict]]:
    """Seconds of one Driver run, and its metrics records without timing fields or chain names."""
    cfg = load_config(None, [*overrides, f"out={out}"])
    t0 = time.perf_counter()
    Driver(cfg, quiet=True).run()
    seconds = time.perf_counter() - t0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        # a sweep adds its keys ("loop.kind") and names chains after them; a single-chain run does neither
        for k in [k for k in r if k in (*TIMING_FIELDS, "chain") or "." in k]:
            r.pop(k)
    return seconds, recs


def run_concurrent(base: list[str], kinds: list[str], tmp: Path) -> tuple[float, list[dict]]:
    return time_run([*base, "sweep={}", f"sweep.loop.kind=[{','.join(kinds)}]"], tmp)


def run_sequential(base: list[str], kinds: list[str], tmp: Path) -> tuple[float, list[dict]]:
    total, recs = 0.0, []
    for kind in kinds:
        seconds, r = time_run([*base, *WHOLE_MACHINE, "sweep={}", f"loop.kind={kind}"], tmp / kind)
        total += seconds
        recs += r
    return total, recs


def sort_key(r: dict) -> tuple:
    return r["loop"], r["gen"]


def compare_records(family: str, conc: list[dict], seq: list[dict]) -> None:
    """Exit if the two sides disagree beyond what the thread count explains."""
    if EXACT[family]:
        if conc != seq:
            sys.exit(f"[{family}] concurrent and sequential runs gave different metrics")
        print(f"[{family}] metrics of both sides identical, bit for bit (timing aside)", flush=True)
        return
    worst = (0.0, "", None, None)  # relative difference, field, concurrent value, sequential value
    for a, b in zip(conc, seq, strict=True):
        if a.keys() != b.keys():
            sys.exit(f"[{family}] records differ in their fields: {sorted(a.keys() ^ b.keys())}")
        for k in a:
            if isinstance(a[k], float) and isinstance(b[k], float):
                rel = abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1e-12)
                if rel > worst[0]:
                    worst = (rel, f"{k} (loop {a['loop']}, gen {a['gen']})", a[k], b[k])
            elif a[k] != b[k]:
                sys.exit(f"[{family}] records differ in {k}: {a[k]!r} vs {b[k]!r}")
    rel, where, x, y = worst
    print(f"[{family}] counts equal; largest metric difference between the sides (thread count): "
          + (f"{rel:.2%} in {where}: {x:.6g} vs {y:.6g}" if where else "none"), flush=True)


def bench_family(family: str, k: int, repeats: int, cache_dir: str, extra: list[str]) -> dict:
    base = [*COMMON, *FAMILIES[family], f"metrics.cache_dir={cache_dir}", *extra]
    kinds = KINDS[:k]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        warm = [b for b in base if not b.startswith("loop.generations=")] + ["loop.generations=1"]
        run_concurrent(warm, kinds, Path(tmp) / "warm")
        print(f"[{family}] warm-up run (untimed in the ratio): {time.perf_counter() - t0:.1f}s", flush=True)
        conc, seq = [], []
        for i in range(repeats):
            # alternate which side goes first, so a drift in machine load does not favour one side
            order = ("conc", "seq") if i % 2 == 0 else ("seq", "conc")
            for side in order:
                where = Path(tmp) / f"{side}{i}"
                if side == "conc":
                    s, rc = run_concurrent(base, kinds, where)
                    conc.append(s)
                else:
                    s, rs = run_sequential(base, kinds, where)
                    seq.append(s)
                print(f"[{family}] repeat {i + 1}/{repeats} {side:>4}: {s:7.1f}s   (load average {os.getloadavg()[0]:.1f})",
                      flush=True)
            compare_records(family, sorted(rc, key=sort_key), sorted(rs, key=sort_key))
    c, s = statistics.median(conc), statistics.median(seq)
    return {"family": family, "chains": k, "conc": c, "seq": s, "ratio": s / c, "conc_all": conc, "seq_all": seq}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", nargs="+", choices=sorted(FAMILIES), default=["gaussian", "diffusion"])
    ap.add_argument("--chains", type=int, default=2, choices=range(1, len(KINDS) + 1), help="K, one per loop kind")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="extra dotted.key=value overrides for every run")
    args = ap.parse_args()

    # Keep idle Ray workers alive: by default Ray keeps about num_cpus of them, so switching between
    # 2-CPU and 1-CPU tasks would kill one and start another (seconds of imports) inside a timed run.
    os.environ.setdefault("RAY_num_workers_soft_limit", "4")
    with tempfile.TemporaryDirectory(prefix="mad-bench-") as tmp:
        t0 = time.perf_counter()
        remote.init(RayConfig(num_cpus=2, temp_dir=f"{tmp}/ray"), quiet=True)
        print(f"Ray start-up (once, excluded): {time.perf_counter() - t0:.1f}s", flush=True)
        try:
            rows = [bench_family(f, args.chains, args.repeats, f"{tmp}/cache", args.overrides) for f in args.family]
        finally:
            remote.shutdown()
    print()
    print("| family | chains | concurrent (s) | sequential, 2 CPUs per task (s) | ratio seq/conc |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['family']} | {r['chains']} | {r['conc']:.1f} | {r['seq']:.1f} | {r['ratio']:.2f}x |")
    print("(medians over repeats; records compared as printed above)")


if __name__ == "__main__":
    main()

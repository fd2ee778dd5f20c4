"""Thousands of cheap chains: ``run.py`` against a bare numpy loop of the same arithmetic, in the same run.

    python benchmarks/bench_blocks.py [--seeds 1000] [--gens 100] [--metric-seeds 100] [--metric-gens 20]

A 10-D Gaussian, fully synthetic loop, n = 100 per generation (MAD section 3.1):

1. closed-form metrics only (``metrics.every=0``): ``python run.py`` on SEEDS x GENS chain-generations,
   with the dashboards on (defaults) and off, against a bare in-process numpy loop over the same chains
   (draw, fit mean and covariance, sample N(mu, Sigma), closed-form trace ratio, mean shift and W2);
2. PRDC + FID on 500 samples every generation (``metrics.every=1``) on METRIC_SEEDS x METRIC_GENS,
   against the bare loop plus the same metric functions on the same 500 samples.

``run.py``'s fixed cost (Ray start-up, planning the sweep, loading) is measured as a run of the same
sweep with one generation each, and reported; the ratios are given with and without it. Every run
keeps no samples and only the last model (``artifacts.samples=none artifacts.keep_models=last``), the
knobs for big sweeps; ``--files`` also counts files and bytes per chain-generation for the defaults
and the knobs on a small sweep.
"""
from __future__ import annotations

import argparse
import os

# One BLAS/OpenMP thread, as in the Ray workers (which Ray starts with OMP_NUM_THREADS=1): on shared
# cores, spinning OpenMP threads make small matrix products many times slower.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mad import seeding  # noqa: E402
from mad.metrics import compute_knn_sq_radii, fid_to_reference, gaussian_w2, prdc, sqrt_psd  # noqa: E402

DIM, N, N_EVAL, N_REF, K = 10, 100, 500, 500, 5
BASE = ["data.name=gaussian", f"data.dim={DIM}", f"data.n_reference={N_REF}", "model.family=gaussian",
        "metrics.features=raw", f"metrics.n_eval={N_EVAL}", "loop.kind=fully_synthetic", f"loop.n_init={N}",
        f"loop.n_synth={N}",
        "artifacts.samples=none", "artifacts.keep_models=last", "report.progress=false", "sweep={}"]
DASH_OFF = ["report.html=false", "report.tensorboard=false"]


def run_py(out: Path, seeds: int, gens: int, extra: list[str]) -> float:
    """Seconds of ``python run.py`` as a user runs it (a fresh process, a fresh local Ray)."""
    if out.exists():
        shutil.rmtree(out)
    args = [*BASE, f"loop.generations={gens}", f"sweep.seed=[{','.join(map(str, range(seeds)))}]",
            f"out={out}", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "--quiet"], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def bare_loop(seeds: int, gens: int, with_metrics: bool) -> float:
    """The same science in one process: numpy only (and the same metric functions when asked)."""
    t0 = time.perf_counter()
    mean0, cov0 = np.zeros(DIM), np.eye(DIM)
    ref = np.random.default_rng(seeding.seed_sequence(0, seeding.REFERENCE)).standard_normal((N_REF, DIM))
    if with_metrics:
        mu_r, sig_r = ref.mean(0), np.cov(ref, rowvar=False)
        sig_r_sqrt = sqrt_psd(sig_r)
        radii = compute_knn_sq_radii(ref, K)
    for seed in range(seeds):
        x = np.random.default_rng(seeding.seed_sequence(seed, seeding.REAL, 0)).standard_normal((N, DIM))
        for gen in range(1, gens + 1):
            mean, cov = x.mean(0), np.cov(x, rowvar=False)
            n = max(N if gen < gens else 0, N_EVAL if with_metrics else 0)
            w, v = np.linalg.eigh(cov)
            factor = v * np.sqrt(np.clip(w, 0, None))
            rng = np.random.default_rng(seeding.seed_sequence(seed, gen, seeding.SAMPLE, 0))
            samples = mean + rng.standard_normal((n, DIM)) @ factor.T
            _ = (np.trace(cov) / np.trace(cov0), np.linalg.norm(mean - mean0), gaussian_w2(mean, cov, mean0, cov0))
            if with_metrics:
                fid_to_reference(mu_r, sig_r, sig_r_sqrt, samples[:N_EVAL])
                prdc(ref, samples[:N_EVAL], K, real_sq_radii=radii)
            x = samples[:N]
    return time.perf_counter() - t0


def count_files(out: Path) -> tuple[int, int]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--gens", type=int, default=100)
    ap.add_argument("--metric-seeds", type=int, default=100)
    ap.add_argument("--metric-gens", type=int, default=20)
    ap.add_argument("--files", action="store_true", help="also count files and bytes per chain-generation")
    ap.add_argument("--skip-metrics", action="store_true")
    ap.add_argument("--skip-closed-form", action="store_true")
    ap.add_argument("--bare-only", action="store_true",
                    help="only the bare loop (closed form; with --metrics-every-gen, PRDC + FID too): a command to "
                         "time as a whole process against `python run.py`, e.g. with /usr/bin/time or hyperfine")
    ap.add_argument("--metrics-every-gen", action="store_true", help="with --bare-only: the metric functions too")
    ap.add_argument("--print-args", action="store_true",
                    help="print the run.py arguments of the closed-form SEEDS x GENS sweep (dashboards off) and exit")
    args = ap.parse_args()
    if args.bare_only:
        import torch

        torch.set_num_threads(1)
        t = bare_loop(args.seeds, args.gens, with_metrics=args.metrics_every_gen)
        print(f"bare loop, {args.seeds} seeds x {args.gens} generations: {t:.2f} s")
        return
    if args.print_args:
        every = "metrics.every=1" if args.metrics_every_gen else "metrics.every=0"
        print(" ".join([*BASE, f"loop.generations={args.gens}",
                        f"sweep.seed=[{','.join(map(str, range(args.seeds)))}]", every, *DASH_OFF]))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_blocks_"))
    import torch  # the metrics use torch: one thread, as in a Ray worker with one CPU

    torch.set_num_threads(1)
    print(f"# load average at start: {os.getloadavg()[0]:.1f}")
    try:
        s, g = args.seeds, args.gens
        if not args.skip_closed_form:
            fixed = run_py(tmp / "fixed", s, 1, ["metrics.every=0", *DASH_OFF])
            bare = bare_loop(s, g, with_metrics=False)
            off = run_py(tmp / "off", s, g, ["metrics.every=0", *DASH_OFF])
            on = run_py(tmp / "on", s, g, ["metrics.every=0"])
            cg = s * g
            print(f"closed-form only, {s} seeds x {g} generations ({cg} chain-generations):")
            print(f"  bare numpy loop                     {bare:8.1f} s  ({1e3 * bare / cg:.3f} ms per chain-generation)")
            print(f"  run.py fixed cost (same sweep, 1 generation, dashboards off) {fixed:.1f} s")
            print(f"  run.py, dashboards off              {off:8.1f} s  ratio {off / bare:.2f}x; "
                  f"minus fixed cost {(off - fixed) / bare:.2f}x")
            print(f"  run.py, dashboards on (defaults)    {on:8.1f} s  ratio {on / bare:.2f}x; on/off {on / off:.2f}x")
            n, b = count_files(tmp / "off")
            print(f"  run directory (dashboards off): {n} files, {b / 1e6:.1f} MB; {n / cg:.3f} files and "
                  f"{b / cg / 1024:.2f} KiB per chain-generation")
        if not args.skip_metrics:
            s, g = args.metric_seeds, args.metric_gens
            fixed_m = run_py(tmp / "fixed_m", s, 1, ["metrics.every=0", *DASH_OFF])
            bare_m = bare_loop(s, g, with_metrics=True)
            run_m = run_py(tmp / "metrics", s, g, ["metrics.every=1", *DASH_OFF])
            print(f"PRDC + FID on {N_EVAL} samples every generation, {s} seeds x {g} generations:")
            print(f"  bare loop with metrics              {bare_m:8.1f} s")
            print(f"  run.py (dashboards off)             {run_m:8.1f} s  ratio {run_m / bare_m:.2f}x; "
                  f"minus fixed cost ({fixed_m:.1f} s) {(run_m - fixed_m) / bare_m:.2f}x")
        if args.files:
            s, g = 20, 10
            print(f"files per chain-generation, {s} seeds x {g} generations (dashboards off):")
            for label, extra in [("defaults", ["artifacts.samples=all", "artifacts.keep_models=all"]),
                                 ("samples=last keep_models=last", ["artifacts.samples=last"]),
                                 ("samples=none keep_models=last", [])]:
                out = tmp / "files"
                run_py(out, s, g, ["metrics.every=1", *DASH_OFF, *extra])
                n, b = count_files(out)
                print(f"  {label:32s} {n / (s * g):5.2f} files, {b / (s * g) / 1024:7.1f} KiB per chain-generation "
                      f"({n} files, {b / 1e6:.1f} MB in all)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

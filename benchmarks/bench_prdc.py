"""Precision/recall/density/coverage: our chunked torch implementation against the ``prdc`` package
(Naeem et al.'s reference code), side by side on the same features, then ours alone at a size the
reference cannot hold in memory, with the process' peak resident memory.

    python benchmarks/bench_prdc.py                         # 5,000 side by side; 60,000 ours alone
    python benchmarks/bench_prdc.py --quick                 # 1,000 side by side; 10,000 ours alone
    python benchmarks/bench_prdc.py --repeats 3 --n-big 0   # side by side only, median of 3

Features imitate Inception activations: 2048-d, non-negative (ReLU of a 32-d latent through a
random linear map, plus noise), float32. The "fake" set is a slightly shifted, narrower version.
Each large run is a fresh subprocess so ``ru_maxrss`` is its own peak (inputs included).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

LATENT = 32


def make_features(n: int, dim: int, seed: int, shift: float, scale: float) -> np.ndarray:
    """Inception-like float32 features, generated in blocks to keep peak memory at the output size."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(12345).standard_normal((LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 4096):
        m = min(4096, n - s)
        z = rng.standard_normal((m, LATENT), dtype=np.float32) * scale + shift
        np.maximum(z @ w + 0.3 * rng.standard_normal((m, dim), dtype=np.float32), 0, out=out[s : s + m])
    return out


def pair(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    return make_features(n, dim, 0, 0.0, 1.0), make_features(n, dim, 1, 0.1, 0.9)


def side_by_side(n: int, dim: int, k: int, repeats: int) -> dict:
    from prdc import compute_prdc

    from mad.metrics import prdc

    real, fake = pair(n, dim)
    prdc(real[:200], fake[:200], k)  # warm-up both: first-call allocations and thread pools
    with contextlib.redirect_stdout(io.StringIO()):
        compute_prdc(real[:200], fake[:200], k)
    # wall time and CPU time (all threads): on a machine shared with other jobs the CPU time is
    # the steadier measure of work; sklearn (inside prdc) runs 8 threads, torch its own pool.
    # Repeats alternate the two, so both see the same background load; medians are reported.
    t_o, c_o, t_r, c_r = [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ours = prdc(real, fake, k)
        t_o.append(time.perf_counter() - t0)
        c_o.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            ref = compute_prdc(real, fake, k)
        t_r.append(time.perf_counter() - t0)
        c_r.append(time.process_time() - c0)
    t_ours, c_ours, t_ref, c_ref = (statistics.median(v) for v in (t_o, c_o, t_r, c_r))
    diff = max(abs(ours[m] - float(ref[m])) for m in ours)
    return {"n": n, "dim": dim, "k": k, "ours_s": t_ours, "prdc_s": t_ref, "speedup": t_ref / t_ours,
            "ours_cpu_s": c_ours, "prdc_cpu_s": c_ref, "max_abs_diff": diff, "ours": ours,
            "prdc": {m: float(v) for m, v in ref.items()}}


def child_big(n: int, dim: int, k: int) -> None:
    """Runs in its own process: prints one JSON line with time and peak RSS."""
    from mad.metrics import prdc

    real, fake = pair(n, dim)
    rss_inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    t0, c0 = time.perf_counter(), time.process_time()
    out = prdc(real, fake, k)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"n": n, "dim": dim, "k": k, "seconds": elapsed, "cpu_seconds": cpu, "peak_rss_gib": peak,
                      "rss_after_inputs_gib": rss_inputs, "threads": torch.get_num_threads(), **out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (1,000 side by side, 10,000 alone)")
    ap.add_argument("--n-side", type=int, default=None, help="samples per set, side by side (default 5000)")
    ap.add_argument("--n-big", type=int, default=None, help="samples per set, ours alone (default 60000; 0 skips)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="alternating repeats of the side-by-side (medians)")
    ap.add_argument("--child-big", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_big is not None:
        child_big(args.child_big, args.dim, args.k)
        return
    n_side = args.n_side or (1000 if args.quick else 5000)
    n_big = args.n_big if args.n_big is not None else (10_000 if args.quick else 60_000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average at start "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")

    r = side_by_side(n_side, args.dim, args.k, args.repeats)
    print(f"\n## side by side: {r['n']} real x {r['n']} fake x {r['dim']} features, k={r['k']}, "
          f"median of {args.repeats} alternating run(s)")
    print(f"ours (mad.metrics.prdc): {r['ours_s']:8.2f} s wall {r['ours_cpu_s']:8.2f} s CPU  {r['ours']}")
    print(f"prdc 0.2 (reference)   : {r['prdc_s']:8.2f} s wall {r['prdc_cpu_s']:8.2f} s CPU  {r['prdc']}")
    print(f"speedup: {r['speedup']:.2f}x wall, {r['prdc_cpu_s'] / r['ours_cpu_s']:.2f}x CPU time   "
          f"max |difference| of the four values: {r['max_abs_diff']:.2e}")

    if n_big <= 0:
        print(f"load average at end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        return
    print(f"\n## ours alone: {n_big} real x {n_big} fake x {args.dim} features, k={args.k} (fresh process)")
    cmd = [sys.executable, __file__, "--child-big", str(n_big), "--dim", str(args.dim), "-k", str(args.k)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr)
        raise SystemExit(proc.returncode)
    b = json.loads(proc.stdout.strip().splitlines()[-1])
    inputs_gib = 2 * n_big * args.dim * 4 / 2**30
    print(f"time: {b['seconds']:.1f} s wall, {b['cpu_seconds']:.1f} s CPU   peak RSS: {b['peak_rss_gib']:.2f} GiB (process total; the two float32 "
          f"inputs alone are {inputs_gib:.2f} GiB; RSS after building them: {b['rss_after_inputs_gib']:.2f} GiB)")
    print(f"values: precision={b['precision']:.4f} recall={b['recall']:.4f} density={b['density']:.4f} "
          f"coverage={b['coverage']:.4f}")
    dense_gib = 3 * n_big * n_big * 4 / 2**30
    print(f"the prdc package would materialise three {n_big} x {n_big} float32 distance matrices: {dense_gib:.0f} GiB")
    print(f"peak under 4 GiB: {'yes' if b['peak_rss_gib'] < 4 else 'NO'}")
    print(f"load average at end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

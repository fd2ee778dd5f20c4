"""The driver's own cost: seconds per Gaussian generation through the driver (Ray tasks, run-directory
writes, metrics.jsonl) against the bare fit + sample + metric loop in one process, as a ratio.

    python benchmarks/bench_driver.py [--generations 30] [--repeats 3]

Ray is started once before timing (its start-up is reported separately: it is paid once per run).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from mad import remote, seeding
from mad.config import RayConfig, load_config
from mad.data import load_real
from mad.driver import Driver
from mad.metrics import evaluate, prepare_reference
from mad.models import gaussian

OVERRIDES = ["data.name=gaussian", "data.dim=10", "data.n_reference=1000", "model.family=gaussian",
             "metrics.features=raw", "metrics.n_eval=500", "loop.n_init=100", "loop.n_real=null", "loop.n_synth=null",
             "loop.kind=fully_synthetic",
             "report.progress=false", "report.html=false", "report.tensorboard=false", "sweep={}"]


def bare(cfg) -> float:
    """The same science with no driver: fit, sample, score, in a plain Python loop."""
    t0 = time.perf_counter()
    pool, (ref_x, ref_y) = load_real(cfg.data, cfg.seed)
    ref = prepare_reference(ref_x, ref_y, None, None, cfg.metrics, None)
    x, _ = pool.draw(cfg.seed, 0, cfg.loop.n_init)
    for gen in range(1, cfg.loop.generations + 1):
        state = gaussian.train(x, None, 0, cfg.model)
        x, _ = gaussian.sample(state, cfg.metrics.n_eval, 0, x.shape[1:], cfg.model, cfg.sample,
                               seeding.derive_seed(cfg.seed, gen, seeding.SAMPLE))
        evaluate(ref, x, None, cfg.metrics)
        gaussian.closed_form_metrics(state, cfg.sample.bias, pool.distribution())
        x = x[:cfg.loop.n_init]
    return time.perf_counter() - t0


def driver(cfg) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out = f"{tmp}/run"
        t0 = time.perf_counter()
        Driver(cfg, quiet=True).run()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    remote.init(RayConfig(), quiet=True)
    # Each driver task gets 1 CPU and so 1 torch thread; give the bare loop the same, so the ratio
    # measures the driver and not thread oversubscription of tiny matrices.
    torch.set_num_threads(1)
    print(f"ray start-up (once per run): {time.perf_counter() - t0:.1f} s")
    cfg = load_config(None, OVERRIDES + [f"loop.generations={args.generations}"])
    driver(cfg)  # warm-up: Ray workers import torch once
    rows = []
    for _ in range(args.repeats):
        rows.append((bare(cfg), driver(cfg)))
    b, d = np.median(np.array(rows), axis=0)
    g = args.generations
    print(f"{'':28s}{'s/generation':>14s}")
    print(f"{'bare fit+sample+metric':28s}{b / g:14.4f}")
    print(f"{'driver (Ray + run dir)':28s}{d / g:14.4f}")
    print(f"ratio driver/bare: {d / b:.2f}x  (median of {args.repeats}, {g} generations, dim 10, n=100, n_eval=500)")
    remote.shutdown()


if __name__ == "__main__":
    main()

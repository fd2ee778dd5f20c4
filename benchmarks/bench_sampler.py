"""What the sampler alone does: one generation-1 model, the same weights, many samplers.

Trains ONE generation-1 model exactly as the config's generation 1 does in the driver (the
same real draw, training seed and settings, through ``mad.tasks``), prepares the metrics'
reference exactly as the driver does (held-out digits, classifier features), then samples
``metrics.n_eval`` images with each sampler under test over several sampling seeds and scores
them against the held-out set. Sampling seed s is the driver's generation-1 sampling seed of a
run with ``seed = config seed + s``, so s = 0 reproduces the default run's generation 1.

Reported per sampler: precision, recall, density, coverage and FID (mean +- std over seeds),
and the wall-clock and process CPU seconds per 500 samples (one torch thread, as a driver task
with one CPU runs). A "real" row scores n_eval digits of the training set itself: the ceiling.
Everything runs in this process; no Ray.

    python benchmarks/bench_sampler.py                 # the full table (~9 min of CPU time on one core)
    python benchmarks/bench_sampler.py --quick         # a smoke run: tiny training, few samples
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import loops  # noqa: E402
from mad import seeding, tasks  # noqa: E402
from mad.config import Scheduler, load_config  # noqa: E402
from mad.data import load_real  # noqa: E402
from mad.models import get_family  # noqa: E402

# (scheduler, steps, clip); the full-T ancestral DDPM with clipping (Ho et al.'s sampler, which
# MAD used) is the reference the others are judged against
SAMPLERS = [
    (Scheduler.ddim, 20, True), (Scheduler.ddim, 20, False),
    (Scheduler.ddim, 50, True), (Scheduler.ddim, 50, False),
    (Scheduler.ddpm, 50, True), (Scheduler.ddpm, 50, False),
    (Scheduler.ddpm, 100, True), (Scheduler.ddpm, 100, False),
    (Scheduler.ddpm, 250, True), (Scheduler.ddpm, 250, False),
    (Scheduler.ddpm, None, True),  # None: the full T
]
METRICS = ["precision", "recall", "density", "coverage", "fid"]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds per sampler")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a driver task with 1 CPU uses 1)")
    ap.add_argument("--quick", action="store_true", help="tiny training and few samples: checks that the script runs")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    args = ap.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["train.steps=20", "metrics.n_eval=60", "model.num_train_timesteps=100", "metrics.classifier_epochs=2"]
    cfg = load_config(args.config, overrides)
    torch.set_num_threads(args.threads)
    model, n_eval = cfg.model, cfg.metrics.n_eval
    T = model.num_train_timesteps
    samplers = [(s, T if n is None else min(n, T), c) for s, n, c in SAMPLERS]
    samplers = list(dict.fromkeys(samplers))  # --quick's small T makes some coincide
    print(f"command: python benchmarks/bench_sampler.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"config {args.config} {' '.join(overrides)}: data {cfg.data.name.value}, n_init {cfg.loop.n_init}, "
          f"UNet {list(model.channels)}, T {T}, train {cfg.train.steps} steps batch {cfg.train.batch_size}, "
          f"lambda {cfg.sample.bias}, metrics {cfg.metrics.features.value} features, n_eval {n_eval}, k {cfg.metrics.k}",
          flush=True)

    pool, (ref_x, ref_y) = load_real(cfg.data, cfg.seed)
    reference, wall, _ = timed(lambda: tasks.prepare_reference(ref_x, ref_y, pool, cfg.metrics))
    print(f"reference prepared in {wall:.1f} s ({len(ref_x)} held-out samples)", flush=True)

    # generation 1 as the driver builds it: the loop's manifest, the chain seed, tasks.train_generation
    manifest = loops.next_training_set(cfg.loop.kind, 1, {}, cfg.loop, seeding.rng(cfg.seed, 1, seeding.LOOP))
    family = get_family(model.family)
    job = tasks.TrainJob(seed=cfg.seed, gen=1, manifest=manifest.to_json(), synth_gens=(), shard_counts=(),
                         family=family, model=model, train=cfg.train)
    state, train_wall, train_cpu = timed(lambda: tasks.train_generation(job, pool, [], device="cpu"))
    print(f"generation-1 training ({manifest.n_real} real samples, {cfg.train.steps} steps): "
          f"wall {train_wall:.1f} s, cpu {train_cpu:.1f} s", flush=True)

    def score(x, y) -> dict:
        return tasks.evaluate_generation(tasks.EvalJob(n_eval=n_eval, metrics=cfg.metrics, family=family,
                                                       bias=cfg.sample.bias), reference, state, [(x, y)])

    # the ceiling: real training digits (generation 1's own set) scored like a synthetic set
    real_x, real_y = tasks.assemble_training_set(pool, cfg.seed, manifest.to_json(), [], [])
    real = score(real_x[:n_eval], real_y[:n_eval] if real_y is not None else None)
    print("real: " + "  ".join(f"{k}={v:.4g}" for k, v in real.items()), flush=True)

    class_probs = pool.class_histogram() if cfg.sample.class_balance.value == "real" else None
    rows = []
    for sched, steps, clip in samplers:
        scfg = dataclasses.replace(cfg.sample, scheduler=sched, steps=steps, clip=clip)
        per_seed, walls, cpus = [], [], []
        for s in range(args.seeds):
            job = tasks.SampleJob(seed=cfg.seed + s, gen=1, shard=0, n=n_eval, pool_shape=pool.sample_shape,
                                  num_classes=pool.num_classes, class_probs=class_probs, family=family,
                                  model=model, sample=scfg)
            (x, y), wall, cpu = timed(lambda: tasks.sample_shard(job, state, device="cpu"))
            m = score(x, y)
            per_seed.append(m)
            walls.append(wall * 500 / n_eval)
            cpus.append(cpu * 500 / n_eval)
            print(f"{sched.value} {steps} clip={clip} seed {s}: " + "  ".join(f"{k}={v:.4g}" for k, v in m.items())
                  + f"  wall {wall:.1f} s cpu {cpu:.1f} s", flush=True)
        rows.append((sched.value, steps, clip, {k: [m[k] for m in per_seed] for k in METRICS},
                     statistics.median(walls), statistics.median(cpus)))

    print(f"\nload average {os.getloadavg()[0]:.2f} at end\n")
    print(f"| sampler | steps | clip x0 | {' | '.join(METRICS)} | s / 500 samples (wall) | (cpu) |")
    print("|" + " --- |" * (len(METRICS) + 5))
    print(f"| real training digits | | | {' | '.join(f'{real[k]:.3f}' for k in METRICS)} | | |")
    for sched, steps, clip, vals, wall, cpu in rows:
        print(f"| {sched} | {steps} | {'on' if clip else 'off'} | {' | '.join(fmt(vals[k]) for k in METRICS)} "
              f"| {wall:.1f} | {cpu:.1f} |")
    print(f"\ngeneration-1 training: wall {train_wall:.1f} s, cpu {train_cpu:.1f} s; metrics mean +- std over "
          f"{args.seeds} sampling seeds, times the median over seeds")


if __name__ == "__main__":
    main()

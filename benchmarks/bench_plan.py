"""Planning cost: wall time of ``python run.py CFG --dry-run`` for a 10,000-chain sweep (target: 2 s),
and the per-chain cost of expanding a sweep now against the old way (one OmegaConf round trip per
chain and key, measured on a few chains).

    python benchmarks/bench_plan.py [--repeats 3]

The dry-run is timed as a user runs it: a fresh interpreter, imports, YAML, validation, planning and
printing the 10,000 chain names (to /dev/null). CPU time (user + sys) is printed too, because on a
shared machine the wall time also measures the other jobs.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SWEEP_YAML = """out: {out}
data: {{name: gaussian, dim: 10}}
model: {{family: gaussian}}
loop: {{kind: fresh_data, generations: 20, n_init: 100}}
report: {{html: false, tensorboard: false}}
sweep:
  loop.n_real: [50, 100, 200, 400]
  loop.n_synth: [0, 50, 100, 200, 400]
  sample.bias: [1.0, 0.9, 0.8, 0.6, 0.5]
  seed: {seeds}
"""


def dry_run(path: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, chains) of one dry-run in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), str(path), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"dry-run failed: {proc.stderr.strip()}")
    n = int(next(line for line in proc.stdout.splitlines() if " chain(s)," in line).split()[1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, n


def old_expand_per_chain(cfg, n: int) -> float:
    """Seconds per chain of the former expansion: deepcopy + set_dotted (OmegaConf) per key."""
    from mad.config import set_dotted

    keys = list(cfg.sweep)
    combos = list(itertools.islice(itertools.product(*(cfg.sweep[k] for k in keys)), n))
    t0 = time.perf_counter()
    for combo in combos:
        chain = copy.deepcopy(cfg)
        chain.sweep = {}
        for k, v in zip(keys, combo):
            chain = set_dotted(chain, k, v)
    return (time.perf_counter() - t0) / len(combos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-chains", type=int, default=20, help="chains timed with the former expansion")
    args = ap.parse_args()
    from mad.config import expand_sweep, load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep10k.yaml"
        path.write_text(SWEEP_YAML.format(out=Path(tmp) / "run", seeds=list(range(100))))
        runs = [dry_run(path) for _ in range(args.repeats)]
        cfg = load_config(path)
        t0 = time.perf_counter()
        chains = expand_sweep(cfg)
        new = (time.perf_counter() - t0) / len(chains)
        old = old_expand_per_chain(cfg, args.old_chains)
    walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"dry-run of {runs[0][2]:,} chains (fresh interpreter, names to a pipe): "
          f"wall {statistics.median(walls):.2f} s (min {min(walls):.2f}), CPU {statistics.median(cpus):.2f} s; "
          f"median of {args.repeats}; target <= 2 s")
    print(f"expand_sweep per chain: {new * 1e6:.0f} us now, {old * 1e3:.1f} ms before "
          f"(deepcopy + OmegaConf per key, {args.old_chains} chains): {old / new:.0f}x")


if __name__ == "__main__":
    main()

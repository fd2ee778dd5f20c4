"""How far the records of tests/test_records_stable.py's runs move with the CPU's kernels and thread counts.

``python benchmarks/golden_spread.py [FAMILY ...] [--only LABEL-PART]`` runs each family's golden case (the same config as
the test) once per setting below, each in a fresh process with its own private Ray (so that the
environment reaches the workers), and prints, per setting, the largest relative difference from the
golden file for every float key, and whether every other key (integers, strings, the key set) is
equal. The settings stand in for "another CPU of the same kind": torch's intra-op threads inside the
tasks (``resources.*_cpus``, which ``mad.remote`` turns into ``torch.set_num_threads``), OpenMP/MKL
thread variables, and ``ATEN_CPU_CAPABILITY``, which picks another of torch's vectorised kernel sets
(AVX512 / AVX2 / none), the part of the CPU that differs between machines of one kind.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "default": ({}, []),
    "threads=1 (OMP/MKL=1)": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, []),
    "threads=2 (tasks get 2 CPUs)": ({}, ["ray.num_cpus=2", "resources.train_cpus=2", "resources.sample_cpus=2",
                                          "resources.eval_cpus=2"]),
    "OMP/MKL=2, OMP_WAIT_POLICY=ACTIVE": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                                           "OMP_WAIT_POLICY": "ACTIVE"}, []),
    "ATEN_CPU_CAPABILITY=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, []),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, []),
}

CHILD = """
import importlib.util, sys
sys.path.insert(0, {root!r})
spec = importlib.util.spec_from_file_location("records_stable", {root!r} + "/tests/test_records_stable.py")
test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(test)  # by path: a `tests` package installed in site-packages would shadow ours
QUIET, RUNS = test.QUIET, test.RUNS
from mad import remote
from mad.config import RayConfig, load_config
from mad.driver import Driver
path, overrides = RUNS[{family!r}]
cfg = load_config(path, [*overrides, *QUIET, *{extra!r}, "out={out}"])
remote.init(RayConfig(num_cpus=cfg.ray.num_cpus or 2), quiet=True)
Driver(cfg, quiet=True).run()
"""


def run_once(family: str, env: dict, extra: list) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code = CHILD.format(root=str(ROOT), family=family, extra=extra, out=out)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, **env})
        return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def compare(new: list[dict], old: list[dict]) -> tuple[dict[str, float], list[str]]:
    """(largest relative difference per float key, the other keys that differ)."""
    new_by = {(r["chain"], r["gen"]): r for r in new}
    old_by = {(r["chain"], r["gen"]): r for r in old}
    other = [] if set(new_by) == set(old_by) else ["(chain, gen) set"]
    rel: dict[str, float] = {}
    for key, rec in old_by.items():
        for name, want in rec.items():
            got = new_by.get(key, {}).get(name)
            if isinstance(want, float) and isinstance(got, float):
                d = abs(got - want) / max(abs(want), 1e-12) if not math.isclose(got, want, abs_tol=1e-12) else 0.0
                rel[name] = max(rel.get(name, 0.0), d)
            elif got != want:
                other.append(f"{name} {key}: {got!r} != {want!r}")
    return rel, other


def main(families: list[str], only: str = "") -> None:
    golden = json.loads((ROOT / "tests" / "data" / "records_45c884a.json").read_text())
    for family in families:
        print(f"## {family}")
        for label, (env, extra) in SETTINGS.items():
            if only not in label:
                continue
            rel, other = compare(run_once(family, env, extra), golden[family])
            moved = {k: v for k, v in sorted(rel.items()) if v > 0}
            worst = max(rel.values(), default=0.0)
            print(f"{label:38s} max rel {worst:.2e}  moved: "
                  + (", ".join(f"{k} {v:.1e}" for k, v in moved.items()) or "none")
                  + (f"  OTHER: {other}" if other else "  non-floats equal"), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    only = args[args.index("--only") + 1] if "--only" in args else ""
    args = [a for i, a in enumerate(args) if a != "--only" and (i == 0 or args[i - 1] != "--only")]
    main(args or ["diffusion"], only)

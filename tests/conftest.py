import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run ``python run.py ARGS`` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the in-process driver tests (starting Ray costs seconds)."""
    from mad import remote
    from mad.config import RayConfig

    remote.init(RayConfig(num_cpus=2), quiet=True)
    yield
    remote.shutdown()


def finished(run_dir: Path, chain_glob: str = "*") -> dict[str, list[int]]:
    """The finished generations of each chain as the driver reads them (either run-directory layout)."""
    from mad.artifacts import RunDir

    rd = RunDir(run_dir)
    return {d.name: rd.done_generations(d.name) for d in sorted(Path(run_dir).glob(chain_glob)) if d.is_dir()}


def n_finished(run_dir: Path, chain_glob: str = "*") -> int:
    return sum(len(g) for g in finished(run_dir, chain_glob).values())


def cut_records(run_dir: Path, chain: str, n: int, torn: str = "") -> None:
    """Keep a chain's first ``n`` record lines, as a crash before the later ones leaves it (``torn``:
    also the start of the next line, as a kill in the middle of its write leaves it)."""
    path = Path(run_dir) / chain / "records.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:n]) + (lines[n][:len(lines[n]) // 2] if torn else ""))

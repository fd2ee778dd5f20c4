"""Identical work done once: generation 1 (and any real-only generation) shared across chains."""
import json
import shutil
from pathlib import Path

import pytest

from mad import artifacts
from mad.config import load_config
from mad.driver import Driver
from test_driver import GAUSS, records

pytestmark = pytest.mark.usefixtures("ray_local")

# block_size=0: the Gaussian is a cheap family that otherwise runs in chain blocks, where a generation
# costs milliseconds and nothing is shared; sharing is for the one-task-per-stage path (diffusion).
SWEEP = ["resources.block_size=0", "loop.generations=3", "sweep.loop.kind=[fully_synthetic,synthetic_augmentation,fresh_data]",
         "sweep.sample.bias=[1.0,0.8]"]


class CountingDriver(Driver):
    """The real driver; counts the generations it submits for computation and those read back from disk."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.computed, self.read_back = [], []

    def _submit(self, r, stages, remote):
        shared_before = {k for k, v in self._shared.items() if v is not None}
        read_before = sum(ok for *_, ok in self.read_back)
        sub, ref = super()._submit(r, stages, remote)
        from_disk = sum(ok for *_, ok in self.read_back) > read_before
        if not from_disk and (sub.share_key is None or sub.share_key not in shared_before):
            self.computed.append((r.chain.name, sub.gen))
        return sub, ref

    def _read_back(self, chain, gen, remote):
        out = super()._read_back(chain, gen, remote)
        self.read_back.append((chain, gen, out is not None))
        return out


def _run(out: Path, *overrides: str) -> CountingDriver:
    cfg = load_config(None, [*GAUSS, f"out={out}", *SWEEP, *overrides])
    d = CountingDriver(cfg, quiet=True)
    d.run()
    return d


def test_shared_generation_one_equals_computing_it_per_chain(tmp_path):
    shared = _run(tmp_path / "shared")
    separate = _run(tmp_path / "separate", "resources.share_identical=false")
    assert records(tmp_path / "shared") == records(tmp_path / "separate")
    # 6 chains x 3 generations; generation 1 depends on seed, data, model, train, sampling and metrics:
    # lambda changes sampling, so the 3 loop kinds share it within each lambda (2 computations, not 6).
    assert len(separate.computed) == 18
    assert len(shared.computed) == 18 - 4
    assert sum(1 for _, g in shared.computed if g == 1) == 2
    # ... and training does not depend on lambda: generation 1 is trained once for all six chains
    assert separate.n_trained == 18 and shared.n_trained == 18 - 4 - 1
    # every chain still has its own complete generation 1 on disk
    for chain in json.loads((tmp_path / "shared" / "chains.json").read_text()):
        assert artifacts.RunDir(tmp_path / "shared").is_done(chain["name"], 1)


def test_resume_reads_a_shared_generation_back_instead_of_recomputing(tmp_path):
    out = tmp_path / "run"
    full = _run(out)
    before = records(out)
    # Lose every generation of two chains, as if the run had died before they started.
    chains = [c["name"] for c in json.loads((out / "chains.json").read_text())]
    for name in chains[1:3]:
        shutil.rmtree(out / name)
    resumed = _run(out)
    assert records(out) == before
    assert [(c, g) for c, g, ok in resumed.read_back if ok] and all(ok for *_, ok in resumed.read_back)
    assert all(g > 1 for _, g in resumed.computed), resumed.computed  # generation 1 came from disk
    assert len(full.computed) > len(resumed.computed)

"""TensorBoard tracker: every chain x generation x scalar and a sample image land in the event files."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mad.tracking import SAMPLES_TAG, TensorBoardTracker, chain_log_dir

CHAINS = {  # chain -> preview kind
    "c00-loop.kind=fully_synthetic-seed=0": "vectors",
    "c01-loop.kind=fresh_data-seed=0": "images",
}
GENS = (1, 2, 3)


def _metrics(chain_index: int, gen: int) -> dict:
    # a driver record: metrics plus bookkeeping (only wall_s of which is charted)
    return {"w2": 0.1 * gen + chain_index, "trace_ratio": 0.8 ** (gen - 1), "precision": 0.5 + 0.01 * gen,
            "wall_s": 1.5 * gen, "gen": gen, "seed": 0, "n_real": 40, "time": 1.7e9, "sample.bias": 0.8,
            "loop": "fresh_data", "loop.kind": "fresh_data", "flag": True, "broken": float("nan")}


def _preview(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "vectors":
        return rng.standard_normal((40, 5))
    return rng.integers(0, 256, size=(9, 1, 8, 8), dtype=np.uint8)


def _load(run_dir, chain: str) -> EventAccumulator:
    acc = EventAccumulator(str(chain_log_dir(run_dir, chain)), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tb_run")
    rng = np.random.default_rng(0)
    with TensorBoardTracker(run_dir) as tracker:
        for gen in GENS:
            for i, (chain, kind) in enumerate(CHAINS.items()):
                tracker.log_generation(chain, gen, _metrics(i, gen), _preview(kind, rng))
    return run_dir


def test_every_chain_generation_scalar_is_logged(logged):
    for i, chain in enumerate(CHAINS):
        acc = _load(logged, chain)
        # bookkeeping, non-numeric, boolean and non-finite entries are not scalars
        assert sorted(acc.Tags()["scalars"]) == ["precision", "trace_ratio", "w2", "wall_s"]
        for tag in ("w2", "trace_ratio", "precision", "wall_s"):
            events = acc.Scalars(tag)
            assert [e.step for e in events] == list(GENS)
            expected = [_metrics(i, g)[tag] for g in GENS]
            np.testing.assert_allclose([e.value for e in events], expected, rtol=1e-6)


def test_sample_images_per_generation(logged):
    from io import BytesIO

    from PIL import Image

    for chain, kind in CHAINS.items():
        acc = _load(logged, chain)
        assert acc.Tags()["images"] == [SAMPLES_TAG]
        images = acc.Images(SAMPLES_TAG)
        assert [e.step for e in images] == list(GENS)
        for e in images:
            img = np.asarray(Image.open(BytesIO(e.encoded_image_string)))
            assert img.shape[:2] == (e.height, e.width)
            assert img.std() > 5  # a drawn scatter / a grid of random digits, not a blank canvas
            if kind == "images":  # a 3x3 grid of 8x8 images with 1px padding, scaled up to >= 256 px
                assert e.width % 28 == 0 and e.width >= 256


def test_resume_replaces_relogged_generations(tmp_path):
    chain = "c00-seed=0"
    with TensorBoardTracker(tmp_path) as tracker:
        for gen in (1, 2, 3):
            tracker.log_generation(chain, gen, {"w2": float(gen)}, None)
    # a resumed driver logs generations 2 and 3 again (e.g. an interrupted run redone)
    with TensorBoardTracker(tmp_path) as tracker:
        for gen in (2, 3, 4):
            tracker.log_generation(chain, gen, {"w2": 10.0 * gen}, None)
    events = _load(tmp_path, chain).Scalars("w2")
    assert [(e.step, e.value) for e in events] == [(1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]


def test_importing_tracking_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, mad.tracking; assert 'torch' not in sys.modules and 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

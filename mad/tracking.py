"""TensorBoard logging of a run: one event directory per chain, so TensorBoard lists the chains as
runs and overlays them on one chart per metric (tag = metric name, step = generation).

    RUN_DIR/tensorboard/<chain>/events.out.tfevents...

Resume: each chain's writer is opened on its first logged generation with ``purge_step`` set to
that generation, so TensorBoard drops whatever an interrupted earlier session logged at that step
or later; re-logging a generation therefore replaces it instead of drawing it twice.
torch is imported when a tracker is created, not when this module is imported.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mad.plots import is_image_batch, render_scatter, tile_images
from mad.report import NON_METRIC_KEYS

# Bookkeeping fields of a metrics.jsonl record are not charted, except the wall time.
_SKIP = NON_METRIC_KEYS - {"wall_s"}

SAMPLES_TAG = "samples"
MIN_IMAGE_PX = 256


def chain_log_dir(run_dir: str | Path, chain: str) -> Path:
    """Where a chain's events go; path separators in a chain name must not create sub-runs."""
    return Path(run_dir) / "tensorboard" / re.sub(r"[\\/]+", "_", chain)


class TensorBoardTracker:
    """Scalars and a sample grid per (chain, generation), for TensorBoard.

    Use from the driver: ``log_generation`` after each finished generation, ``close`` at the end
    (also a context manager).
    """

    def __init__(self, run_dir: str | Path, max_images: int = 64) -> None:
        self.run_dir = Path(run_dir)
        self.max_images = max_images
        self._writers: dict[str, Any] = {}
        (self.run_dir / "tensorboard").mkdir(parents=True, exist_ok=True)

    def _writer(self, chain: str, gen: int):
        writer = self._writers.get(chain)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed chain overwrites generations >= gen logged by an earlier session
            writer = SummaryWriter(log_dir=str(chain_log_dir(self.run_dir, chain)), purge_step=gen, flush_secs=30)
            self._writers[chain] = writer
        return writer

    def log_generation(self, chain: str, gen: int, metrics: dict[str, float],
                       preview_x: Optional[np.ndarray] = None) -> None:
        """Log every finite numeric metric as tag ``metric`` at step ``gen``, and a sample image.

        ``metrics`` may be the driver's whole metrics.jsonl record: its bookkeeping fields (gen, seed,
        n_real, time, dotted sweep keys, ...) are skipped; ``wall_s`` is kept.
        """
        writer = self._writer(chain, gen)
        for key, value in metrics.items():
            if key in _SKIP or "." in key:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                continue  # names and flags are not scalars
            if math.isfinite(float(value)):
                writer.add_scalar(key, float(value), global_step=gen)
        if preview_x is not None and len(preview_x):
            writer.add_image(SAMPLES_TAG, self._sample_image(preview_x, f"{chain} gen {gen}"), global_step=gen,
                             dataformats="HWC")
        writer.flush()  # the driver logs once per generation: make it visible now

    def _sample_image(self, x: np.ndarray, title: str) -> np.ndarray:
        """uint8 (H, W, 3): a grid of images (the report's grid), or a matplotlib scatter of vectors."""
        x = np.asarray(x)
        if is_image_batch(x):
            # numpy tiling rather than torchvision's make_grid: the same grid as report.html, and no
            # torchvision import (seconds) in a driver that may only run Gaussians
            grid = tile_images(x, max_images=self.max_images)
            if grid.ndim == 2:
                grid = np.repeat(grid[:, :, None], 3, axis=2)
            # TensorBoard shows images at their pixel size: blow tiny ones (8x8 digits) up, blocky not blurred
            scale = max(1, math.ceil(MIN_IMAGE_PX / max(grid.shape[:2])))
            return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
        return render_scatter(x, title=title)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "TensorBoardTracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

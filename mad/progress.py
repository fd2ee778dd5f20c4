"""Progress bars that stay readable when the work runs in Ray workers.

Inside a Ray worker, bars go through ``ray.experimental.tqdm_ray``, which draws them on the
driver's console instead of interleaving raw carriage returns from every worker; elsewhere,
plain tqdm.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    from ray._private.worker import WORKER_MODE, global_worker

    return global_worker.mode == WORKER_MODE


def progress_bar(iterable: Iterable, desc: str, enabled: bool, total: Optional[int] = None) -> Iterable:
    if not enabled:
        return iterable
    if _in_ray_worker():
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        return ray_tqdm(iterable, desc=desc, total=total)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def console_print(msg: str) -> None:
    """Print a line on the driver without tearing the workers' progress bars."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray.experimental.tqdm_ray import safe_print

        safe_print(msg, flush=True)
    else:
        print(msg, flush=True)

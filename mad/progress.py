"""Progress bars that stay readable when the work runs in Ray workers.

This module does not import Ray: ``mad.remote`` installs Ray's tqdm (``ray.experimental.tqdm_ray``,
which draws a worker's bars on the driver's console instead of interleaving raw carriage returns
from every worker) as the bar factory inside its tasks, and Ray's ``safe_print`` as the driver's
printer while Ray runs. Without them: plain tqdm and ``print``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

_bar_factory: Optional[Callable[..., Any]] = None
_printer: Optional[Callable[[str], None]] = None


def set_bar_factory(factory: Optional[Callable[..., Any]]) -> None:
    """``factory(iterable, desc=..., total=...)`` makes the bars of this process (None: tqdm)."""
    global _bar_factory
    _bar_factory = factory


def set_console_printer(printer: Optional[Callable[[str], None]]) -> None:
    """``printer(msg)`` prints the driver's lines without tearing the workers' bars (None: print)."""
    global _printer
    _printer = printer


def progress_bar(iterable: Iterable, desc: str, enabled: bool, total: Optional[int] = None) -> Iterable:
    if not enabled:
        return iterable
    if _bar_factory is not None:
        return _bar_factory(iterable, desc=desc, total=total)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def console_print(msg: str) -> None:
    """Print a line on the driver without tearing the workers' progress bars."""
    if _printer is not None:
        _printer(msg)
    else:
        print(msg, flush=True)

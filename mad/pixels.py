"""Pixels and devices shared by the image models and the feature networks (torch only, no diffusers)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``device`` as a torch.device; None means CUDA when available, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def to_unit_range(x: Any, device: Optional[str | torch.device] = None) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (on ``device``; default: where ``x`` is).

    A numpy input is copied to float32 first, so read-only arrays (Ray's object store) are fine."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    return t.to(device=device, dtype=torch.float32).div(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float in [-1, 1] -> uint8 pixels, round(clamp((x + 1) * 127.5))."""
    return ((x.float() + 1.0) * 127.5).clamp_(0.0, 255.0).round_().to(torch.uint8).cpu().numpy()

"""Pieces of a training loop that every gradient-trained family shares."""
from __future__ import annotations

from typing import Iterator

import torch
from diffusers.training_utils import EMAModel


def index_batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless minibatches of indices: shuffled epochs, so every image is seen equally often."""
    buf = torch.empty(0, dtype=torch.long)
    while True:
        while buf.numel() < batch_size:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        yield buf[:batch_size]
        buf = buf[batch_size:]


def make_ema(params: list[torch.nn.Parameter], max_decay: float) -> EMAModel:
    """diffusers' EMA of ``params`` with its default warm-up, capped at ``max_decay`` (``train.ema_decay``).

    After optimizer step k the decay is ``min(max_decay, k / (k + 9))`` (step 1 copies the
    weights). Until the cap is reached (k = 9 / (1 - max_decay) - 9: ~9,000 steps for 0.999)
    this is a power-function average whose weight on step i grows like i**8: the averaged
    weights are on average k/10 steps old (after 1,000 steps: 100, with 61% of the weight on
    the last 100 steps), so a short run returns trained weights rather than ones still close
    to the random init, and a long one settles on a horizon of 1 / (1 - max_decay) steps.
    diffusers' train_unconditional.py warms up with ``use_ema_warmup=True, power=3/4``
    instead: a similar horizon at 1,000 steps (~180 steps instead of ~110).
    """
    # foreach: two fused list ops per step instead of three small kernels per tensor
    return EMAModel(params, decay=max_decay, use_ema_warmup=False, foreach=True)


def sub_state(state: dict, prefix: str) -> dict:
    """The entries of a flat state dict under ``prefix``, with the prefix stripped (one module's weights)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

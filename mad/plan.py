"""Expand a config into chains: one chain per point of the sweep grid."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mad.config import Config, expand_sweep


@dataclass
class Chain:
    index: int
    name: str  # directory name, readable: c00-loop.kind=fresh_data-seed=1
    assignment: dict[str, Any]  # the swept keys and their values for this chain
    cfg: Config

    def describe(self) -> dict:
        c = self.cfg
        return {
            "name": self.name,
            "index": self.index,
            "assignment": {k: _plain(v) for k, v in self.assignment.items()},
            "loop": c.loop.kind.value,
            "bias": c.sample.bias,
            "seed": c.seed,
            "family": str(c.model.family),
            "data": c.data.name.value,
            "generations": c.loop.generations,
        }


def _plain(v: Any) -> Any:
    return getattr(v, "value", v)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", str(_plain(value)))


def plan_chains(cfg: Config) -> list[Chain]:
    chains = []
    for i, (assignment, chain_cfg) in enumerate(expand_sweep(cfg)):
        parts = [f"c{i:02d}"] + [f"{k}={_slug(v)}" for k, v in assignment.items()]
        if not assignment:
            parts.append(chain_cfg.loop.kind.value)
        chains.append(Chain(i, "-".join(parts), assignment, chain_cfg))
    return chains

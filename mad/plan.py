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


def estimate_compute(chains: list[Chain]) -> dict[str, int]:
    """What running ``chains`` costs, in the units a reader can budget: chain-generations, and for
    diffusion the optimiser steps and images sampled (each image costs ``sample.steps`` network passes).

    Mirrors the driver: every generation trains once and samples max(synthetic set kept, n_eval)
    images; the last generation keeps no synthetic set."""
    from mad.config import Family, resolved_counts

    out = {"chains": len(chains), "chain_generations": 0, "diffusion_train_steps": 0, "diffusion_images": 0,
           "diffusion_denoiser_passes": 0}
    for c in chains:
        cfg = c.cfg
        gens = cfg.loop.generations
        out["chain_generations"] += gens
        if cfg.model.family == Family.diffusion:
            _, n_synth = resolved_counts(cfg.loop)
            images = (gens - 1) * max(n_synth, cfg.metrics.n_eval) + cfg.metrics.n_eval
            out["diffusion_train_steps"] += gens * cfg.train.steps
            out["diffusion_images"] += images
            out["diffusion_denoiser_passes"] += images * cfg.sample.steps
    return out


def describe_compute(est: dict[str, int]) -> str:
    text = f"{est['chain_generations']:,} chain-generation(s)"
    if est["diffusion_train_steps"]:
        text += (f"; diffusion: {est['diffusion_train_steps']:,} training steps, {est['diffusion_images']:,} images "
                 f"sampled ({est['diffusion_denoiser_passes']:,} denoiser passes)")
    return text

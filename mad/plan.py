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
    diffusion the optimiser steps and images sampled (each image costs ``sample.steps`` network passes, the full T when None).

    Mirrors the driver: every generation trains once (``train.finetune_steps`` when it fine-tunes the
    previous weights) and samples max(synthetic set kept, n_eval) images, the synthetic set k times over
    when curation chooses one of ``curate.k`` candidates; the last generation keeps no synthetic set."""
    from mad.config import Family, Reward, TrainInit, n_synth_at, sampling_steps

    out = {"chains": len(chains), "chain_generations": 0, "diffusion_train_steps": 0, "diffusion_images": 0,
           "diffusion_denoiser_passes": 0}
    for c in chains:
        cfg = c.cfg
        gens = cfg.loop.generations
        out["chain_generations"] += gens
        if cfg.model.family == Family.diffusion:
            k = cfg.curate.k if cfg.curate.reward != Reward.none else 1
            images = sum(max(k * n_synth_at(cfg.loop, g + 1), cfg.metrics.n_eval) for g in range(1, gens))
            images += cfg.metrics.n_eval
            later = cfg.train.steps
            if cfg.train.init == TrainInit.previous and cfg.train.finetune_steps:
                later = cfg.train.finetune_steps
            out["diffusion_train_steps"] += cfg.train.steps + (gens - 1) * later
            out["diffusion_images"] += images
            out["diffusion_denoiser_passes"] += images * sampling_steps(cfg.model, cfg.sample)
    return out


def describe_compute(est: dict[str, int]) -> str:
    text = f"{est['chain_generations']:,} chain-generation(s)"
    if est["diffusion_train_steps"]:
        text += (f"; diffusion: {est['diffusion_train_steps']:,} training steps, {est['diffusion_images']:,} images "
                 f"sampled ({est['diffusion_denoiser_passes']:,} denoiser passes)")
    return text

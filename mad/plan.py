"""Expand a config into chains: one chain per point of the sweep grid."""
from __future__ import annotations

import math
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


def _chain_name(i: int, assignment: dict[str, Any], chain_cfg: Config) -> str:
    parts = [f"c{i:02d}"] + [f"{k}={_slug(v)}" for k, v in assignment.items()]
    if not assignment:
        parts.append(chain_cfg.loop.kind.value)
    return "-".join(parts)


def plan_notes(cfg: Config, chains: list[Chain]) -> list[str]:
    """What a reader of ``--dry-run`` should know about the phase sweep: the real-only chains
    ``report.phase.baseline: auto`` adds, and the fresh-data chains too short to forget their start."""
    from mad.config import LoopKind, resolved_counts
    from mad.phase import mixing_generations

    notes = []
    _, skipped = baseline_chains(cfg, [c for c in chains if not c.name.endswith("-baseline")])
    base = [c for c in chains if c.name.endswith("-baseline")]
    if base:
        ns = sorted({c.cfg.loop.n_real for c in base})
        notes.append(f"phase baseline (report.phase.baseline=auto): {len(base)} real-only chain(s) added "
                     f"at n_real = {', '.join(map(str, ns))}")
    if skipped:
        notes.append(f"warning: phase baseline: no real-only chain at n_real = {', '.join(map(str, skipped))} "
                     f"(not a valid config, e.g. more fresh real draws than the data set holds); n_e beyond "
                     f"the largest measured n is extrapolated")
    short: dict[tuple, tuple[int, float]] = {}
    fresh = [c for c in chains if c.cfg.loop.kind == LoopKind.fresh_data]
    if not any(resolved_counts(c.cfg.loop)[1] == 0 for c in fresh):
        fresh = []  # no real-only chains: no phase diagram to warn about
    for c in fresh:
        n_real, n_synth = resolved_counts(c.cfg.loop)
        need = mixing_generations(n_real, n_synth, c.cfg.sample.bias)
        if c.cfg.loop.generations < need - 1e-9:
            short[(n_real, n_synth, c.cfg.sample.bias)] = (c.cfg.loop.generations, need)
    if short:
        (n_r, n_s, lam), (gens, need) = max(short.items(), key=lambda kv: kv[1][1])
        notes.append(f"warning: {len(short)} fresh-data cell(s) run fewer generations than 5 / (1 - rho), "
                     f"rho = lambda n_synth / (n_real + n_synth), and keep part of their start-up transient; "
                     f"the worst: n_real={n_r} n_synth={n_s} lambda={lam:g} runs {gens}, needs about "
                     f"{math.ceil(need) if math.isfinite(need) else 'infinitely many'}")
    return notes


def plan_chains(cfg: Config) -> list[Chain]:
    chains = [Chain(i, _chain_name(i, a, c), a, c) for i, (a, c) in enumerate(expand_sweep(cfg))]
    return chains + baseline_chains(cfg, chains)[0]


_CELL_KEYS = ("loop.n_real", "loop.n_synth", "loop.n_init", "loop.real_fraction", "loop.n_total")


def baseline_chains(cfg: Config, chains: list[Chain]) -> tuple[list[Chain], list[int]]:
    """With ``report.phase.baseline: auto``, the real-only (n_synth = 0) fresh-data chains the phase
    diagram needs beyond the sweep's own: for every combination of the other swept keys (seed and
    lambda included, so the baseline is paired with the cells per seed), one chain at each n of
    ``mad.phase.baseline_grid`` (smallest n_real to largest n_real + n_synth) that the sweep lacks,
    at the smallest n_init. Returns (the chains, the grid points skipped because a chain there is
    not a valid config, e.g. more fresh real draws than a finite data set holds)."""
    import copy

    from mad.config import ConfigError, LoopKind, PhaseBaseline, _validate_one, resolved_counts
    from mad.phase import baseline_grid

    if cfg.report.phase.baseline != PhaseBaseline.auto:
        return [], []
    groups: dict[tuple, list[Chain]] = {}
    for c in chains:
        if c.cfg.loop.kind != LoopKind.fresh_data:
            continue
        others = tuple((k, _plain(v)) for k, v in c.assignment.items() if k not in _CELL_KEYS)
        groups.setdefault(others, []).append(c)
    extra: list[Chain] = []
    skipped: set[int] = set()
    for members in groups.values():
        counts = [resolved_counts(c.cfg.loop) for c in members]
        n_init = min(c.cfg.loop.n_init for c in members)
        have = {r for c, (r, s) in zip(members, counts) if s == 0 and c.cfg.loop.n_init == n_init}
        template = min(members, key=lambda c: (c.cfg.loop.n_init, c.index))
        for n in baseline_grid([r for r, _ in counts], [r + s for r, s in counts]):
            if n in have:
                continue
            chain_cfg = copy.deepcopy(template.cfg)
            chain_cfg.loop.n_real, chain_cfg.loop.n_synth, chain_cfg.loop.n_init = n, 0, n_init
            chain_cfg.loop.real_fraction = None
            try:
                _validate_one(chain_cfg)
            except ConfigError:
                skipped.add(n)
                continue
            assignment = {k: v for k, v in template.assignment.items() if k not in _CELL_KEYS}
            assignment = {"loop.n_real": n, "loop.n_synth": 0, **({"loop.n_init": n_init} if any(
                "loop.n_init" in c.assignment for c in members) else {}), **assignment}
            i = len(chains) + len(extra)
            extra.append(Chain(i, _chain_name(i, assignment, chain_cfg) + "-baseline", assignment, chain_cfg))
    return extra, sorted(skipped)


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

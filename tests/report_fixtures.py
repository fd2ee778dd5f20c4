"""Small run directories in the driver's format, for the report and tracking tests.

The data are real numpy computations, not stand-ins: the Gaussian run really iterates the fully
synthetic / fresh-data loops (fit mean and unbiased covariance, sample N(mu, lambda Sigma)) and
scores each generation in closed form; the digits run degrades real sklearn digits generation by
generation and scores them with a Frechet distance on pixels and k-NN precision/recall.
Only the file layout imitates the driver (which the report reads but does not import).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mad.config import (Config, DataConfig, DataName, Family, Features, LoopConfig, LoopKind, MetricsConfig,
                        ModelConfig, SampleConfig, expand_sweep, to_yaml)


def chain_name(index: int, assignment: dict[str, Any]) -> str:
    return f"c{index:02d}" + "".join(f"-{k}={v}" for k, v in assignment.items())


def _gen_dir(run_dir: Path, chain: str, gen: int) -> Path:
    return run_dir / chain / f"gen_{gen:03d}"


def _write_generation(run_dir: Path, chain: str, gen: int, preview: np.ndarray, labels: Optional[np.ndarray],
                      metrics: dict, done: bool = True) -> None:
    d = _gen_dir(run_dir, chain, gen)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"x": preview[:64]}
    if labels is not None:
        arrays["y"] = labels[:64]
    np.savez(d / "preview.npz", **arrays)
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "manifest.json").write_text(json.dumps({"gen": gen, "n_real": metrics["n_real"], "n_synth": metrics["n_synth"]}))
    if done:
        (d / "DONE").write_text("")


def _w2_to_standard(mean: np.ndarray, cov: np.ndarray) -> float:
    """W2 between N(mean, cov) and N(0, I)."""
    eig = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    return float(np.sqrt(max(mean @ mean + eig.sum() + len(mean) - 2 * np.sqrt(eig).sum(), 0.0)))


def _write_run(run_dir: Path, cfg: Config, simulate, partial: bool) -> Path:
    """Common part: config.yaml, chains.json, per-chain generations, shuffled metrics.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    chains, lines = [], []
    for index, (assignment, chain_cfg) in enumerate(expand_sweep(cfg)):
        name = chain_name(index, assignment)
        chains.append({"name": name, "index": index, "assignment": assignment, "loop": chain_cfg.loop.kind.value,
                       "bias": chain_cfg.sample.bias, "seed": chain_cfg.seed, "family": str(chain_cfg.model.family),
                       "data": chain_cfg.data.name.value, "generations": chain_cfg.loop.generations})
        for gen, (preview, labels, metrics) in enumerate(simulate(chain_cfg, index), start=1):
            rec = {"chain": name, "loop": chain_cfg.loop.kind.value, "seed": chain_cfg.seed,
                   "bias": chain_cfg.sample.bias, "gen": gen, "time": time.time(), **metrics, **assignment}
            _write_generation(run_dir, name, gen, preview, labels, rec)
            lines.append(rec)
    (run_dir / "chains.json").write_text(json.dumps(chains, indent=1))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(lines))  # the format allows any line order
    text = "".join(json.dumps(lines[i]) + "\n" for i in order)
    if partial:
        # a generation in progress (no DONE) whose line arrived anyway, and a torn last line
        first = chains[0]
        gen = first["generations"] + 1
        ghost = {**lines[0], "gen": gen, "chain": first["name"], "w2": 1e6, "fid": 1e6}
        _write_generation(run_dir, first["name"], gen, np.zeros((4, 2)), None, ghost, done=False)
        text += json.dumps(ghost) + "\n" + '{"chain": "c00", "gen": 9, "w2": 0.'
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def write_gaussian_run(run_dir: str | Path, generations: int = 5, seeds: int = 2, dim: int = 4, n: int = 40,
                       kinds: tuple[str, ...] = ("fully_synthetic", "fresh_data"),
                       biases: tuple[float, ...] = (1.0, 0.7), partial: bool = True, logdet: bool = False) -> Path:
    """A Gaussian sweep loop.kind x sample.bias x seed, simulated for real with numpy; with ``logdet``
    the records also hold logdet_ratio and logdet_ratio_per_dim (the real covariance is I)."""
    cfg = Config(out=str(run_dir), data=DataConfig(name=DataName.gaussian, dim=dim),
                 model=ModelConfig(family=Family.gaussian),
                 loop=LoopConfig(generations=generations, n_init=n, n_real=n, n_synth=n))
    cfg.sweep = {"loop.kind": list(kinds), "sample.bias": list(biases), "seed": list(range(seeds))}

    def simulate(c: Config, index: int):
        rng = np.random.default_rng([c.seed, index])
        train = rng.standard_normal((c.loop.n_init, dim))
        fixed_real = train[: c.loop.n_real]
        for gen in range(1, c.loop.generations + 1):
            t0 = time.perf_counter()
            mean, cov = train.mean(0), np.cov(train, rowvar=False, ddof=1)
            eig, vec = np.linalg.eigh(c.sample.bias * cov)
            draw = lambda k: mean + rng.standard_normal((k, dim)) @ (vec * np.sqrt(np.clip(eig, 0, None))).T  # noqa: E731
            synth = draw(c.loop.n_synth)
            metrics = {"w2": _w2_to_standard(mean, c.sample.bias * cov), "trace_ratio": float(np.trace(cov) / dim),
                       "mean_shift": float(np.linalg.norm(mean)), "n_real": c.loop.n_init if gen == 1 else
                       (0 if c.loop.kind == LoopKind.fully_synthetic else c.loop.n_real),
                       "n_synth": 0 if gen == 1 else c.loop.n_synth}
            if logdet:
                sign, value = np.linalg.slogdet(cov)
                metrics["logdet_ratio"] = float(value) if sign > 0 else None
                metrics["logdet_ratio_per_dim"] = float(value) / dim if sign > 0 else None
            metrics["wall_s"] = time.perf_counter() - t0 + 0.1 * gen
            yield draw(64), None, metrics
            if c.loop.kind == LoopKind.fully_synthetic:
                train = synth
            elif c.loop.kind == LoopKind.synthetic_augmentation:  # the same real set every generation
                train = np.concatenate([fixed_real, synth])
            else:  # fresh data: a new real draw every generation
                train = np.concatenate([rng.standard_normal((c.loop.n_real, dim)), synth])

    return _write_run(Path(run_dir), cfg, simulate, partial)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    import scipy.linalg

    ma, mb = a.mean(0), b.mean(0)
    eps = 1e-3 * np.eye(a.shape[1])  # 64 samples of 64 pixels: regularise the singular covariances
    ca, cb = np.cov(a, rowvar=False) + eps, np.cov(b, rowvar=False) + eps
    cross = scipy.linalg.sqrtm(ca @ cb)
    return float(np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * np.real(cross)))


def _knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: a point is covered when inside some k-NN ball of the other set."""
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # real x fake
    precision = float(np.mean((d <= radii(real)[:, None]).any(axis=0)))
    recall = float(np.mean((d <= radii(fake)[None, :]).any(axis=1)))
    return precision, recall


def write_digits_run(run_dir: str | Path, generations: int = 3, biases: tuple[float, ...] = (1.0, 0.5),
                     partial: bool = False) -> Path:
    """A 'diffusion on digits' run: real 8x8 digits blurred and mode-collapsed a little more each generation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)[:, None]  # (n, 1, 8, 8)
    labels = digits.target
    cfg = Config(out=str(run_dir), data=DataConfig(name=DataName.digits, n_reference=200),
                 model=ModelConfig(family=Family.diffusion), sample=SampleConfig(),
                 metrics=MetricsConfig(features=Features.classifier),
                 loop=LoopConfig(generations=generations, n_init=300, n_synth=300))
    cfg.sweep = {"sample.bias": list(biases)}
    reference = images[:200].reshape(200, -1).astype(float)

    def simulate(c: Config, index: int):
        rng = np.random.default_rng(index)
        for gen in range(1, c.loop.generations + 1):
            t0 = time.perf_counter()
            # lower lambda keeps fewer classes (less diversity); later generations are noisier
            n_classes = max(1, round(10 * c.sample.bias ** gen))
            pick = rng.permutation(np.flatnonzero(labels[200:] < n_classes))[:64] + 200
            x = images[pick].astype(float)
            x = np.clip(x + rng.normal(0, 18 * (gen - 1), x.shape), 0, 255).astype(np.uint8)
            fake = x.reshape(len(x), -1).astype(float)
            precision, recall = _knn_precision_recall(reference, fake)
            p = np.bincount(labels[pick], minlength=10) / len(pick)
            entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            metrics = {"fid": _frechet(reference, fake) / 1e3, "precision": precision, "recall": recall,
                       "class_entropy": entropy, "class_kl": float(np.log(10) - entropy), "class_hist": p.tolist(),
                       "n_real": c.loop.n_init if gen == 1 else 0, "n_synth": 0 if gen == 1 else c.loop.n_synth}
            metrics["wall_s"] = time.perf_counter() - t0
            yield x, labels[pick], metrics

    return _write_run(Path(run_dir), cfg, simulate, partial)


def write_empty_run(run_dir: str | Path) -> Path:
    """A run whose first generation has not finished: config and chains, one gen dir without DONE."""
    run_dir = Path(run_dir)
    cfg = Config(out=str(run_dir), loop=LoopConfig(generations=3))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    name = chain_name(0, {})
    (run_dir / "chains.json").write_text(json.dumps([{"name": name, "index": 0, "assignment": {}, "loop": "fully_synthetic",
                                                      "bias": 1.0, "seed": 0, "family": "gaussian", "data": "gaussian",
                                                      "generations": 3}]))
    _gen_dir(run_dir, name, 1).mkdir(parents=True)
    return run_dir

"""Reading a run directory: config.yaml, chains.json and each chain's records.jsonl (its lines checked
against their SHA-256) into tidy records. Only finished generations count, and their numbers come
from the records: metrics.jsonl is a convenience copy, compared and named when it disagrees.
:class:`LiveRun` reads a growing run at a cost that does not grow with it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from mad.artifacts import CHAINS, CONFIG, METRICS, PREVIEW, RECORDS, RunDir
from mad.report.names import METRIC_ORDER, NON_METRIC_KEYS

BANDS = ("mean_std", "median_iqr")  # report.band: what a group of seeds draws
MAX_PREVIEW_GENS = 12  # sample columns per chain; evenly spaced, first and last always shown
SEED_KEY = "seed"


class ReportError(ValueError):
    """The directory is not a run directory; ``str(err)`` is one line."""


@dataclass
class ChainInfo:
    name: str
    index: int
    assignment: dict[str, Any]
    loop: str
    bias: float
    seed: Any
    family: str
    data: str
    generations: Optional[int]  # planned
    done: list[int] = field(default_factory=list)  # finished generations, ascending
    # where the chain's files are when it was merged from another run (compare_runs): that run's
    # directory and the chain's name there
    source: Optional[Path] = None
    source_name: Optional[str] = None

    def files(self, run_dir: Path) -> tuple[Path, str]:
        """(run directory, chain directory name) of this chain's generation files."""
        return (self.source or run_dir, self.source_name or self.name)


@dataclass
class RunData:
    run_dir: Path
    config_text: str
    config: dict[str, Any]
    chains: list[ChainInfo]
    rows: dict[tuple[str, int], dict[str, Any]]  # (chain, gen) -> metrics line; finished gens only
    metrics: list[str]
    sweep: dict[str, list[Any]]  # swept keys with their values, in config order
    # one line when metrics.jsonl disagrees with the records the rows come from (None: it agrees)
    metrics_note: Optional[str] = None

    def value(self, chain: str, gen: int, key: str) -> Optional[float]:
        return _finite(self.rows.get((chain, gen), {}).get(key))

    def setting(self, chain: ChainInfo, dotted: str, default: Any = None) -> Any:
        """A chain's config value: its sweep assignment wins over the base config."""
        if dotted in chain.assignment:
            return chain.assignment[dotted]
        return _dotted_get(self.config, dotted, default)

    @property
    def n_done(self) -> int:
        return sum(len(c.done) for c in self.chains)


def _finite(v: Any) -> Optional[float]:
    """A float for plotting, or None (JSON null: a gap) for missing, non-numeric or non-finite."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _dotted_get(d: dict, dotted: str, default: Any = None) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def _label(v: Any) -> str:
    """A value as it reads in a legend or an axis: strings bare, lists as JSON, floats short."""
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _read_metric_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the driver may be appending this very line
        if isinstance(rec, dict) and "chain" in rec and "gen" in rec:
            out.append(rec)
    return out


def _read_chains(run_dir: Path, config: dict, lines: list[dict]) -> list[ChainInfo]:
    """chains.json when present; otherwise recovered from metrics lines and chain directories."""
    base_loop = str(_dotted_get(config, "loop.kind", "?"))
    base_bias = _dotted_get(config, "sample.bias", 1.0)
    base = {"family": str(_dotted_get(config, "model.family", "?")), "data": str(_dotted_get(config, "data.name", "?")),
            "generations": _dotted_get(config, "loop.generations")}
    records: list[dict] = []
    path = run_dir / CHAINS
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            records = [r for r in loaded if isinstance(r, dict) and "name" in r] if isinstance(loaded, list) else []
        except json.JSONDecodeError:
            records = []
    if not records:
        first_line: dict[str, dict] = {}
        for rec in lines:
            first_line.setdefault(str(rec["chain"]), rec)
        names = list(first_line)
        for entry in sorted(os.scandir(run_dir), key=lambda e: e.name):  # chains with no line yet
            if entry.is_dir() and entry.name not in first_line and ((Path(entry.path) / "gen_001").is_dir()
                                                                or (Path(entry.path) / RECORDS).is_file()):
                names.append(entry.name)
        for name in names:
            rec = first_line.get(name, {})
            records.append({"name": name, "loop": rec.get("loop"), "bias": rec.get("bias"), "seed": rec.get("seed"),
                            "assignment": {k: v for k, v in rec.items() if "." in k}})
    chains = []
    for i, r in enumerate(records):
        assignment = dict(r.get("assignment") or {})
        gens = r.get("generations", assignment.get("loop.generations", base["generations"]))
        chains.append(ChainInfo(
            name=str(r["name"]), index=int(r.get("index", i)), assignment=assignment,
            loop=str(r.get("loop") or assignment.get("loop.kind", base_loop)),
            bias=float(r.get("bias") if r.get("bias") is not None else assignment.get("sample.bias", base_bias)),
            seed=r.get("seed", assignment.get(SEED_KEY, _dotted_get(config, "seed"))),
            family=str(r.get("family") or assignment.get("model.family", base["family"])),
            data=str(r.get("data") or assignment.get("data.name", base["data"])),
            generations=int(gens) if gens is not None else None,
        ))
    return chains


def _order_metrics(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    known = [k for k in METRIC_ORDER if k in keys]
    return known + sorted(keys - set(known))


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory into tidy records; only finished (DONE) generations count."""
    import yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if not cfg_path.is_file():
        raise ReportError(f"{run_dir} is not a run directory (no config.yaml)")
    text = cfg_path.read_text()
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{cfg_path}: malformed YAML ({' '.join(str(err).split())})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{cfg_path}: the top level is not a mapping")
    lines = _read_metric_lines(run_dir / METRICS)
    chains = _read_chains(run_dir, config, lines)
    layout = RunDir(run_dir)
    rows: dict[tuple[str, int], dict] = {}
    for c in chains:
        # the driver's notion of finished: whole lines whose SHA-256 checks, consecutive from
        # generation 1 up to the last commit; their metrics are the numbers the report shows
        if layout.layout(c.name) == "records":
            state = layout.read_chain(c.name, full=True)
            c.done = [f.gen for f in state.finished]
            rows.update(((c.name, f.gen), f.metrics) for f in state.finished if isinstance(f.metrics, dict))
            continue
        c.done = layout.done_generations(c.name)  # a directory from before records.jsonl: metrics.json
        for gen in c.done:
            try:
                rec = layout.read_generation_metrics(c.name, gen)
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict):
                rows[(c.name, gen)] = rec
    # metrics.jsonl is a convenience copy (appended after each commit; a resumed driver may append
    # a generation twice, the later line wins): where it disagrees with the records, say so
    copy: dict[tuple[str, int], dict] = {}
    for rec in lines:
        try:
            copy[(str(rec["chain"]), int(rec["gen"]))] = rec
        except (TypeError, ValueError):
            continue
    differ = sum(copy.get(k) != v for k, v in rows.items()) + sum(k not in rows for k in copy)
    note = None
    if differ:
        note = (f"{run_dir / METRICS}: {differ} line(s) differ from the chains' records.jsonl (edited, "
                "emptied or cut); the report uses the records")
    metric_keys = {k for rec in rows.values() for k, v in rec.items()
                   if k not in NON_METRIC_KEYS and "." not in k and _finite(v) is not None}
    sweep = config.get("sweep") if isinstance(config.get("sweep"), dict) else {}
    if not sweep:  # no sweep in the config: recover the swept keys from the chains
        seen: dict[str, list] = {}
        for c in chains:
            for k, v in c.assignment.items():
                if v not in seen.setdefault(k, []):
                    seen[k].append(v)
        sweep = seen
    return RunData(run_dir=run_dir, config_text=text, config=config, chains=chains, rows=rows,
                   metrics=_order_metrics(metric_keys), sweep={k: list(v) for k, v in sweep.items()},
                   metrics_note=note)


class LiveRun:
    """``load_run`` for a run that is still growing, at a cost that does not grow with it: config.yaml,
    chains.json and the DONE markers are read once, then each ``load()`` parses only the lines appended
    to metrics.jsonl since the last one. The driver appends a line only after its generation is DONE,
    so an appended line is a finished generation. A metrics.jsonl that shrank (rewritten on resume)
    is read again from scratch.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._run: Optional[RunData] = None
        self._offset = 0
        self._metric_keys: set[str] = set()

    def load(self) -> RunData:
        path = self.run_dir / METRICS
        size = path.stat().st_size if path.is_file() else 0
        if self._run is None or size < self._offset:
            self._run = load_run(self.run_dir)
            self._metric_keys = set(self._run.metrics)
            # everything up to the last whole line has been read by load_run
            self._offset = self._whole_lines_end(path, 0, size)
            return self._run
        run = self._run
        with open(path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read(size - self._offset)
        end = chunk.rfind(b"\n") + 1  # a torn last line waits for the next load
        self._offset += end
        by_name = {c.name: c for c in run.chains}
        for line in chunk[:end].decode().splitlines():
            try:
                rec = json.loads(line)
                key = (str(rec["chain"]), int(rec["gen"]))
            except (ValueError, KeyError, TypeError):
                continue
            chain = by_name.get(key[0])
            if chain is None:
                continue
            run.rows[key] = rec
            if key[1] not in chain.done:
                chain.done.append(key[1])
                chain.done.sort()
            self._metric_keys.update(k for k, v in rec.items()
                                     if k not in NON_METRIC_KEYS and "." not in k and _finite(v) is not None)
        run.metrics = _order_metrics(self._metric_keys)
        return run

    @staticmethod
    def _whole_lines_end(path: Path, start: int, size: int) -> int:
        if not path.is_file():
            return 0
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
        return start + data.rfind(b"\n") + 1


def select_gens(done: list[int], limit: int = MAX_PREVIEW_GENS) -> list[int]:
    """At most ``limit`` generations, evenly spread, always the first and the last."""
    if len(done) <= limit:
        return list(done)
    idx = np.unique(np.round(np.linspace(0, len(done) - 1, limit)).astype(int))
    return [done[i] for i in idx]


def load_preview_xy(run_dir: Path, chain: str, gen: int) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
    """The preview samples of a finished generation and their labels (None for unlabelled data)."""
    path = RunDir(run_dir).gen_dir(chain, gen) / PREVIEW
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or len(f["x"]) == 0:  # none drawn: a last generation nobody scores
                return None
            return np.asarray(f["x"]), (np.asarray(f["y"]) if "y" in f.files and f["y"].ndim else None)
    except (OSError, ValueError, KeyError):
        return None


def load_preview(run_dir: Path, chain: str, gen: int) -> Optional[np.ndarray]:
    xy = load_preview_xy(run_dir, chain, gen)
    return None if xy is None else xy[0]


def run_band(run: RunData, band: Optional[str] = None) -> str:
    """``band`` when given (the report command's --band), else the run's ``report.band``, else mean_std."""
    value = band if band is not None else _dotted_get(run.config, "report.band", None) or "mean_std"
    if value not in BANDS:
        raise ReportError(f"report.band: unknown band {value!r}; choose one of {', '.join(BANDS)}")
    return str(value)


# Flat keys of the model section that one built-in family reads (the others read model.<family>).
_MODEL_KEYS_OF = {"estimator": ("gaussian",), "channels": ("diffusion",), "layers_per_block": ("diffusion",),
                  "attention": ("diffusion",), "num_train_timesteps": ("diffusion",), "label_dropout": ("diffusion",)}


def family_config(config: dict, families: Iterable[str]) -> dict:
    """``config`` with the model section cut to what ``families`` read: a family's own section
    (``model.gmm`` ...; the registry's families name them), the flat keys of the families that read
    them, and ``model.options`` only when set (plug-in families)."""
    from mad.models.registry import builtin_names

    families = set(families)
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    kept = {}
    for key, value in model.items():
        if key in builtin_names() and key not in families:
            continue  # another family's section
        if key in _MODEL_KEYS_OF and not families & set(_MODEL_KEYS_OF[key]):
            continue
        if key == "options" and value is None:
            continue
        kept[key] = value
    return {**config, "model": kept}
def final_value(run: RunData, chain: ChainInfo, metric: str) -> tuple[Optional[float], Optional[int]]:
    for gen in reversed(chain.done):
        v = run.value(chain.name, gen, metric)
        if v is not None:
            return v, gen
    return None, None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out if out or not prefix else {prefix[:-1]: d}


def run_labels(runs: list[RunData]) -> list[str]:
    """A label per run: the config keys whose values differ between the runs (``out``, the sweep
    itself and report settings aside), as key=value; the directory name when nothing differs."""
    flat = [{k.rstrip("."): v for k, v in _flatten(r.config).items()
             if not k.startswith(("out", "sweep", "report.", "ray.", "resources."))} for r in runs]
    for r, f in zip(runs, flat):  # swept values count as config too
        for k, vals in r.sweep.items():
            if k != SEED_KEY:
                f[k] = vals if len(vals) > 1 else vals[0]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    labels = []
    for r, f in zip(runs, flat):
        parts = [f"{k.rsplit('.', 1)[-1] if sum(x.rsplit('.', 1)[-1] == k.rsplit('.', 1)[-1] for x in differ) == 1 else k}"
                 f"={_label(f.get(k))}" for k in differ[:4]]
        labels.append(", ".join(parts) if parts else r.run_dir.resolve().name)
    if len(set(labels)) < len(labels):  # the same config twice: the directory tells them apart
        labels = [f"{lab} ({r.run_dir.resolve().name})" for lab, r in zip(labels, runs)]
    return labels


def compare_runs(runs: list[RunData]) -> tuple[RunData, list[tuple[str, Path]]]:
    """One RunData holding the chains of every run, each with a ``run`` key in its assignment (its
    run's label, :func:`run_labels`), so that the report draws each run as its own group(s)."""
    labels = run_labels(runs)
    chains, rows, sweep = [], {}, {"run": labels}
    for label, r in zip(labels, runs):
        for c in r.chains:
            name = f"{label}/{c.name}"
            chains.append(ChainInfo(name=name, index=len(chains), assignment={"run": label, **c.assignment},
                                    loop=c.loop, bias=c.bias, seed=c.seed, family=c.family, data=c.data,
                                    generations=c.generations, done=list(c.done), source=r.run_dir,
                                    source_name=c.name))
            rows.update({(name, gen): rec for (chain, gen), rec in r.rows.items() if chain == c.name})
        for k, vals in r.sweep.items():
            for v in vals:
                if v not in sweep.setdefault(k, []):
                    sweep[k].append(v)
    first = runs[0]
    metrics = _order_metrics({m for r in runs for m in r.metrics})
    merged = RunData(run_dir=first.run_dir, config_text=first.config_text, config=first.config, chains=chains,
                     rows=rows, metrics=metrics, sweep=sweep)
    return merged, [(label, r.run_dir) for label, r in zip(labels, runs)]

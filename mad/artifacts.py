"""The run directory: the only code that knows file names. Every write is atomic.

Layout::

    out/config.yaml                resolved config (resume refuses a different one)
    out/chains.json                the chains of the sweep
    out/metrics.jsonl              one line per (chain, generation)
    out/<chain>/gen_001/           manifest.json model.safetensors samples.npz preview.npz metrics.json DONE

(model.safetensors only where artifacts.keep_models keeps it, samples.npz and preview.npz only where
artifacts.samples keeps them.)

A file is written under a temporary name and moved into place with ``os.replace``;
``DONE`` is written last, so a generation directory without it is incomplete and is
redone on resume. This is atomic against a killed process (the failure Ray and users
cause); files are not fsync'ed, which would cost more than a Gaussian generation itself.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

CONFIG = "config.yaml"
CHAINS = "chains.json"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
MODEL = "model.safetensors"
SAMPLES = "samples.npz"
PREVIEW = "preview.npz"
GEN_METRICS = "metrics.json"
DONE = "DONE"
PREVIEW_SIZE = 64


class ResumeError(RuntimeError):
    """The run directory holds a run with another config."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files (and the report) are for others to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    _atomic_write_bytes(Path(path), buf.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def write_state(path: Path, state: dict, metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save

    _atomic_write_bytes(Path(path), save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))


def read_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # --------------------------------------------------------------- run level
    def exists(self) -> bool:
        return (self.root / CONFIG).is_file()

    def check_or_write_config(self, config_yaml: str, science: dict, science_of_existing) -> bool:
        """Write config.yaml for a new run; for an existing run check it describes the same science.

        Returns True when resuming. ``science_of_existing(text) -> dict`` parses the stored config.
        """
        path = self.root / CONFIG
        if path.is_file():
            old = science_of_existing(path.read_text())
            if old != science:
                diff = sorted(k for k in set(old) | set(science) if old.get(k) != science.get(k))
                raise ResumeError(
                    f"{self.root} holds a run with a different config (differs in: {', '.join(diff)}); "
                    "use another out= or delete it"
                )
            write_text(path, config_yaml)  # refresh non-science keys (report, ray, resources)
            return True
        if self.root.exists() and any(self.root.iterdir()):
            raise ResumeError(f"{self.root} exists, is not empty and holds no {CONFIG}; use another out=")
        write_text(path, config_yaml)
        return False

    def write_chains(self, chains: list[dict]) -> None:
        write_json(self.root / CHAINS, chains)

    def rewrite_metrics(self, records: Iterable[dict]) -> None:
        write_text(self.root / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def append_metrics(self, record: dict) -> None:
        # One short line appended with a single write: readers see whole lines.
        with open(self.root / METRICS, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def append_metrics_many(self, records: Iterable[dict]) -> None:
        """Append several lines with one open (a slice of a chain block); readers see whole lines."""
        with open(self.root / METRICS, "a") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    # --------------------------------------------------------------- generation level
    def gen_dir(self, chain: str, gen: int) -> Path:
        return self.root / chain / f"gen_{gen:03d}"

    def is_done(self, chain: str, gen: int) -> bool:
        return (self.gen_dir(chain, gen) / DONE).is_file()

    def done_generations(self, chain: str) -> list[int]:
        """Generations marked DONE, consecutive from 1 (a gap ends the list: later ones are redone)."""
        gens, g = [], 1
        while self.is_done(chain, g):
            gens.append(g)
            g += 1
        return gens

    def write_generation(self, chain: str, gen: int, *, manifest: dict, state: Optional[dict],
                         samples_x: Optional[np.ndarray], samples_y: Optional[np.ndarray], metrics: dict) -> None:
        d = self.gen_dir(chain, gen)
        done = d / DONE
        if done.exists():  # a redo after a crash between writes: unmark first
            done.unlink()
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / MANIFEST, manifest)
        if state is not None:
            write_state(d / MODEL, state)
        if samples_x is not None:  # None: the run keeps no samples (artifacts.samples=none)
            write_npz(d / SAMPLES, x=samples_x, y=samples_y)
            write_npz(d / PREVIEW, x=samples_x[:PREVIEW_SIZE],
                      y=None if samples_y is None else samples_y[:PREVIEW_SIZE])
        write_json(d / GEN_METRICS, metrics)
        write_text(done, "")

    def read_generation_metrics(self, chain: str, gen: int) -> dict:
        return json.loads((self.gen_dir(chain, gen) / GEN_METRICS).read_text())

    def read_samples(self, chain: str, gen: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        data = read_npz(self.gen_dir(chain, gen) / SAMPLES)
        return data["x"], data.get("y")

    def read_model(self, chain: str, gen: int) -> dict:
        return read_state(self.gen_dir(chain, gen) / MODEL)

    def has_model(self, chain: str, gen: int) -> bool:
        return (self.gen_dir(chain, gen) / MODEL).is_file()

    def has_samples(self, chain: str, gen: int) -> bool:
        return (self.gen_dir(chain, gen) / SAMPLES).is_file()

    def drop_samples(self, chain: str, gen: int) -> None:
        """Delete a generation's samples and preview (artifacts.samples=last keeps only the latest)."""
        for name in (SAMPLES, PREVIEW):
            p = self.gen_dir(chain, gen) / name
            if p.exists():
                p.unlink()

    def drop_model(self, chain: str, gen: int) -> None:
        p = self.gen_dir(chain, gen) / MODEL
        if p.exists():
            p.unlink()

"""The run directory: the only code that knows file names. Every write is atomic.

Layout::

    out/config.yaml                resolved config (resume refuses a different one)
    out/chains.json                the chains of the sweep
    out/metrics.jsonl              one line per (chain, generation)
    out/.lock                      held (fcntl.flock) by the one driver writing here; names its PID and host
    out/<chain>/gen_001/           manifest.json model.safetensors samples.npz preview.npz metrics.json DONE
    out/<chain>/FAILED.json        the chain stopped (it diverged); resume reports it instead of retrying

(model.safetensors only where artifacts.keep_models keeps it, samples.npz and preview.npz only where
artifacts.samples keeps them.)

A file is written under a temporary name and moved into place with ``os.replace``;
``DONE`` is written last, so a generation directory without it is incomplete and is
redone on resume. This is atomic against a killed process (the failure Ray and users
cause); files are not fsync'ed, which would cost more than a Gaussian generation itself.

``DONE`` is JSON: the size and SHA-256 of every file of the generation, hashed from the
bytes as they were written. Resume and ``python run.py verify`` check them, so a missing,
truncated or edited file is found and named. An empty ``DONE`` (run directories written
before checksums) records no checksums: its files are only checked to exist and parse.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
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
FAILED = "FAILED.json"
LOCK = ".lock"
PREVIEW_SIZE = 64
HASH = "sha256"
# Written by a run besides its chain directories; removed when an unfinished run is replaced.
_RUN_LEVEL_OUTPUTS = (CHAINS, METRICS, "report.html", "tensorboard", "figures")


class ResumeError(RuntimeError):
    """The run directory cannot be used as asked (another config, another writer, corrupt files)."""


class RunDirLocked(ResumeError):
    """Another driver holds the run directory's lock."""


class CorruptRunError(ResumeError):
    """A finished generation's files are not the ones written, and repair was not allowed."""


def _digest(data: bytes) -> dict:
    return {"size": len(data), HASH: hashlib.new(HASH, data).hexdigest()}


def _file_digest(path: Path) -> dict:
    h, size = hashlib.new(HASH), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"size": size, HASH: h.hexdigest()}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _npz_bytes(**arrays: Optional[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def _state_bytes(state: dict, metadata: Optional[dict[str, str]] = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()}, metadata=metadata)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files (and the report) are for others to read
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a failed write(): say which file (ENOSPC)
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), text.encode())


def write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(Path(path), _json_bytes(obj))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    _atomic_write_bytes(Path(path), _npz_bytes(**arrays))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def write_state(path: Path, state: dict, metadata: Optional[dict[str, str]] = None) -> None:
    _atomic_write_bytes(Path(path), _state_bytes(state, metadata))


def read_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock_fd: Optional[int] = None
        self._created = False  # this driver made the directory
        self._lock_created = False  # ... or the lock file in it
        self._wrote = False  # the config check passed and this driver wrote config.yaml
        self.replaced: Optional[list[str]] = None  # set when an unfinished run with another config was replaced

    # --------------------------------------------------------------- run level
    def exists(self) -> bool:
        return (self.root / CONFIG).is_file()

    def lock(self) -> None:
        """Take the run directory's lock (an OS lock, released by the OS when this process dies).

        A second driver on the same directory is refused with RunDirLocked naming the holder's
        PID and host; it changes nothing. Creates the directory when it does not exist yet.
        """
        path = self.root / LOCK
        if self.root.exists() and not path.exists() and not (self.root / CONFIG).exists() \
                and self.root.is_dir() and any(self.root.iterdir()):
            raise ResumeError(f"{self.root} exists, is not empty and holds no {CONFIG}; use another out=")
        try:
            self._created = not self.root.exists()
            self._lock_created = not path.exists()
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ResumeError(f"{path}: cannot create the run directory's lock file "
                              f"({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirLocked(f"{self.root} is in use by another run ({holder}); "
                                   "wait for it to end or use another out=") from None
            raise ResumeError(f"{path}: cannot lock ({err.strerror or err})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock. A driver that was refused (or failed) before writing anything removes
        the lock file and the directory it created: bad input leaves nothing behind."""
        if self._lock_fd is None:
            return
        if self._lock_created and not self._wrote:
            try:
                (self.root / LOCK).unlink()
                if self._created:
                    self.root.rmdir()
            except OSError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = None

    def check_or_write_config(self, config_yaml: str, science: dict, science_of_existing) -> bool:
        """Write config.yaml for a new run; for an existing run check it describes the same science.

        Returns True when resuming. ``science_of_existing(text) -> dict`` parses the stored config.
        A run with another config that never finished a generation (it failed early) is replaced:
        its outputs are removed and ``self.replaced`` lists the keys that differed.
        """
        path = self.root / CONFIG
        if path.is_file():
            try:
                old = science_of_existing(path.read_text())
            except Exception as err:  # unreadable or not YAML: name the file, no traceback
                raise ResumeError(f"{path}: not a readable config ({' '.join(str(err).split())[:200]}); "
                                  "restore it or use another out=") from None
            if not isinstance(old, dict):
                raise ResumeError(f"{path}: not a config mapping; restore it or use another out=")
            if old != science:
                diff = sorted(k for k in set(old) | set(science) if old.get(k) != science.get(k))
                if self._any_done():
                    raise ResumeError(
                        f"{self.root} holds a run with a different config (differs in: {', '.join(diff)}); "
                        "use another out= or delete it"
                    )
                self._clear_unfinished()
                self.replaced = diff
                self._wrote = True
                write_text(path, config_yaml)
                return False
            self._wrote = True
            write_text(path, config_yaml)  # refresh non-science keys (report, ray, resources, out)
            return True
        if self.root.exists() and any(p.name != LOCK for p in self.root.iterdir()):
            raise ResumeError(f"{self.root} exists, is not empty and holds no {CONFIG}; use another out=")
        self._wrote = True
        write_text(path, config_yaml)
        return False

    def _any_done(self) -> bool:
        return any(True for _ in self.root.glob(f"*/gen_*/{DONE}"))

    def _clear_unfinished(self) -> None:
        """Remove what a run that finished no generation wrote (its chains' folders and run-level files)."""
        for name in _RUN_LEVEL_OUTPUTS:
            p = self.root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for d in self.root.iterdir():
            if d.is_dir() and ((d / FAILED).exists() or any(d.glob("gen_*"))):
                shutil.rmtree(d)

    def write_chains(self, chains: list[dict]) -> None:
        write_json(self.root / CHAINS, chains)

    def rewrite_metrics(self, records: Iterable[dict]) -> None:
        write_text(self.root / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def append_metrics(self, record: dict) -> None:
        # One short line appended with a single write: readers see whole lines.
        path = self.root / METRICS
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as err:
            if err.filename is None:  # a failed write(): say which file (ENOSPC)
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise

    # --------------------------------------------------------------- chain level
    def write_failed(self, chain: str, info: dict) -> Path:
        path = self.root / chain / FAILED
        write_json(path, info)
        return path

    def read_failed(self, chain: str) -> Optional[dict]:
        """The recorded failure of a chain, or None. Delete the file to let a resume retry the chain."""
        path = self.root / chain / FAILED
        if not path.exists():
            return None
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = None
        return info if isinstance(info, dict) else {"what": f"{path} is unreadable"}

    def failed_path(self, chain: str) -> Path:
        return self.root / chain / FAILED

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

    def marked_generations(self, chain: str) -> list[int]:
        """Every generation of a chain marked DONE, gaps included."""
        d = self.root / chain
        gens = []
        for p in d.glob(f"gen_*/{DONE}") if d.is_dir() else ():
            try:
                gens.append(int(p.parent.name[len("gen_"):]))
            except ValueError:
                continue
        return sorted(gens)

    def write_generation(self, chain: str, gen: int, *, manifest: dict, state: Optional[dict],
                         samples_x: Optional[np.ndarray], samples_y: Optional[np.ndarray], metrics: dict) -> None:
        d = self.gen_dir(chain, gen)
        done = d / DONE
        if done.exists():  # a redo after a crash between writes: unmark first
            done.unlink()
        d.mkdir(parents=True, exist_ok=True)
        files = {MANIFEST: _json_bytes(manifest)}
        if state is not None:
            files[MODEL] = _state_bytes(state)
        if samples_x is not None:  # None: the run keeps no samples (artifacts.samples=none)
            files[SAMPLES] = _npz_bytes(x=samples_x, y=samples_y)
            files[PREVIEW] = _npz_bytes(x=samples_x[:PREVIEW_SIZE],
                                        y=None if samples_y is None else samples_y[:PREVIEW_SIZE])
        files[GEN_METRICS] = _json_bytes(metrics)
        # Hashed from the bytes in memory (no re-read); DONE, written last, records them.
        for name, data in files.items():
            _atomic_write_bytes(d / name, data)
        write_json(done, {"hash": HASH, "files": {name: _digest(data) for name, data in files.items()}})

    def verify_generation(self, chain: str, gen: int) -> Optional[str]:
        """None when the generation's files are the ones written, else one line naming the file and the problem."""
        d = self.gen_dir(chain, gen)
        try:
            text = (d / DONE).read_text()
        except OSError as err:
            return f"{d / DONE}: unreadable ({err.strerror or err})"
        if not text.strip():
            return _verify_unrecorded(d)
        try:
            files = json.loads(text)["files"]
            if not isinstance(files, dict):
                raise ValueError
            wanted = {str(n): (int(w["size"]), str(w[HASH])) for n, w in files.items()}
        except (ValueError, KeyError, TypeError):
            return f"{d / DONE}: not a valid DONE record"
        for name, (size, digest) in sorted(wanted.items()):
            p = d / name
            try:
                got = _file_digest(p)
            except FileNotFoundError:
                return f"{p}: missing"
            except OSError as err:
                return f"{p}: unreadable ({err.strerror or err})"
            if got["size"] != size:
                return f"{p}: {got['size']} bytes where {size} were written (truncated or replaced)"
            if got[HASH] != digest:
                return f"{p}: contents differ from what was written ({HASH} mismatch: edited or corrupted)"
        return None

    def unmark_from(self, chain: str, gen: int) -> None:
        """Unmark generation ``gen`` and every later one of the chain, so a resume recomputes them."""
        for g in self.marked_generations(chain):
            if g >= gen:
                (self.gen_dir(chain, g) / DONE).unlink()

    def read_generation_metrics(self, chain: str, gen: int) -> dict:
        return json.loads((self.gen_dir(chain, gen) / GEN_METRICS).read_text())

    def read_manifest(self, chain: str, gen: int) -> dict:
        return json.loads((self.gen_dir(chain, gen) / MANIFEST).read_text())

    def has_samples(self, chain: str, gen: int) -> bool:
        return (self.gen_dir(chain, gen) / SAMPLES).is_file()

    def read_samples(self, chain: str, gen: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        data = read_npz(self.gen_dir(chain, gen) / SAMPLES)
        return data["x"], data.get("y")

    def read_model(self, chain: str, gen: int) -> dict:
        return read_state(self.gen_dir(chain, gen) / MODEL)

    def has_model(self, chain: str, gen: int) -> bool:
        return (self.gen_dir(chain, gen) / MODEL).is_file()

    def drop_samples(self, chain: str, gen: int) -> None:
        """Delete a generation's samples and preview (artifacts.samples=last keeps only the latest)."""
        self._drop(chain, gen, SAMPLES, PREVIEW)

    def drop_model(self, chain: str, gen: int) -> None:
        self._drop(chain, gen, MODEL)

    def _drop(self, chain: str, gen: int, *names: str) -> None:
        d = self.gen_dir(chain, gen)
        present = [n for n in names if (d / n).exists()]
        if not present:
            return
        # The DONE record first: a crash in between leaves an unlisted file, never a listed missing one.
        try:
            record = json.loads((d / DONE).read_text() or "{}")
        except (OSError, ValueError):
            record = {}
        listed = record.get("files")
        if isinstance(listed, dict) and any(n in listed for n in present):
            for n in present:
                listed.pop(n, None)
            write_json(d / DONE, record)
        for n in present:
            (d / n).unlink()

def verify_run(root: str | os.PathLike) -> tuple[list[str], str]:
    """Check a whole run directory as resume does: (one line per problem, a summary line).

    Problems: a finished generation whose files are not the ones written (named), and a
    metrics.jsonl that does not hold exactly the finished generations' records. Failed and
    unfinished chains are facts, not problems; the summary counts them.
    """
    rd = RunDir(root)
    if not rd.exists():
        raise ResumeError(f"{rd.root} is not a run directory (no {CONFIG})")
    try:
        names = [str(c["name"]) for c in json.loads((rd.root / CHAINS).read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(d.name for d in rd.root.iterdir() if d.is_dir() and any(d.glob("gen_*")))
    problems: list[str] = []
    records: dict[tuple[str, int], dict] = {}
    marked: set[tuple[str, int]] = set()
    n_failed = 0
    for name in names:
        for gen in rd.marked_generations(name):
            marked.add((name, gen))
            problem = rd.verify_generation(name, gen)
            if problem:
                problems.append(problem)
                continue
            try:
                records[(name, gen)] = rd.read_generation_metrics(name, gen)
            except (OSError, ValueError) as err:
                problems.append(f"{rd.gen_dir(name, gen) / GEN_METRICS}: unreadable ({err})")
        n_failed += rd.read_failed(name) is not None
    lines: dict[tuple[str, int], dict] = {}
    bad_lines = 0
    try:
        text = (rd.root / METRICS).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            lines[(str(rec["chain"]), int(rec["gen"]))] = rec
        except (ValueError, KeyError, TypeError):
            bad_lines += 1
    mismatched = sorted(k for k in records if lines.get(k) != records[k])
    extra = sorted(k for k in lines if k not in marked)  # (a corrupt generation's line is no extra problem)
    if mismatched or extra or bad_lines:
        problems.append(f"{rd.root / METRICS}: {len(mismatched)} finished generation(s) missing or different, "
                        f"{len(extra) + bad_lines} other line(s) (a resume rebuilds it)")
    summary = (f"{rd.root}: {len(marked)} finished generation(s) of {len(names)} chain(s) checked, "
               f"{len(problems)} problem(s)" + (f"; {n_failed} chain(s) recorded as failed" if n_failed else ""))
    return problems, summary


def _verify_unrecorded(d: Path) -> Optional[str]:
    """A DONE without checksums (written before they existed): check what can be checked."""
    import zipfile

    for name in (MANIFEST, GEN_METRICS):
        p = d / name
        try:
            obj = json.loads(p.read_text())
        except FileNotFoundError:
            return f"{p}: missing"
        except (OSError, ValueError):
            return f"{p}: not valid JSON"
        if not isinstance(obj, dict):
            return f"{p}: not a JSON object"
    for name in (SAMPLES, PREVIEW):
        p = d / name
        if not p.exists():
            return f"{p}: missing"
        try:
            with zipfile.ZipFile(p) as z:
                if z.testzip() is not None:
                    raise zipfile.BadZipFile
        except (OSError, zipfile.BadZipFile, EOFError):
            return f"{p}: not a readable .npz (truncated or corrupted)"
    return None

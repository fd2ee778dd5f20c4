"""The run directory: the only code that knows file names. Every write is atomic or an append.

Layout::

    out/config.yaml                resolved config (resume refuses a different one)
    out/chains.json                the chains of the sweep
    out/metrics.jsonl              one line per (chain, generation)
    out/.lock                      held (fcntl.flock) by the one driver writing here; names its PID and host
    out/<chain>/records.jsonl      one line per finished generation: its manifest, metrics and checksums
    out/<chain>/gen_001/           model.safetensors samples.npz preview.npz, only what artifacts.* keeps
    out/<chain>/FAILED.json        the chain stopped (it diverged); resume reports it instead of retrying

A generation directory exists only while it holds a kept file (``artifacts.keep_models``,
``artifacts.samples``), so a big sweep that keeps the last model and no samples writes two files
per chain, not three or more per chain-generation.

Kept files are written under a temporary name and moved into place with ``os.replace``; then the
generation's line is appended to ``records.jsonl``. A batch of generations (a slice of a chain
block) is appended with one write, its last line marked ``"commit":true``: the generations count
once their commit line is whole, so a kill mid-write leaves a torn or unfinished tail that resume
drops and redoes. Files that ``keep_* = last`` no longer keeps are named in the commit line and
deleted after it, so a kill in between leaves an unlisted file, never a listed missing one. This is
atomic against a killed process (the failure Ray and users cause); nothing is fsync'ed, which would
cost more than a Gaussian generation itself.

Each line records the size and SHA-256 of every file written with its generation, hashed from the
bytes as they were written, and the SHA-256 of its own contents. Resume and ``python run.py verify``
check them, so a missing, truncated or edited file or line is found and named.

Run directories written before records.jsonl (one directory per generation with ``manifest.json``,
``metrics.json`` and a ``DONE`` holding the checksums, written last) are read and verified as they
are; a resume converts them to this layout. An empty ``DONE`` (from before checksums) records none:
its files are only checked to exist and parse.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

CONFIG = "config.yaml"
SCIENCE = "science.yaml"  # the science keys of the config the records were computed under; never rewritten
CHAINS = "chains.json"
METRICS = "metrics.jsonl"
RECORDS = "records.jsonl"
MANIFEST = "manifest.json"  # the old layout's (and GEN_METRICS, DONE)
MODEL = "model.safetensors"
SAMPLES = "samples.npz"
PREVIEW = "preview.npz"
GEN_METRICS = "metrics.json"
DONE = "DONE"
FAILED = "FAILED.json"
SPARE = ".gen_spare"  # an emptied generation directory kept for reuse while the driver runs
LOCK = ".lock"
PREVIEW_SIZE = 64
HASH = "sha256"
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW  # appends never follow a planted link
_NUMPY_DTYPES: frozenset = frozenset()  # torch dtypes safetensors.numpy writes alike (filled on first use)
# Written by a run besides its chain directories; removed when an unfinished run is replaced.
_RUN_LEVEL_OUTPUTS = (SCIENCE, CHAINS, METRICS, "report.html", "tensorboard", "figures")


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
    """safetensors bytes of a state dict of torch tensors or numpy arrays (``portable_state``)."""
    state = portable_state(state)
    if all(isinstance(v, np.ndarray) for v in state.values()):
        # the same bytes as safetensors.torch.save, five times faster for the small states of cheap families
        from safetensors.numpy import save as save_numpy

        return save_numpy({k: np.ascontiguousarray(v) for k, v in state.items()}, metadata=metadata)
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()}, metadata=metadata)


def portable_state(state: dict) -> dict:
    """The state with numpy arrays for tensors where that is exact (CPU, a dtype numpy has), else as it is.

    A chain block sends its kept weights back this way: the driver then writes them without importing
    torch, and unpickling an array costs microseconds where a tensor costs ~0.15 ms."""
    if all(isinstance(v, np.ndarray) for v in state.values()):
        return state
    global _NUMPY_DTYPES
    if not _NUMPY_DTYPES:
        _NUMPY_DTYPES = _numpy_dtypes()
    if not all(getattr(getattr(v, "device", None), "type", None) == "cpu" and v.dtype in _NUMPY_DTYPES
               for v in state.values()):
        return state
    return {k: v.detach().contiguous().numpy() for k, v in state.items()}


def _numpy_dtypes() -> frozenset:
    try:
        import torch
    except ImportError:
        return frozenset()
    return frozenset({torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                      torch.int8, torch.uint8, torch.bool})


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


def _write_kept(path: str, data: bytes) -> None:
    """``_atomic_write_bytes`` for a generation's kept file, into an existing directory: a fixed temporary
    name (the driver holds the run's lock, so nothing else writes there) and no mkstemp, ~5x faster."""
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a failed write(): say which file (ENOSPC)
            raise OSError(err.errno, err.strerror, path) from err
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
        self._kept: dict[str, dict[str, tuple[int, dict]]] = {}  # chain -> the files it keeps (open_chain)
        self._spares: set[str] = set()  # chains with an empty spare generation directory (see _make_gen_dir)
        self.science_sha: Optional[str] = None  # SHA-256 of science.yaml, stamped on every new record line
        self.config_edited: Optional[list[str]] = None  # science keys config.yaml had changed (rewritten on resume)

    # --------------------------------------------------------------- run level
    def exists(self) -> bool:
        return (self.root / CONFIG).is_file()

    def lock(self) -> None:
        """Take the run directory's lock (an OS lock, released by the OS when this process dies).

        A second driver on the same directory is refused with RunDirLocked naming the holder's
        PID and host; it changes nothing. Creates the directory when it does not exist yet.
        """
        path = self.root / LOCK
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ResumeError(_not_regular(path))
        if self.root.exists() and not path.exists() and not (self.root / CONFIG).exists() \
                and self.root.is_dir() and any(self.root.iterdir()):
            raise ResumeError(f"{self.root} exists, is not empty and holds no {CONFIG}; use another out=")
        try:
            self._created = not self.root.exists()
            self._lock_created = not path.exists()
            self.root.mkdir(parents=True, exist_ok=True)
            # never through a link (it would truncate a file elsewhere); O_NONBLOCK: a FIFO does not hang
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ResumeError(_not_regular(path)) from None
            raise ResumeError(f"{path}: cannot create the run directory's lock file "
                              f"({err.strerror or err})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ResumeError(_not_regular(path))
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

    def links(self) -> list[Path]:
        """Every symbolic link inside the run directory (the directory itself may be one)."""
        found = []
        if not self.root.is_dir():
            return found
        for top, dirs, files in os.walk(self.root):  # links to directories are listed, not followed
            found += [Path(top, n) for n in (*dirs, *files) if os.path.islink(os.path.join(top, n))]
        return sorted(found)

    def refuse_links(self) -> None:
        """ResumeError naming the first link planted in the run directory: the driver and the report
        write only files of their own, never through a link to a file elsewhere."""
        found = self.links()
        if found:
            more = f" ({len(found) - 1} more link(s))" if len(found) > 1 else ""
            raise ResumeError(f"{found[0]}: a symbolic link inside the run directory{more}; its files must be its "
                              "own (nothing is written through a link): remove it")

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

    def stored_science(self) -> Optional[bytes]:
        """science.yaml as written when the run was created, or None (a run from before it)."""
        try:
            return (self.root / SCIENCE).read_bytes()
        except FileNotFoundError:
            return None

    def check_or_write_config(self, config_yaml: str, science: dict, science_of_existing,
                              science_yaml: Optional[str] = None) -> bool:
        """Write config.yaml (and science.yaml) for a new run; for an existing run check it describes
        the same science.

        Returns True when resuming. ``science_of_existing(text) -> dict`` parses a stored config.
        science.yaml, the science keys the run was created with, is never rewritten: the records
        carry its SHA-256 (``self.science_sha``), so it is what a resume compares against; an edited
        config.yaml is rewritten (``self.config_edited`` lists the keys it had changed). A run with
        another config that never finished a generation (it failed early) is replaced: its outputs
        are removed and ``self.replaced`` lists the keys that differed.
        """
        path = self.root / CONFIG
        if path.is_file():
            old = self._science_of(path, science_of_existing)
            stored = self.stored_science()
            ref = old if stored is None else self._science_of(self.root / SCIENCE, science_of_existing)
            if ref != science:
                diff = _differing(ref, science)
                if self._any_done():
                    from mad.config import science_diff  # every key that differs: "key: A in the run, B now"

                    lines = science_diff(ref, science)
                    shown = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
                    raise ResumeError(
                        f"{self.root} holds a run with a different config (differs in: {shown}); "
                        "use another out= or delete it"
                    )
                self._clear_unfinished()
                self.replaced = diff
                self._write_config(config_yaml, science_yaml)
                return False
            if stored is not None and old != ref:
                self.config_edited = _differing(old, ref)
            self._wrote = True
            write_text(path, config_yaml)  # refresh non-science keys (report, ray, resources, out)
            if stored is None:
                if science_yaml is not None:  # a run from before science.yaml: bound from now on
                    write_text(self.root / SCIENCE, science_yaml)
                    self.science_sha = hashlib.new(HASH, science_yaml.encode()).hexdigest()
            else:
                self.science_sha = hashlib.new(HASH, stored).hexdigest()
            return True
        if self.root.exists() and any(p.name != LOCK for p in self.root.iterdir()):
            raise ResumeError(f"{self.root} exists, is not empty and holds no {CONFIG}; use another out=")
        self._write_config(config_yaml, science_yaml)
        return False

    def _write_config(self, config_yaml: str, science_yaml: Optional[str]) -> None:
        self._wrote = True
        write_text(self.root / CONFIG, config_yaml)  # first: a directory holding it is a run directory
        if science_yaml is not None:
            write_text(self.root / SCIENCE, science_yaml)
            self.science_sha = hashlib.new(HASH, science_yaml.encode()).hexdigest()

    def _science_of(self, path: Path, science_of_existing) -> dict:
        try:
            got = science_of_existing(path.read_text())
        except Exception as err:  # unreadable or not YAML: name the file, no traceback
            raise ResumeError(f"{path}: not a readable config ({' '.join(str(err).split())[:200]}); "
                              "restore it or use another out=") from None
        if not isinstance(got, dict):
            raise ResumeError(f"{path}: not a config mapping; restore it or use another out=")
        return got

    def binding_problem(self, chain: str, state: "ChainState", science_sha: Optional[str],
                        science_missing: bool = False) -> Optional[str]:
        """One line when the chain's finished generations are not this chain's of this run: a record of
        another chain (directories moved or swapped), or one computed under another config than
        science.yaml (``science_sha``; None: not checked). Lines from before the binding carry no
        config hash; their metrics record still names the chain."""
        where = self.root / chain / (RECORDS if state.layout == "records" else "")
        for f in state.finished:
            owner = (f.metrics or {}).get("chain")
            if owner is not None and owner != chain:
                return (f"{where}: generation {f.gen} is chain {owner}'s, not {chain}'s (chain directories moved "
                        "or swapped); put them back or use another out=")
            if science_sha is not None and f.config is not None and f.config != science_sha:
                if science_missing:
                    return (f"{self.root / SCIENCE}: missing, and generation {f.gen} of chain {chain} was computed "
                            f"under another config than this one ({where}); restore it or use another out=")
                return (f"{where}: generation {f.gen} of chain {chain} was computed under another config "
                        f"(sha256 {f.config[:12]}...; this run's {SCIENCE}: {science_sha[:12]}...): a chain "
                        f"directory of another run, or {SCIENCE} edited; restore it or use another out=")
        info = self.read_failed(chain)
        owner = info.get("chain") if info else None
        if isinstance(owner, str) and owner != chain:
            return (f"{self.root / chain / FAILED}: records chain {owner}'s failure, not {chain}'s (chain "
                    "directories moved or swapped); put them back or use another out=")
        return None

    def _any_done(self) -> bool:
        return (any(True for _ in self.root.glob(f"*/gen_*/{DONE}"))
                or any(self.done_generations(p.parent.name) for p in self.root.glob(f"*/{RECORDS}")))

    def _clear_unfinished(self) -> None:
        """Remove what a run that finished no generation wrote (its chains' folders and run-level files)."""
        for name in _RUN_LEVEL_OUTPUTS:
            p = self.root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for d in self.root.iterdir():
            if d.is_dir() and ((d / FAILED).exists() or (d / RECORDS).exists() or any(d.glob("gen_*"))):
                shutil.rmtree(d)

    def metrics_generations(self) -> dict[str, set[int]]:
        """chain -> the generations metrics.jsonl names (its lines are appended after their commit, so
        a generation it names that records.jsonl lacks was finished and then lost)."""
        named: dict[str, set[int]] = {}
        try:
            text = (self.root / METRICS).read_text(errors="replace")
        except OSError:
            return named
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                named.setdefault(str(rec["chain"]), set()).add(int(rec["gen"]))
            except (ValueError, KeyError, TypeError):
                continue
        return named

    def lost_line(self, chain: str, gens: list[int]) -> str:
        """One line naming the chain, the file and the finished generations it no longer holds."""
        d = self.root / chain
        where = (f"{d}: chain directory missing" if not d.is_dir() else
                 f"{d / RECORDS}: missing" if self.layout(chain) == "none" else f"{d / RECORDS}: cut short")
        return (f"{where}; {len(gens)} finished generation(s) of chain {chain} lost: {_ranges(gens)} "
                f"({METRICS} names them)")

    def write_chains(self, chains: list[dict]) -> None:
        write_json(self.root / CHAINS, chains)

    def rewrite_metrics(self, records: Iterable[dict]) -> None:
        write_text(self.root / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def rewrite_metrics_if_idle(self, records: Iterable[dict]) -> bool:
        """Rebuild metrics.jsonl from the records (the report's repair) unless a driver holds the lock,
        which rebuilds it itself when it starts; True when rebuilt. The lock file is not created."""
        try:
            fd: Optional[int] = os.open(self.root / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            fd = None
        except OSError:  # a link or something else planted as .lock: leave the directory alone
            return False
        try:
            if fd is not None:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return False
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False
            self.rewrite_metrics(records)
            return True
        finally:
            if fd is not None:
                os.close(fd)

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

    def append_metrics_lines(self, lines: Iterable[str]) -> None:
        """Append records already dumped as JSON (a slice of a chain block) with one write; readers see whole lines."""
        path = self.root / METRICS
        try:
            with os.fdopen(os.open(path, _APPEND, 0o644), "a") as f:
                f.write("".join(line + "\n" for line in lines))
        except OSError as err:
            if err.filename is None:  # a failed write(): say which file (ENOSPC)
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise

    # --------------------------------------------------------------- generation level
    def chain_dir(self, chain: str) -> Path:
        return self.root / chain

    def gen_dir(self, chain: str, gen: int) -> Path:
        return self.root / chain / _gen_name(gen)

    def layout(self, chain: str) -> str:
        """``records`` (records.jsonl), ``dirs`` (a DONE per generation directory: written before
        records.jsonl existed) or ``none`` (nothing finished yet)."""
        if (self.root / chain / RECORDS).is_file():
            return "records"
        return "dirs" if (self.gen_dir(chain, 1) / DONE).is_file() else "none"

    def read_chain(self, chain: str, full: bool = True) -> ChainState:
        """What a chain's directory holds, in either layout. ``full``: parse and check every line
        (resume, verify); otherwise only which generations are finished (the report)."""
        layout = self.layout(chain)
        if layout == "records":
            path = self.root / chain / RECORDS
            return _parse_records(path.read_bytes(), path, full)
        if layout == "dirs":
            return self._read_dirs(chain, full)
        return ChainState("none", [], [], clean=True)

    def done_generations(self, chain: str) -> list[int]:
        """Finished generations, consecutive from 1 (after a gap, a corrupt or a torn line they are redone)."""
        return [f.gen for f in self.read_chain(chain, full=False).finished]

    def is_done(self, chain: str, gen: int) -> bool:
        return gen in self.done_generations(chain)

    def check_files(self, chain: str, state: ChainState) -> list[tuple[int, str]]:
        """(generation, one line) for every kept file of the finished generations that is not the one
        written: missing, truncated or edited. The DONE directories of the old layout are checked
        whole when read (``read_chain``)."""
        if state.layout != "records":
            return []
        problems = []
        for rel, (gen, want) in sorted(kept_files(state.finished).items()):
            problem = _check_file(self.root / chain / rel, want)
            if problem:
                problems.append((gen, problem))
        return problems

    def open_chain(self, chain: str, state: ChainState, n: int) -> None:
        """Make the chain's directory hold exactly its first ``n`` finished generations, in the records
        layout, before the driver appends: a torn or unfinished tail and the lines after ``n`` go (so
        they are redone), an old DONE-directory chain is converted, files no line keeps are removed
        (a redone generation's, or a drop that a crash interrupted). Atomic against a kill at any
        point: records.jsonl is replaced whole, and a file goes only once no line keeps it."""
        d = self.root / chain
        finished = state.finished[:n]
        kept = kept_files(finished)
        present = {rel: v for rel, v in kept.items() if (d / rel).is_file()}
        missing = sorted(set(kept) - set(present))  # dropped by a later line, now gone with it
        if (state.layout == "dirs" or not state.clean or n < len(state.finished) or missing
                or (finished and not finished[-1].commit)):
            lines = [f.raw if f.raw is not None else _encode_line(f.gen, True, _dumps(f.manifest),
                                                                  _dumps(f.metrics), f.files, f.drop,
                                                                  self.science_sha)
                     for f in finished]
            if finished:
                last = finished[-1]
                lines[-1] = _encode_line(last.gen, True, _dumps(last.manifest), _dumps(last.metrics),
                                         last.files, sorted({*last.drop, *missing}), last.config or self.science_sha)
                _atomic_write_bytes(d / RECORDS, b"".join(line + b"\n" for line in lines))
            elif (d / RECORDS).exists():
                (d / RECORDS).unlink()
        if d.is_dir():
            for sub in os.scandir(d):  # what no line keeps: the old layout's markers, redone generations
                if not (sub.is_dir() and (sub.name.startswith("gen_") or sub.name == SPARE)):
                    continue
                for f in os.scandir(sub.path):
                    if f"{sub.name}/{f.name}" not in present:
                        os.unlink(f.path)
                _rmdir_if_empty(Path(sub.path))
        self._kept[chain] = present

    def append_generations(self, chain: str, gens: list[NewGeneration], keep_models: str = "all",
                           keep_samples: str = "all") -> None:
        """Persist finished generations of one chain, in order: their kept files (each atomic), then
        one line per generation appended to records.jsonl with one write, the last marked as the
        commit, then the files that ``keep_* = last`` no longer keeps. A kill before the commit line
        is whole leaves the earlier files in place and the batch unfinished (redone on resume)."""
        if not gens:
            return
        if chain not in self._kept:
            state = self.read_chain(chain)
            self.open_chain(chain, state, len(state.finished))
        kept = self._kept[chain]
        d = os.path.join(self.root, chain)
        written: list[dict[str, dict]] = []
        for g in gens:
            files: dict[str, bytes] = {}
            if g.state is not None:
                files[gen_file(g.gen, MODEL)] = _state_bytes(g.state)
            if g.samples is not None:
                x, y = g.samples
                files[gen_file(g.gen, SAMPLES)] = _npz_bytes(x=x, y=y)
                files[gen_file(g.gen, PREVIEW)] = _npz_bytes(x=x[:PREVIEW_SIZE], y=None if y is None else y[:PREVIEW_SIZE])
            digests = {}
            if files:
                self._make_gen_dir(chain, g.gen)
            for rel, data in files.items():  # hashed from the bytes in memory, no re-read
                _write_kept(os.path.join(d, rel), data)
                digests[rel] = _digest(data)
            written.append(digests)
        after = {**kept, **{rel: (g.gen, w) for g, digests in zip(gens, written) for rel, w in digests.items()}}
        drop = []
        for names, policy in (((MODEL,), keep_models), ((SAMPLES, PREVIEW), keep_samples)):
            if policy == "last":
                of_kind = [rel for rel in after if rel.rsplit("/", 1)[1] in names]
                newest = max((after[rel][0] for rel in of_kind), default=0)
                drop += [rel for rel in of_kind if after[rel][0] < newest]
        lines = []
        for i, (g, digests) in enumerate(zip(gens, written)):
            commit = i == len(gens) - 1
            lines.append(_encode_line(g.gen, commit, _dumps(g.manifest), g.metrics_json, digests,
                                      sorted(drop) if commit else [], self.science_sha))
        path = os.path.join(d, RECORDS)
        try:
            with os.fdopen(os.open(path, _APPEND, 0o644), "ab") as f:
                f.write(b"".join(line + b"\n" for line in lines))
        except OSError as err:
            if err.filename is None:  # a failed write(): say which file (ENOSPC)
                raise OSError(err.errno, err.strerror, path) from err
            raise
        for rel in drop:
            try:
                os.unlink(os.path.join(d, rel))
            except FileNotFoundError:
                pass
            after.pop(rel)
        for name in sorted({rel.split("/", 1)[0] for rel in drop}):
            self._retire_gen_dir(chain, os.path.join(d, name))
        self._kept[chain] = after

    # Removing a directory costs ~1.6 ms on a file system mounted with online discard (this machine's
    # ext4), more than a Gaussian generation: a chain that keeps only its last model would pay it
    # every slice. So an emptied generation directory becomes the chain's spare, renamed into place
    # (microseconds) for the next kept generation, and the spares go when the driver ends.
    def _make_gen_dir(self, chain: str, gen: int) -> None:
        d = os.path.join(self.root, chain, _gen_name(gen))
        if chain in self._spares and not os.path.exists(d):
            os.rename(os.path.join(self.root, chain, SPARE), d)
            self._spares.discard(chain)
        else:
            os.makedirs(d, exist_ok=True)

    def _retire_gen_dir(self, chain: str, d: str) -> None:
        with os.scandir(d) as entries:
            if any(entries):
                return
        if chain in self._spares:
            _rmdir_if_empty(Path(d))
        else:
            os.rename(d, os.path.join(self.root, chain, SPARE))
            self._spares.add(chain)

    def remove_spares(self) -> None:
        """Remove the chains' spare directories (at the driver's end; a resume removes any a kill left)."""
        for chain in sorted(self._spares):
            _rmdir_if_empty(self.root / chain / SPARE)
        self._spares.clear()

    def _kept_of(self, chain: str) -> dict[str, tuple[int, dict]]:
        if chain not in self._kept:
            return kept_files(self.read_chain(chain).finished)
        return self._kept[chain]

    def has_samples(self, chain: str, gen: int) -> bool:
        return gen_file(gen, SAMPLES) in self._kept_of(chain)

    def has_model(self, chain: str, gen: int) -> bool:
        return gen_file(gen, MODEL) in self._kept_of(chain)

    def read_samples(self, chain: str, gen: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        data = read_npz(self.gen_dir(chain, gen) / SAMPLES)
        return data["x"], data.get("y")

    def read_model(self, chain: str, gen: int) -> dict:
        return read_state(self.gen_dir(chain, gen) / MODEL)

    # --------------------------------------------------------------- the old layout (read only)
    def _read_dirs(self, chain: str, full: bool) -> ChainState:
        """A chain written before records.jsonl: one directory per generation, DONE written last."""
        finished, problems, g = [], [], 1
        while (self.gen_dir(chain, g) / DONE).is_file():
            if not full:
                finished.append(Finished(g, None, None, {}, [], True))
                g += 1
                continue
            problem = self.verify_generation(chain, g)
            if problem is None:
                try:
                    d = self.gen_dir(chain, g)
                    text = (d / DONE).read_text()
                    listed = json.loads(text)["files"] if text.strip() else {
                        n: _file_digest(d / n) for n in (MODEL, SAMPLES, PREVIEW) if (d / n).is_file()}
                    files = {gen_file(g, n): w for n, w in listed.items() if n not in (MANIFEST, GEN_METRICS)}
                    finished.append(Finished(g, self.read_generation_metrics(chain, g),
                                             self.read_manifest(chain, g), files, [], True))
                except (OSError, ValueError, KeyError, TypeError) as err:
                    problem = f"{self.gen_dir(chain, g)}: unreadable ({err})"
            if problem:
                problems.append((g, problem))
                break
            g += 1
        return ChainState("dirs", finished, problems, clean=False)

    def marked_generations(self, chain: str) -> list[int]:
        """Old layout: every generation of a chain marked DONE, gaps included."""
        d = self.root / chain
        gens = []
        for p in d.glob(f"gen_*/{DONE}") if d.is_dir() else ():
            try:
                gens.append(int(p.parent.name[len("gen_"):]))
            except ValueError:
                continue
        return sorted(gens)

    def verify_generation(self, chain: str, gen: int) -> Optional[str]:
        """Old layout: None when the generation's files are the ones written, else one line naming the file."""
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
            wanted = {str(n): {"size": int(w["size"]), HASH: str(w[HASH])} for n, w in files.items()}
        except (ValueError, KeyError, TypeError):
            return f"{d / DONE}: not a valid DONE record"
        for name, want in sorted(wanted.items()):
            problem = _check_file(d / name, want)
            if problem:
                return problem
        return None

    def read_generation_metrics(self, chain: str, gen: int) -> dict:
        return json.loads((self.gen_dir(chain, gen) / GEN_METRICS).read_text())

    def read_manifest(self, chain: str, gen: int) -> dict:
        """A finished generation's manifest, from records.jsonl (or manifest.json in an old directory)."""
        if self.layout(chain) == "records":
            for f in self.read_chain(chain, full=True).finished:
                if f.gen == gen:
                    return f.manifest
            raise FileNotFoundError(f"{self.root / chain / RECORDS}: generation {gen} is not finished")
        return json.loads((self.gen_dir(chain, gen) / MANIFEST).read_text())


# ------------------------------------------------------------------- records.jsonl
@dataclass
class Finished:
    """One finished generation as its records line (or its old DONE directory) has it."""

    gen: int
    metrics: Optional[dict]  # its metrics.jsonl record (None when read with full=False)
    manifest: Optional[dict]
    files: dict[str, dict]  # written with it: path under the chain directory -> size and sha256
    drop: list[str]  # files of earlier generations its commit removed (artifacts.keep_* = last)
    commit: bool
    raw: Optional[bytes] = None  # its line as written, without the newline
    config: Optional[str] = None  # the SHA-256 of the run's science.yaml it was computed under (None: older line)


@dataclass
class ChainState:
    layout: str  # "records", "dirs" or "none" (see RunDir.layout)
    finished: list[Finished]  # consecutive from 1, up to the last commit before the first problem
    problems: list[tuple[Optional[int], str]]  # (generation if known, one line) per line not as written
    clean: bool  # records.jsonl holds exactly the finished lines (no torn, unfinished or bad tail)
    after_problem: list[int] = field(default_factory=list)  # generations named by whole lines from the first problem on


@dataclass
class NewGeneration:
    """A finished generation for ``RunDir.append_generations``; ``state``/``samples`` None: not kept."""

    gen: int
    manifest: dict
    metrics_json: str  # its metrics record as JSON, the same text as its metrics.jsonl line
    state: Optional[dict] = None
    samples: Optional[tuple[np.ndarray, Optional[np.ndarray]]] = None


_HEAD = re.compile(rb'\{"gen":(\d+),"commit":(true|false),"sha256":"([0-9a-f]{64})","rec":')


def _gen_name(gen: int) -> str:
    return f"gen_{gen:03d}"


def gen_file(gen: int, name: str) -> str:
    """A generation's file (MODEL, SAMPLES, PREVIEW) as a path under its chain's directory."""
    return f"{_gen_name(gen)}/{name}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _encode_line(gen: int, commit: bool, manifest_json: str, metrics_json: str, files: dict, drop: list,
                 config: Optional[str] = None) -> bytes:
    """One line: a head the report reads without parsing the rest, and the SHA-256 of the rest. The
    rest names the run it belongs to (``config``: the SHA-256 of its science.yaml) and, in its
    metrics record, the chain."""
    bound = "" if config is None else '"config":"%s",' % config
    payload = ('{%s"drop":%s,"files":%s,"manifest":%s,"metrics":%s}'
               % (bound, json.dumps(drop), _dumps(files), manifest_json, metrics_json)).encode()
    return b'{"gen":%d,"commit":%s,"sha256":"%s","rec":%s}' % (
        gen, b"true" if commit else b"false", hashlib.new(HASH, payload).hexdigest().encode(), payload)


def _parse_line(line: bytes, full: bool) -> tuple[Optional[Finished], Optional[str]]:
    m = _HEAD.match(line)
    if m is None or not line.endswith(b"}"):
        return None, "not a whole record line (edited or corrupted)"
    gen, commit = int(m[1]), m[2] == b"true"
    head = Finished(gen, None, None, {}, [], commit)
    if not full:
        return head, None
    payload = line[m.end():-1]
    if hashlib.new(HASH, payload).hexdigest() != m[3].decode():
        return head, f"generation {gen}: contents differ from what was written ({HASH} mismatch: edited or corrupted)"
    try:
        rec = json.loads(payload)
        files = {str(k): {"size": int(v["size"]), HASH: str(v[HASH])} for k, v in rec["files"].items()}
        config = rec.get("config")
        entry = Finished(gen, dict(rec["metrics"]), dict(rec["manifest"]), files, [str(p) for p in rec["drop"]],
                         commit, line, None if config is None else str(config))
    except (ValueError, KeyError, TypeError, AttributeError):
        return head, f"generation {gen}: not a valid record"
    return entry, None


def _parse_records(data: bytes, path: Path, full: bool) -> ChainState:
    """The finished generations of a records.jsonl: whole lines, consecutive from 1, up to the last
    commit line. A torn last line (no newline) is an unfinished write, not a problem; a whole line
    that is not as written is one, and it and every later line count as unfinished."""
    *lines, torn = data.split(b"\n")
    finished: list[Finished] = []
    pending: list[Finished] = []
    problems: list[tuple[Optional[int], str]] = []
    after: list[int] = []
    for i, line in enumerate(lines, 1):
        entry, problem = _parse_line(line, full)
        if problem is None and not problems and entry.gen != len(finished) + len(pending) + 1:
            problem = f"generation {entry.gen} where {len(finished) + len(pending) + 1} was expected"
        if problem is not None:
            problems.append((entry.gen if entry else None, f"{path}: line {i}: {problem}"))
            if not full:
                break
            if entry is not None:
                after.append(entry.gen)
            continue  # verify names every bad line; none after the first counts as finished
        if problems:
            after.append(entry.gen)
            continue
        pending.append(entry)
        if entry.commit:
            finished += pending
            pending = []
    return ChainState("records", finished, problems, clean=not (pending or problems or torn), after_problem=after)


def kept_files(finished: list[Finished]) -> dict[str, tuple[int, dict]]:
    """Files the finished generations keep: path under the chain directory -> (generation, size and sha256)."""
    kept: dict[str, tuple[int, dict]] = {}
    for f in finished:
        for rel in f.drop:
            kept.pop(rel, None)
        kept.update({rel: (f.gen, w) for rel, w in f.files.items()})
    return kept


def _check_file(p: Path, want: dict) -> Optional[str]:
    try:
        got = _file_digest(p)
    except FileNotFoundError:
        return f"{p}: missing"
    except OSError as err:
        return f"{p}: unreadable ({err.strerror or err})"
    if got["size"] != want["size"]:
        return f"{p}: {got['size']} bytes where {want['size']} were written (truncated or replaced)"
    if got[HASH] != want[HASH]:
        return f"{p}: contents differ from what was written ({HASH} mismatch: edited or corrupted)"
    return None


def _differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested config mappings."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k), b.get(k)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict) and va and vb:
            out += _differing(va, vb, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _ranges(gens: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    out, gens = [], sorted(gens)
    i = 0
    while i < len(gens):
        j = i
        while j + 1 < len(gens) and gens[j + 1] == gens[j] + 1:
            j += 1
        out.append(str(gens[i]) if i == j else f"{gens[i]}-{gens[j]}")
        i = j + 1
    return ", ".join(out)


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _show(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _not_regular(path: Path) -> str:
    kind = "a symbolic link" if path.is_symlink() else "not a regular file"
    return f"{path}: {kind}; the run directory's lock must be a file of its own: remove it"


def _rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


def verify_run(root: str | os.PathLike) -> tuple[list[str], str]:
    """Check a whole run directory as resume does: (one line per problem, a summary line).

    Problems: a finished generation's record line or kept file that is not the one written (named);
    records of another chain or run (moved, swapped or copied chain directories); a config.yaml whose
    science keys differ from science.yaml, which the records carry the SHA-256 of; finished
    generations lost (metrics.jsonl names them, the chain's records.jsonl or directory no longer
    holds them: the chain, the file and the generations are named); a metrics.jsonl that does not
    hold exactly the finished generations' records. Failed and unfinished chains (a torn last line
    included) are facts, not problems; the summary counts them.
    """
    rd = RunDir(root)
    if not rd.exists():
        raise ResumeError(f"{rd.root} is not a run directory (no {CONFIG})")
    try:
        names = [str(c["name"]) for c in json.loads((rd.root / CHAINS).read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        names = sorted(d.name for d in rd.root.iterdir()
                       if d.is_dir() and ((d / RECORDS).is_file() or any(d.glob("gen_*"))))
    problems: list[str] = [f"{p}: a symbolic link inside the run directory (its files must be its own; a run "
                           "refuses it)" for p in rd.links()]
    stored = rd.stored_science()
    sha = None if stored is None else hashlib.new(HASH, stored).hexdigest()
    if stored is not None:
        problems += config_problems(rd.root)
    records: dict[tuple[str, int], dict] = {}
    marked: set[tuple[str, int]] = set()
    n_failed = 0
    bound = False  # some record carries a config hash: science.yaml must be there
    foreign_chains: set[str] = set()
    for name in names:
        if rd.layout(name) == "records":
            try:
                state = rd.read_chain(name)
            except OSError as err:
                problems.append(f"{rd.root / name / RECORDS}: unreadable ({err.strerror or err})")
                continue
            bound = bound or any(f.config is not None for f in state.finished)
            problems += [p for _, p in state.problems] + [p for _, p in rd.check_files(name, state)]
            foreign = rd.binding_problem(name, state, sha)
            if foreign:  # its lines are another chain's: what they hold or lack says nothing about this one
                problems.append(foreign)
                foreign_chains.add(name)
                continue
            for f in state.finished:
                marked.add((name, f.gen))
                records[(name, f.gen)] = f.metrics
            marked.update((name, g) for g in state.after_problem)  # their metrics.jsonl lines are no extra problem
        else:
            for gen in rd.marked_generations(name):  # the old layout, gaps included
                marked.add((name, gen))
                problem = rd.verify_generation(name, gen)
                if problem:
                    problems.append(problem)
                    continue
                try:
                    records[(name, gen)] = rd.read_generation_metrics(name, gen)
                except (OSError, ValueError) as err:
                    problems.append(f"{rd.gen_dir(name, gen) / GEN_METRICS}: unreadable ({err})")
            owners = {str(r.get("chain")) for (c, _), r in records.items()
                      if c == name and isinstance(r, dict) and r.get("chain") is not None}
            if owners - {name}:
                problems.append(f"{rd.root / name}: holds generations of chain {sorted(owners - {name})[0]}, not "
                                f"{name} (chain directories moved or swapped); put them back or use another out=")
        n_failed += rd.read_failed(name) is not None
    if bound and stored is None:
        problems.append(f"{rd.root / SCIENCE}: missing (the records carry the SHA-256 of the config they were "
                        "computed under; restore it)")
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
    lost: dict[str, list[int]] = {}
    marked.update(k for k in lines if k[0] in foreign_chains)
    for chain, gen in sorted(k for k in lines if k not in marked and k[0] in names):
        lost.setdefault(chain, []).append(gen)
    for chain, gens in lost.items():
        problems.append(f"{rd.lost_line(chain, gens)}; a resume recomputes them")
    mismatched = sorted(k for k in records if lines.get(k) != records[k])
    extra = sorted(k for k in lines if k not in marked and k[0] not in lost)  # (a corrupt generation's line is no extra problem)
    if mismatched or extra or bad_lines:
        problems.append(f"{rd.root / METRICS}: {len(mismatched)} finished generation(s) missing or different, "
                        f"{len(extra) + bad_lines} other line(s) (a resume rebuilds it)")
    summary = (f"{rd.root}: {len(marked)} finished generation(s) of {len(names)} chain(s) checked, "
               f"{len(problems)} problem(s)" + (f"; {n_failed} chain(s) recorded as failed" if n_failed else ""))
    return problems, summary


def config_problems(root: Path) -> list[str]:
    """config.yaml against science.yaml: the keys an edit changed, in one line (none when they agree,
    or when there is no science.yaml: a run from before it)."""
    from mad.config import science_of_yaml

    root = Path(root)
    if not (root / SCIENCE).is_file():
        return []
    got = {}
    for name in (CONFIG, SCIENCE):
        try:
            got[name] = science_of_yaml((root / name).read_text())
            if not isinstance(got[name], dict):
                raise ValueError("not a mapping")
        except Exception as err:  # unreadable or not YAML
            return [f"{root / name}: not a readable config ({' '.join(str(err).split())[:200]})"]
    diff = _differing(got[SCIENCE], got[CONFIG])
    if not diff:
        return []
    shown = "; ".join(f"{k} ({_show(_get(got[SCIENCE], k))} in the run, {_show(_get(got[CONFIG], k))} in it)"
                      for k in diff[:5]) + ("; ..." if len(diff) > 5 else "")
    return [f"{root / CONFIG}: differs from {SCIENCE}, the config the records were computed under, in {shown} "
            "(edited; a resume rewrites it)"]


def _verify_unrecorded(d: Path) -> Optional[str]:
    """An old-layout DONE without checksums (written before they existed): check what can be checked."""
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

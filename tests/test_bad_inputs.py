"""Every bad input through ``python run.py`` as a user types it: exit 2, exactly one line on stderr
that names the key or the file, and no run directory created.

The cases run concurrently (each is its own process; most fail while the config loads) from one
module fixture, and each is reported as its own parametrized test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import run_cli

GAUSS = "configs/experiment/gaussian.yaml"
G = [GAUSS, "sweep={}"]  # one chain: the shipped sweep would override the keys under test


def _png(path: Path, size: tuple[int, int], value: int = 128) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, np.uint8)).save(path)


def _folder(tmp: Path, n: int = 12, size=(8, 8), labels: bool = True) -> Path:
    root = tmp / "images"
    for i in range(n):
        _png(root / (f"c{i % 2}" if labels else "") / f"{i}.png", size, 10 * i)
    return root


def _folder_args(root: Path, *extra: str) -> list[str]:
    return ["data.name=folder", f"data.root={root}", "data.n_reference=4", "model.family=diffusion",
            "metrics.features=raw", "metrics.n_eval=8", "metrics.k=3", "loop.n_init=8", "loop.generations=1",
            "sweep={}", *extra]


def _fake_png(tmp: Path) -> list[str]:
    root = _folder(tmp)
    (root / "c0" / "fake.png").write_text("this is not an image\n")
    return _folder_args(root)


def _corrupt_png(tmp: Path) -> list[str]:
    root = _folder(tmp)
    good = (root / "c1" / "1.png").read_bytes()
    (root / "c1" / "broken.png").write_bytes(good[: len(good) // 2])  # a valid header, then cut off
    return _folder_args(root)


def _mixed_sizes(tmp: Path) -> list[str]:
    root = _folder(tmp)
    _png(root / "c0" / "big.png", (16, 16))
    return _folder_args(root)


def _unlabeled_classifier(tmp: Path) -> list[str]:
    root = _folder(tmp, labels=False)
    return _folder_args(root, "metrics.features=classifier")


def _config_file(text: str | bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        p = tmp / "bad.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [str(p)]

    return make


def _existing_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*G, f"out={tmp / 'afile'}"]


def _under_a_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*G, f"out={tmp / 'afile' / 'run'}"]


def _read_only_mount(tmp: Path) -> list[str]:
    ro = tmp / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs a read-only mount (root with mount rights)")
    return [*G, f"out={ro / 'run'}"]


def _report_on(kind: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        d = tmp / "notarun"
        d.mkdir()
        if kind == "html_is_dir":  # the report cannot be written: one line naming the file
            shutil.copy(Path(__file__).parent.parent / "configs" / "experiment" / "gaussian.yaml", d / "config.yaml")
            (d / "chains.json").write_text("[]")
            (d / "metrics.jsonl").write_text("")
            (d / "report.html").mkdir()
        return ["report", str(d)]

    return make


def alias_bomb(levels: int) -> str:
    """A list under sweep.seed whose level i holds level i-1 nine times: 9**levels values from a few
    hundred bytes (issue 25: 6 levels took 259 s and 1.9 GB; 9 levels hung)."""
    parts = ["&a0 [" + ", ".join(["0"] * 9) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _bomb_file(levels: int) -> Callable[[Path], list[str]]:
    return _config_file(f"sweep:\n  seed: {alias_bomb(levels)}\n")


def _temp_dir_file(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*G, f"ray.temp_dir={tmp / 'afile'}"]


def _long_out(component: bool) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        tail = "x" * 256 if component else "/".join(["y" * 200] * 21)  # 256 > NAME_MAX; > 4096 bytes in all
        return [*G, f"out={tmp / 'run' / tail}"]

    return make


def _verify_long(component: bool) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        tail = "x" * 256 if component else "/".join(["y" * 200] * 21)
        return ["verify", str(tmp / "run" / tail)]

    return make


def _download(tmp: Path) -> list[str]:
    return [f"data.root={tmp / 'dl'}", "data.name=mnist", "sweep={}", "loop.generations=1"]


@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]] | list[str]
    names: str  # the key or file the line must name
    out: bool = True  # append out=<tmp>/run
    not_created: tuple[str, ...] = ()  # further paths (relative to tmp) that must not exist afterwards


CASES = [
    # non-finite numbers, for keys of every section (the check walks the schema)
    Case("lr-nan", [*G, "train.lr=nan"], "train.lr"),
    Case("lr-inf", [*G, "train.lr=inf"], "train.lr"),
    Case("lr-neg-inf", [*G, "train.lr=-inf"], "train.lr"),
    Case("train-cpus-nan", [*G, "resources.train_cpus=nan"], "resources.train_cpus"),
    Case("bias-nan", [*G, "sample.bias=nan"], "sample.bias"),
    Case("label-dropout-nan", [*G, "model.label_dropout=nan"], "model.label_dropout"),
    Case("ema-inf", [*G, "train.ema_decay=inf"], "train.ema_decay"),
    Case("real-fraction-nan", [*G, "loop.kind=fresh_data", "loop.real_fraction=nan", "loop.n_total=100"],
         "loop.real_fraction"),
    Case("sweep-nan", [*G, "sweep.train.lr=[0.001,nan]"], "train.lr"),
    Case("yaml-nan", _config_file("train: {lr: .nan}\n"), "train.lr"),
    # ranges
    Case("seed-negative", [*G, "seed=-1"], "seed"),
    Case("weight-decay-negative", [*G, "train.weight_decay=-0.1"], "train.weight_decay"),
    Case("eval-gpus-negative", [*G, "resources.eval_gpus=-1"], "resources.eval_gpus"),
    Case("num-cpus-zero", [*G, "ray.num_cpus=0"], "ray.num_cpus"),
    # sizes known from the config, checked before Ray starts
    Case("k-equals-n-eval", [*G, "metrics.n_eval=100", "metrics.k=100"], "metrics.k"),
    Case("k-above-n-eval", [*G, "metrics.k=600", "metrics.n_eval=100"], "metrics.k"),
    Case("k-vs-reference", [*G, "data.n_reference=5", "metrics.k=5"], "metrics.k"),
    Case("n-eval-1", [*G, "metrics.n_eval=1"], "metrics.n_eval"),
    Case("n-init-1-gaussian", [*G, "loop.n_init=1"], "loop.n_init"),
    Case("n-synth-1-gaussian", [*G, "loop.n_synth=1"], "loop.n_synth"),
    # config files
    Case("empty-file", _config_file(""), "bad.yaml"),
    Case("comments-only-file", _config_file("# nothing here\n"), "bad.yaml"),
    Case("binary-file", _config_file(bytes(range(256)) * 4), "bad.yaml"),
    Case("nul-bytes-file", _config_file(b"seed: 1\n\x00\x00\n"), "bad.yaml"),
    Case("missing-file", ["no/such/config.yaml"], "no/such/config.yaml"),
    Case("yaml-section-scalar", _config_file("loop: 5\n"), "loop"),
    Case("yaml-section-list", _config_file("data: [1, 2]\n"), "data"),
    Case("yaml-leaf-mapping", _config_file("seed: {a: 1}\n"), "seed"),
    Case("yaml-top-list", _config_file("- 1\n- 2\n"), "bad.yaml"),
    Case("override-section", [*G, "loop=5"], "loop"),
    Case("unknown-option", [*G, "--fast"], "--fast"),
    Case("two-config-files", [GAUSS, GAUSS], "gaussian.yaml"),
    # interpolations: only ${oc.env:VAR} in path keys
    Case("interp-env-in-number", [*G, "sample.steps=${oc.env:HOME}"], "sample.steps"),
    Case("interp-key-reference", [*G, "loop.n_real=${loop.n_init}"], "loop.n_real"),
    Case("interp-other-resolver", [*G, "data.root=${oc.decode:x}"], "data.root"),
    Case("interp-in-yaml", _config_file("loop: {n_init: '${oc.env:HOME}'}\n"), "loop.n_init"),
    Case("interp-missing-variable", [*G, "data.root=${oc.env:MAD_TEST_SURELY_UNSET}"], "data.root"),
    # out
    Case("out-existing-file", _existing_file, "afile", out=False),
    Case("out-under-a-file", _under_a_file, "afile", out=False),
    Case("out-proc", [*G, "out=/proc/mad-x"], "/proc/mad-x", out=False),
    Case("out-read-only-mount", _read_only_mount, "ro", out=False),
    # image folders and downloads: found while loading the data, before anything is written
    Case("folder-fake-png", _fake_png, "fake.png"),
    Case("folder-corrupt-png", _corrupt_png, "broken.png"),
    Case("folder-mixed-sizes", _mixed_sizes, "differ in size"),
    Case("folder-missing", ["data.name=folder", "data.root=/no/such/folder", "model.family=diffusion",
                            "metrics.features=raw", "sweep={}"], "/no/such/folder"),
    Case("folder-reference-too-big", lambda t: _folder_args(_folder(t), "data.n_reference=12", "metrics.k=3"),
         "data.n_reference"),
    Case("folder-unlabeled-classifier", _unlabeled_classifier, "metrics.features"),
    Case("download-offline", _download, "mnist", not_created=("dl",)),
    # bounded inputs (issue 25, item 8) and every value validated, swept or not (issue 20, item 4)
    Case("alias-bomb-6-levels", _bomb_file(6), "bad.yaml"),
    Case("alias-bomb-9-levels", _bomb_file(9), "bad.yaml"),
    Case("alias-bomb-override", [*G, f"sweep.seed={alias_bomb(9)}"], "sweep.seed"),
    Case("out-component-256", _long_out(True), "out: a path component is 256 bytes", out=False),
    Case("out-path-over-4096", _long_out(False), "out: the path is", out=False),
    Case("verify-component-256", _verify_long(True), "the limit is 255", out=False),
    Case("verify-path-over-4096", _verify_long(False), "the limit is 4096", out=False),
    Case("ray-temp-dir-is-a-file", _temp_dir_file, "ray.temp_dir"),
    Case("seed-negative-under-a-seed-sweep", [*G, "seed=-3", "sweep.seed=[4, 5, 6]"], "seed: must be at least 0"),
    Case("sweep-bad-value", [*G, "sweep.loop.n_init=[100, -5]"], "sweep.loop.n_init"),
    Case("sweep-duplicate-seed", [*G, "sweep.seed=[1, 1]"], "sweep.seed: lists 1 twice"),
    # the report command
    Case("report-not-a-run", _report_on("plain"), "notarun", out=False),
    Case("report-unwritable", _report_on("html_is_dir"), "report.html", out=False),
    Case("report-no-dir", ["report"], "usage", out=False),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    mounts = []

    def one(case: Case):
        tmp = base / case.id
        tmp.mkdir()
        try:
            args = case.args(tmp) if callable(case.args) else list(case.args)
        except pytest.skip.Exception as skip:
            return case.id, ("skip", str(skip))
        if (tmp / "ro").is_dir():
            mounts.append(tmp / "ro")
        if case.out:
            args.append(f"out={tmp / 'run'}")
        proc = run_cli(*args, timeout=300)
        return case.id, (tmp, proc)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            yield dict(pool.map(one, CASES))
    finally:
        for m in mounts:
            subprocess.run(["umount", str(m)], capture_output=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(results, case):
    tmp, proc = results[case.id]
    if tmp == "skip":
        pytest.skip(proc)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert case.names in lines[0], lines[0]
    assert not (tmp / "run").exists()
    for rel in case.not_created:
        assert not (tmp / rel).exists(), rel
    assert not any(p.name.startswith(".mad-probe-") for p in tmp.rglob("*")), "the out probe was left behind"


def test_at_least_40_bad_inputs():
    assert len(CASES) >= 40


def test_out_checks_leave_the_existing_file_alone(results):
    tmp, proc = results["out-existing-file"]
    assert (tmp / "afile").read_text() == "x"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_within_a_second(tmp_path, levels):
    import time

    from mad.config import ConfigError, load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(f"sweep:\n  seed: {alias_bomb(levels)}\n")
    assert len(path.read_bytes()) < 700
    for args in ((path, []), (None, [f"sweep.seed={alias_bomb(levels)}"]), (None, [f"seed={alias_bomb(levels)}"])):
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match="expands to more than 10,000 values"):
            load_config(*args)
        assert time.perf_counter() - t0 < 1.0
    # below the limit anchors and aliases load as before
    ok = tmp_path / "ok.yaml"
    ok.write_text("seed: &s 3\nsweep:\n  data.dim: [*s, 4]\n")
    assert load_config(ok).sweep == {"data.dim": [3, 4]}

"""What a newcomer runs first (issue 20): the README's two commands, and CI running the same."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT


def _readme_commands() -> list[str]:
    """The commands of the README's first code block, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readmes_test_command_as_written():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if c.endswith("pytest"))
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci, (test_command, ci)
    # and CI runs no other pytest: the README's command is the whole suite CI passes on
    assert [line for line in ci if "pytest" in line and not line.startswith("#")] == [test_command]


@pytest.mark.slow  # ~15 s alone, 31 s on a busy machine: building and installing a wheel
def test_the_built_wheel_installs_a_working_mad_command(tmp_path):
    """``pip wheel`` of the project, installed into a fresh venv (its dependencies from this
    machine's site-packages), gives a ``mad`` command: --help on it and on each subcommand, and a
    dry run of the default config, found inside the installed package, from a folder with no
    checkout in it."""
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("mad", "loops", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}

    def run(*cmd, cwd=tmp_path):
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
        return proc.stdout

    # --no-build-isolation: the machine's setuptools, not a fresh download of it (~35 s here)
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        cwd=src)
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert [w.name for w in wheels] == ["mad_loops-0.1.0-py3-none-any.whl"]
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv)
    py, mad = venv / "bin" / "python", venv / "bin" / "mad"
    run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheels[0])
    # the venv's own copy, not a checkout's or another install's
    where = run(py, "-c", "import mad, mad.config; print(mad.__file__); print(mad.config.DEFAULT_CONFIG)")
    assert all(line.startswith(str(venv)) for line in where.split()), where
    assert "run" in run(mad, "--help") and "verify" in run(mad, "--help")
    assert run(mad, "run", "--help").startswith("usage: mad run [CONFIG.yaml]")
    assert run(mad, "report", "--help").startswith("usage: mad report RUN_DIR")
    assert run(mad, "verify", "--help").startswith("usage: mad verify RUN_DIR")
    dry = run(mad, "run", "--dry-run", "loop.generations=2")
    assert "nothing written (--dry-run)" in dry and "generations: 2" in dry
    assert not (tmp_path / "runs").exists()
    bad = subprocess.run([str(mad), "paper"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown command 'paper'" in bad.stderr


def test_mad_and_run_py_parse_alike(capsys, tmp_path):
    """``mad run ARGS`` is ``python run.py ARGS``; --help anywhere prints the command's usage;
    a missing or unknown command is one line on stderr and exit 2."""
    from mad.cli import console, main

    args = ["configs/experiment/gaussian.yaml", "loop.generations=2", f"out={tmp_path / 'r'}", "--dry-run"]
    assert main(args) == 0
    via_run_py = capsys.readouterr().out
    assert console(["run", *args]) == 0
    assert capsys.readouterr().out == via_run_py and not (tmp_path / "r").exists()
    assert main(["verify", "--help"]) == 0 and capsys.readouterr().out.startswith("usage: python run.py verify")
    assert main(["loop.generations=2", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python run.py [CONFIG.yaml]")
    for argv, said in (([], "mad needs a command"), (["paper"], "unknown command 'paper'"),
                       (["run", "report"], "did you mean mad report")):
        assert console(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def test_data_parallel_training_without_ray_train_is_refused_before_anything_is_written(
        monkeypatch, capsys, tmp_path):
    """ray[train] (pandas, pyarrow: ~70 MB) is the ddp extra, not a base dependency: without it,
    train.num_workers > 1 is one line naming the key and the install command, exit 2."""
    import sys

    from mad.cli import main

    args = ["configs/experiment/digits.yaml", "train.num_workers=2", f"out={tmp_path / 'r'}"]
    assert main([*args, "--dry-run"]) == 0  # this machine has Ray Train
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed: imports fail
    for extra in ([], ["--dry-run"]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: train.num_workers:") and '.[ddp]' in err, err
    assert not (tmp_path / "r").exists()
    assert main(["configs/experiment/digits.yaml", f"out={tmp_path / 'r'}", "--dry-run"]) == 0  # 1 worker: fine

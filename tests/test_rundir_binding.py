"""Every file of a run directory is bound to its run and its chain (issue 25, cases 2, 3, 4 and 7):
records name their chain and carry the SHA-256 of science.yaml, so moved, swapped or copied chain
directories are refused; config.yaml is checked against science.yaml; verify and a rerun name the
chain, the file and the finished generations lost."""
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import cut_records, run_cli
from mad import artifacts
from mad.driver import Driver
from mad.config import load_config
from test_driver import GAUSS, records

pytestmark = pytest.mark.usefixtures("ray_local")

TWO = ["loop.generations=4", "sweep={}", "sweep.seed=[1,2]"]
C0, C1 = "c00-seed=1", "c01-seed=2"


def run_in_process(out: Path, *overrides: str) -> Driver:
    driver = Driver(load_config(None, [*GAUSS, f"out={out}", *overrides]), quiet=True)
    driver.run()
    return driver


def interrupt(out: Path, chain: str, n: int) -> None:
    """The chain as a run killed after its first ``n`` generations leaves it (metrics.jsonl included)."""
    cut_records(out, chain, n)
    n = len(artifacts.RunDir(out).done_generations(chain))  # what a commit covers: a block's slice counts whole
    path = out / "metrics.jsonl"
    keep = [line for line in path.read_text().splitlines(keepends=True)
            if json.loads(line)["chain"] != chain or json.loads(line)["gen"] <= n]
    path.write_text("".join(keep))


def snapshot(root: Path) -> dict:
    """Every file's bytes (a link: where it points), read without following links."""
    out = {}
    for top, dirs, files in os.walk(root):
        for n in (*dirs, *files):
            p = Path(top, n)
            if p.is_symlink():
                out[p] = os.readlink(p)
            elif p.is_file() and n != artifacts.LOCK:
                out[p] = p.read_bytes()
    return out


def test_swapped_chain_directories_are_refused_by_resume_and_named_by_verify(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, *TWO)
    for chain in (C0, C1):
        interrupt(out, chain, 2)
    tmp = out / "tmp"
    (out / C0).rename(tmp)
    (out / C1).rename(out / C0)
    tmp.rename(out / C1)
    before = snapshot(out)
    proc = run_cli(*GAUSS, *TWO, f"out={out}", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{out / C0 / 'records.jsonl'}: generation 1 is chain {C1}'s, not {C0}'s" in lines[0], lines
    assert "1 more chain(s)" in lines[0]
    assert snapshot(out) == before  # nothing written, nothing recomputed
    proc = run_cli("verify", str(out))
    assert proc.returncode == 1
    problems = proc.stdout.strip().splitlines()[:-1]
    assert sorted(problems) == sorted(
        f"{out / a / 'records.jsonl'}: generation 1 is chain {b}'s, not {a}'s (chain directories moved or "
        "swapped); put them back or use another out=" for a, b in ((C0, C1), (C1, C0))), problems


def test_a_chain_directory_of_another_run_is_refused(tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    run_in_process(out, *TWO)
    run_in_process(other, *TWO, "sample.bias=0.8")  # the same chain names, another science
    interrupt(out, C0, 2)
    shutil.rmtree(out / C1)
    shutil.copytree(other / C1, out / C1)
    before = snapshot(out)
    proc = run_cli(*GAUSS, *TWO, f"out={out}", "--quiet")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out / C1 / 'records.jsonl'}: generation 1 of chain {C1}" in lines[0], lines
    assert "another config" in lines[0] and "science.yaml" in lines[0], lines
    assert snapshot(out) == before
    problems, _ = artifacts.verify_run(out)
    assert len(problems) == 1 and problems[0].startswith(f"{out / C1 / 'records.jsonl'}: generation 1"), problems


def test_edited_config_yaml_is_named_by_verify_and_rewritten_on_resume(tmp_path, capfd):
    out, ref = tmp_path / "run", tmp_path / "ref"
    run_in_process(ref, *TWO)
    run_in_process(out, *TWO)
    cfg = out / "config.yaml"
    text = cfg.read_text()
    assert "  bias: 1.0\n" in text
    cfg.write_text(text.replace("  bias: 1.0\n", "  bias: 0.5\n", 1))
    proc = run_cli("verify", str(out))
    assert proc.returncode == 1
    problems = proc.stdout.strip().splitlines()[:-1]
    assert len(problems) == 1 and problems[0].startswith(f"{cfg}: differs from science.yaml"), problems
    assert "sample.bias (1.0 in the run, 0.5 in it)" in problems[0], problems
    proc = run_cli("report", str(out))  # the page shows config.yaml: the report says it was edited
    assert proc.returncode == 0 and proc.stderr.strip().splitlines() == [f"mad: {problems[0]}"], proc.stderr
    # a resume under the edited value is refused, naming the key ...
    proc = run_cli(*GAUSS, *TWO, "sample.bias=0.5", f"out={out}", "--quiet")
    assert proc.returncode == 2 and "sample.bias: 1.0 in the run, 0.5 now" in proc.stderr, proc.stderr
    # ... and one under the run's own config resumes, rewriting config.yaml with one line
    capfd.readouterr()
    run_in_process(out, *TWO)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{cfg}: edited" in err[0] and "sample.bias" in err[0] and "rewritten" in err[0], err
    assert records(out) == records(ref)
    assert "  bias: 1.0\n" in cfg.read_text()
    assert artifacts.verify_run(out)[0] == []


def test_verify_and_resume_name_the_chain_the_file_and_the_generations_lost(tmp_path, capfd):
    out, ref = tmp_path / "run", tmp_path / "ref"
    run_in_process(ref, *TWO)
    shutil.copytree(ref, out)
    recs = out / C0 / "records.jsonl"
    data = recs.read_bytes()
    recs.write_bytes(data[: len(data) // 2])  # cut to half its size: a torn line where generation 3 was
    kept = len(artifacts.RunDir(out).done_generations(C0))
    assert 0 < kept < 4
    shutil.rmtree(out / C1)
    lost0 = "1-4" if kept == 0 else (f"{kept + 1}-4" if kept < 3 else "4")
    proc = run_cli("verify", str(out))
    assert proc.returncode == 1
    problems = proc.stdout.strip().splitlines()[:-1]
    assert problems == [
        f"{recs}: cut short; {4 - kept} finished generation(s) of chain {C0} lost: {lost0} (metrics.jsonl names "
        "them); a resume recomputes them",
        f"{out / C1}: chain directory missing; 4 finished generation(s) of chain {C1} lost: 1-4 (metrics.jsonl "
        "names them); a resume recomputes them"], problems
    capfd.readouterr()
    run_in_process(out, *TWO)
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"mad: {recs}: cut short; {4 - kept} finished generation(s) of chain {C0} lost: {lost0} "
                   "(metrics.jsonl names them); recomputing them",
                   f"mad: {out / C1}: chain directory missing; 4 finished generation(s) of chain {C1} lost: 1-4 "
                   "(metrics.jsonl names them); recomputing them"], err
    assert records(out) == records(ref)
    assert artifacts.verify_run(out)[0] == []


def test_records_carry_the_chain_and_the_science_hash_and_older_lines_still_resume(tmp_path):
    import hashlib

    out, ref = tmp_path / "run", tmp_path / "ref"
    run_in_process(ref, *TWO)
    run_in_process(out, *TWO)
    sha = hashlib.sha256((out / "science.yaml").read_bytes()).hexdigest()
    rd = artifacts.RunDir(out)
    for chain in (C0, C1):
        state = rd.read_chain(chain)
        assert [(f.config, f.metrics["chain"]) for f in state.finished] == [(sha, chain)] * 4
    # a run directory from before the binding: no science.yaml, lines without a config hash
    (out / "science.yaml").unlink()
    for chain in (C0, C1):
        fs = rd.read_chain(chain).finished[:2]
        (out / chain / "records.jsonl").write_bytes(b"".join(
            artifacts._encode_line(f.gen, f.commit, json.dumps(f.manifest, sort_keys=True),
                                   json.dumps(f.metrics, sort_keys=True), f.files, f.drop) + b"\n" for f in fs))
        interrupt(out, chain, 2)
    assert artifacts.verify_run(out)[0] == []
    run_in_process(out, *TWO)
    assert records(out) == records(ref)
    assert (out / "science.yaml").read_bytes() == (ref / "science.yaml").read_bytes()
    assert artifacts.verify_run(out)[0] == []


def test_report_uses_the_records_and_rebuilds_a_forged_or_emptied_metrics_copy(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, *TWO)
    metrics = out / "metrics.jsonl"
    good = metrics.read_bytes()
    first = run_cli("report", str(out))
    assert first.returncode == 0 and first.stderr == "", first.stderr
    summary = (out / "summary.csv").read_bytes()
    last = json.loads(good.decode().splitlines()[-1])
    forged = {**last, **{k: 1000.0 for k, v in last.items() if isinstance(v, float) and k not in ("bias", "time")}}
    for spoil in (lambda: metrics.write_text(good.decode() + json.dumps(forged) + "\n"), lambda: metrics.write_text("")):
        spoil()
        proc = run_cli("report", str(out))
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{metrics}:" in lines[0] and "the report uses the records" in lines[0] \
            and "rebuilt it from them" in lines[0], lines
        assert (out / "summary.csv").read_bytes() == summary
        assert proc.stdout == first.stdout  # the same table
        assert sorted(metrics.read_text().splitlines()) == sorted(good.decode().splitlines())  # in (chain, gen) order


# Every file and folder a driver (or the report) writes in a run directory, as a link planted there.
PLANTED = ["config.yaml", "science.yaml", "chains.json", "metrics.jsonl", "report.html", "summary.csv",
           "phase.csv", "tensorboard", "errors", "figures", f"{C0}", f"{C0}/records.jsonl", f"{C0}/FAILED.json",
           f"{C0}/gen_003", f"{C0}/gen_002/model.safetensors", f"{C0}/gen_002/samples.npz",
           f"{C0}/gen_003/model.safetensors.tmp", f"{C1}/gen_004/preview.npz"]


def _outside(tmp_path: Path) -> dict:
    """What lies outside the run directory, read without following links."""
    root = tmp_path / "outside"
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("links") / "run"
    run_in_process(out, *TWO)
    interrupt(out, C0, 2)
    return out


@pytest.mark.parametrize("name", PLANTED)
def test_no_file_outside_the_run_directory_is_written_through_a_planted_link(interrupted, tmp_path, name):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out, symlinks=True)
    target = tmp_path / "outside" / name.replace("/", "_")
    if "." in Path(name).name:  # a file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"precious\n")
    else:  # a folder
        target.mkdir(parents=True)
        (target / "keep").write_bytes(b"precious\n")
    link = out / name
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    before, outside = snapshot(out), _outside(tmp_path)
    with pytest.raises(artifacts.ResumeError, match=f"^{link}: a symbolic link inside the run directory"):
        run_in_process(out, *TWO, "report.html=true", "report.tensorboard=true")
    assert _outside(tmp_path) == outside
    assert snapshot(out) == before and link.is_symlink()
    problems, _ = artifacts.verify_run(out)
    assert f"{link}: a symbolic link inside the run directory (its files must be its own; a run refuses it)" in problems


def test_a_lock_that_is_a_link_or_no_regular_file_is_refused_and_its_target_untouched(interrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out, symlinks=True)
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(b"precious\n")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(target)
    before = snapshot(out)
    proc = run_cli(*GAUSS, *TWO, f"out={out}", "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: {out / '.lock'}: a symbolic link; the run directory's lock must be a file of its own: "
                     "remove it"], lines
    assert target.read_bytes() == b"precious\n" and snapshot(out) == before
    (out / ".lock").unlink()
    os.mkfifo(out / ".lock")  # opening a FIFO could hang: refused at once
    with pytest.raises(artifacts.ResumeError, match="not a regular file"):
        artifacts.RunDir(out).lock()
    # the report refuses a planted link too (it writes report.html, summary.csv ... there)
    (out / ".lock").unlink()
    (out / "summary.csv").symlink_to(target)
    proc = run_cli("report", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{out / 'summary.csv'}: a symbolic link" in proc.stderr and target.read_bytes() == b"precious\n"

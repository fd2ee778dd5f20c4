"""The run directory's records layout (mad/artifacts.py): one records.jsonl per chain, generation
directories only for kept files, batches committed by their last line, and what a kill at any point
of a write leaves behind. RunDir directly where no model is needed; the driver on Ray for the rest."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import finished
from mad import artifacts
from mad.artifacts import NewGeneration, RunDir


def _gen(g: int, model: bool = True, samples: bool = False) -> NewGeneration:
    rec = {"chain": "c", "gen": g, "w2": 1.0 / g}
    x = np.full((5, 2), float(g))
    return NewGeneration(g, {"gen": g, "synth": []}, json.dumps(rec, sort_keys=True),
                         state={"mean": torch.full((2,), float(g))} if model else None,
                         samples=(x, None) if samples else None)


def _run_dir(tmp_path: Path) -> RunDir:
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text("seed: 0\n")
    (root / "chains.json").write_text(json.dumps([{"name": "c"}]))
    return RunDir(root)


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def _metrics_jsonl(rd: RunDir) -> None:
    rd.rewrite_metrics(f.metrics for f in rd.read_chain("c").finished)


def test_batches_keep_only_the_last_model_and_verify(tmp_path):
    rd = _run_dir(tmp_path)
    for start in range(1, 101, 10):  # 100 generations in slices of 10, as a chain block writes them
        # the block sends only the slice's last weights (keep_models=last)
        rd.append_generations("c", [_gen(g, model=g == start + 9) for g in range(start, start + 10)],
                              keep_models="last", keep_samples="none")
    # two files for 100 generations: the records and the last model
    assert _files(rd.root / "c") == ["gen_100/model.safetensors", "records.jsonl"]
    rd.remove_spares()  # the emptied directory kept for reuse goes when the driver ends
    assert sorted(p.name for p in (rd.root / "c").iterdir()) == ["gen_100", "records.jsonl"]
    state = rd.read_chain("c")
    assert [f.gen for f in state.finished] == list(range(1, 101)) and state.clean and not state.problems
    assert state.finished[41].metrics == {"chain": "c", "gen": 42, "w2": 1.0 / 42}
    assert rd.has_model("c", 100) and not rd.has_model("c", 90)
    assert torch.equal(rd.read_model("c", 100)["mean"], torch.full((2,), 100.0))
    _metrics_jsonl(rd)
    problems, summary = artifacts.verify_run(rd.root)
    assert problems == [] and "100 finished generation(s) of 1 chain(s)" in summary
    # the report's cheap read (line heads only) agrees
    assert RunDir(rd.root).done_generations("c") == list(range(1, 101))


def test_a_kill_mid_batch_leaves_the_last_commit_and_resume_cleans_up(tmp_path):
    rd = _run_dir(tmp_path)
    rd.append_generations("c", [_gen(1, samples=True)], keep_models="last", keep_samples="last")
    before = (rd.root / "c" / "records.jsonl").read_bytes()
    kept_before = {p: (rd.root / "c" / p).read_bytes() for p in _files(rd.root / "c") if p.startswith("gen_")}
    rd.append_generations("c", [_gen(2, False), _gen(3, False), _gen(4, samples=True)],
                          keep_models="last", keep_samples="last")
    full = (rd.root / "c" / "records.jsonl").read_bytes()
    assert full.count(b'"commit":true') == 2
    # As a kill in the middle of the batch's append leaves it: its kept files are written, its lines
    # torn in the second, and the first batch's files not yet dropped (that comes after the commit).
    for cut in (len(before) + 10, full.index(b"\n", len(before)) + 1, len(full) - 5):
        (rd.root / "c" / "records.jsonl").write_bytes(full[:cut])
        for p, data in kept_before.items():
            (rd.root / "c" / p).parent.mkdir(exist_ok=True)
            (rd.root / "c" / p).write_bytes(data)
        state = RunDir(rd.root).read_chain("c")
        assert [f.gen for f in state.finished] == [1] and not state.problems and not state.clean, cut
        assert RunDir(rd.root).done_generations("c") == [1]
        _metrics_jsonl(rd)
        assert artifacts.verify_run(rd.root)[0] == []  # an unfinished write is a fact, not a problem
        resumed = RunDir(rd.root)
        resumed.open_chain("c", state, 1)
        # the file holds the committed line only, and what generation 4 wrote is gone
        assert (rd.root / "c" / "records.jsonl").read_bytes() == before
        assert _files(rd.root / "c") == ["gen_001/model.safetensors", "gen_001/preview.npz",
                                         "gen_001/samples.npz", "records.jsonl"]
        resumed.append_generations("c", [_gen(2, False), _gen(3, False), _gen(4, samples=True)],
                                   keep_models="last", keep_samples="last")
        assert (rd.root / "c" / "records.jsonl").read_bytes() == full


def test_an_edited_line_is_named_and_it_and_later_ones_are_redone(tmp_path):
    rd = _run_dir(tmp_path)
    for g in range(1, 5):
        rd.append_generations("c", [_gen(g)], keep_models="all")
    _metrics_jsonl(rd)
    path = rd.root / "c" / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1].replace(b'"w2": 0.5', b'"w2": 0.6') + b"".join(lines[2:]))
    state = RunDir(rd.root).read_chain("c")
    assert [f.gen for f in state.finished] == [1]
    assert [p for _, p in state.problems] == [f"{path}: line 2: generation 2: contents differ from what was "
                                              "written (sha256 mismatch: edited or corrupted)"]
    problems, _ = artifacts.verify_run(rd.root)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: line 2:")
    (rd.root / "c" / "gen_001" / "model.safetensors").unlink()  # a finished generation's kept file: named too
    (rd.root / "c" / "gen_003" / "model.safetensors").write_bytes(b"x")  # after the bad line: redone anyway
    problems, _ = artifacts.verify_run(rd.root)
    assert problems == [f"{path}: line 2: generation 2: contents differ from what was written "
                        "(sha256 mismatch: edited or corrupted)",
                        f"{rd.root / 'c' / 'gen_001' / 'model.safetensors'}: missing"]


# ------------------------------------------------------------------ through the driver and Ray
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("block_size", ["null", "0"])  # chain blocks, and one Ray task per stage
def test_a_big_sweep_writes_fewer_files_than_chain_generations(tmp_path, block_size):
    from test_driver import run_in_process

    out = tmp_path / "run"
    run_in_process(out, "loop.generations=12", "sweep={}", "sweep.seed=[0,1,2,3,4]", "artifacts.samples=none",
                   "artifacts.keep_models=last", "metrics.every=0", f"resources.block_size={block_size}")
    files = [p for p in out.rglob("*") if p.is_file()]
    per_chain = {c: sorted(str(p.relative_to(out / c)) for p in (out / c).rglob("*")) for c in finished(out, "c*")}
    assert all(f == ["gen_012", "gen_012/model.safetensors", "records.jsonl"] for f in per_chain.values()), per_chain
    # + config.yaml, science.yaml, chains.json, metrics.jsonl, .lock: 15 for 60 chain-generations
    assert len(files) <= 2 * 5 + 5
    assert artifacts.verify_run(out)[0] == []


@pytest.mark.usefixtures("ray_local")
def test_a_corrupt_last_model_with_nothing_earlier_kept_is_recomputed_from_the_start(tmp_path, capfd):
    from test_driver import records, run_in_process

    args = ["loop.generations=4", "sweep={}", "sweep.seed=[0,1]", "artifacts.samples=none",
            "artifacts.keep_models=last"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    run_in_process(ref, *args)
    shutil.copytree(ref, out)
    (out / "c00-seed=0" / "gen_004" / "model.safetensors").write_bytes(b"not a model")
    capfd.readouterr()
    run_in_process(out, *args)
    err = capfd.readouterr().err
    assert "c00-seed=0: what generation 3 needs to continue is no longer kept" in err
    assert "recomputing from generation 1" in err
    assert records(out) == records(ref)
    assert (out / "c00-seed=0" / "gen_004" / "model.safetensors").read_bytes() == \
        (ref / "c00-seed=0" / "gen_004" / "model.safetensors").read_bytes()
    assert artifacts.verify_run(out)[0] == []

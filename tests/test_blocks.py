"""Chain blocks (mad/blocks.py) through the real driver and Ray: the same records as one task per stage,
exact resume after a kill, and the knobs metrics.every and artifacts.samples."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, finished, n_finished
from mad import blocks
from mad.config import ConfigError, load_config

from test_driver import GAUSS, records, resume_in_process, run_in_process

pytestmark = pytest.mark.usefixtures("ray_local")

@pytest.mark.parametrize("extra", [
    ["resources.sample_shards=2", "metrics.every=2"],
    ["loop.synth_source=accumulate", "sample.bias=0.8"],
])
def test_block_records_equal_one_by_one_records(tmp_path, extra):
    args = ["loop.generations=5", "sweep.seed=[0,1]", *extra]  # x 3 loop kinds from default.yaml = 6 chains
    run_in_process(tmp_path / "tasks", *args, "resources.block_size=0")  # one Ray task per stage and chain
    run_in_process(tmp_path / "auto", *args)  # blocks sized automatically
    run_in_process(tmp_path / "twos", *args, "resources.block_size=4")  # blocks of 4 and 2 chains
    one_by_one = records(tmp_path / "tasks")
    assert len(one_by_one) == 30
    assert records(tmp_path / "auto") == one_by_one
    assert records(tmp_path / "twos") == one_by_one
    # the files too: every generation's samples are the same arrays
    import numpy as np

    for r in one_by_one[::7]:
        d = f"{r['chain']}/gen_{r['gen']:03d}/samples.npz"
        a, b = np.load(tmp_path / "tasks" / d), np.load(tmp_path / "auto" / d)
        assert np.array_equal(a["x"], b["x"])


@pytest.mark.parametrize("samples", ["last", "none"])
def test_killed_block_resumes_to_identical_records(tmp_path, samples):
    args = [*GAUSS, "loop.generations=40", "sweep={}", "sweep.seed=[0,1,2,3,4,5,6,7]", "loop.n_init=100",
            f"artifacts.samples={samples}", "artifacts.keep_models=last"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"out={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    # a slice's generations are committed together: wait for the first slice (one generation), kill in the next
    while (not (out / "c03-seed=3").is_dir() or len(finished(out, "c03-seed=3")["c03-seed=3"]) < 1) \
            and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-way through a block
    proc.wait()
    n_done = n_finished(out)
    assert 4 <= n_done < 320, f"the kill came too late to test resume ({n_done} generations done)"
    assert resume_in_process(args, out) >= 1  # resumed, not started over
    ref = tmp_path / "ref"
    run_in_process(ref, *args[len(GAUSS):])
    assert len(records(ref)) == 320
    assert records(out) == records(ref)


def test_metrics_every_and_kept_samples(tmp_path):
    args = ["loop.generations=7", "sweep={}", "sweep.seed=[0,1]", "metrics.every=3", "artifacts.samples=last",
            "artifacts.keep_models=last"]
    run_in_process(tmp_path / "blocks", *args)
    run_in_process(tmp_path / "tasks", *args, "resources.block_size=0")
    recs = records(tmp_path / "blocks")
    assert recs == records(tmp_path / "tasks")  # both paths honour the knobs alike
    for r in recs:
        assert "w2" in r and "trace_ratio" in r  # closed-form metrics every generation
        assert ("fid" in r and "precision" in r) == (r["gen"] in (3, 6, 7)), r["gen"]
    for out in (tmp_path / "blocks", tmp_path / "tasks"):
        assert finished(out) == {"c00-seed=0": list(range(1, 8)), "c01-seed=1": list(range(1, 8))}
        for chain in ("c00-seed=0", "c01-seed=1"):
            # one records.jsonl, and only the last generation's directory: its model and samples
            assert sorted(str(p.relative_to(out / chain)) for p in (out / chain).rglob("*") if p.is_file()) == [
                "gen_007/model.safetensors", "gen_007/preview.npz", "gen_007/samples.npz", "records.jsonl"]


def test_no_samples_and_no_sample_metrics(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "loop.generations=4", "sweep={}", "sweep.seed=[0,1,2]", "metrics.every=0",
                   "artifacts.samples=none")
    recs = records(out)
    assert len(recs) == 12
    assert all("w2" in r and "fid" not in r and "precision" not in r for r in recs)
    assert not list(out.rglob("samples.npz")) and not list(out.rglob("preview.npz"))
    assert len(list(out.rglob("model.safetensors"))) == 12  # keep_models=all


def test_last_generation_scoring_nothing_writes_no_empty_samples(tmp_path):
    """metrics.every=0: the last generation draws no samples, so it keeps no (empty) samples file."""
    from mad.artifacts import RunDir

    CHAIN = "c00-fully_synthetic"
    for path in ("blocks", "tasks"):
        out = tmp_path / path
        run_in_process(out, "loop.generations=3", "sweep={}", "metrics.every=0", "artifacts.samples=all",
                       *(["resources.block_size=0"] if path == "tasks" else []))
        rd = RunDir(out)
        assert [rd.has_samples(CHAIN, g) for g in (1, 2, 3)] == [True, True, False], path
        assert len(rd.read_samples(CHAIN, 2)[0]) > 0
        assert not (out / CHAIN / "gen_003" / "preview.npz").exists()
        assert rd.has_model(CHAIN, 3)


def test_knob_values_are_checked():
    with pytest.raises(ConfigError, match="metrics.every"):
        load_config(None, [*GAUSS, "metrics.every=-1"])
    with pytest.raises(ConfigError, match="resources.block_size"):
        load_config(None, [*GAUSS, "resources.block_size=-2"])
    with pytest.raises(ConfigError, match="synth_source=last"):
        load_config(None, [*GAUSS, "artifacts.samples=none", "loop.synth_source=accumulate"])
    with pytest.raises(ConfigError, match="redraws"):
        load_config(None, ["artifacts.samples=none"])  # the default config: diffusion


def test_block_planning():
    names = [f"c{i}" for i in range(1000)]
    auto = blocks.plan_blocks(names, None, cpus=2)
    assert [len(b) for b in auto] == [256, 256, 256, 232]
    assert max(map(len, auto)) <= blocks.MAX_BLOCK and sum(auto, []) == names
    assert [len(b) for b in blocks.plan_blocks(names[:10], None, cpus=4)] == [3, 3, 3, 1]
    assert [len(b) for b in blocks.plan_blocks(names[:10], 4, cpus=2)] == [4, 4, 2]
    assert blocks.slice_generations(None, 100, 50) == 1  # nothing measured yet
    assert blocks.slice_generations(0.001, 100, 50) == 20  # ~SLICE_S of work
    assert blocks.slice_generations(10.0, 100, 50) == 1


# ------------------------------------------------------------------ dashboards that scale
def test_live_report_reads_only_new_lines_and_matches_a_full_read(tmp_path):
    from mad.report import LiveRun, load_run

    out = tmp_path / "run"
    # one commit per generation, so that the run can be put back to any point of its progress
    run_in_process(out, "loop.generations=3", "sweep={}", "sweep.seed=[0,1]", "resources.block_size=0")
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)  # in the order the driver appended them
    full_records = {d: (d / "records.jsonl").read_text().splitlines(keepends=True)
                    for d in out.glob("c*") if d.is_dir()}

    def committed(k: int) -> None:
        """The chains' records.jsonl as they were when metrics.jsonl held its first k lines."""
        for d, recs in full_records.items():
            n = sum(json.loads(x)["chain"] == d.name for x in lines[:k])
            (d / "records.jsonl").write_text("".join(recs[:n]))

    committed(2)
    path.write_text("".join(lines[:2]))
    live = LiveRun(out)
    first = live.load()
    assert sorted(first.rows) == sorted((json.loads(x)["chain"], json.loads(x)["gen"]) for x in lines[:2])
    # a line the driver is still writing is left for the next load
    committed(4)
    with open(path, "a") as f:
        f.write(lines[2] + lines[3][:10])
    assert len(live.load().rows) == 3
    committed(len(lines))
    with open(path, "a") as f:
        f.write(lines[3][10:] + "".join(lines[4:]))
    inc, full = live.load(), load_run(out)
    assert inc.rows == full.rows and len(inc.rows) == 6
    assert inc.metrics == full.metrics
    assert {c.name: c.done for c in inc.chains} == {c.name: c.done for c in full.chains}


def test_tensorboard_summaries_per_group_for_many_chains(tmp_path):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mad.tracking import MAX_CHAIN_RUNS, GroupSummaryTracker, chain_log_dir

    n_seeds = MAX_CHAIN_RUNS // 2 + 3  # two groups: more chains than per-chain runs allow
    chains = [{"name": f"c{k}{s}", "assignment": {"loop.kind": k, "seed": s}, "generations": 3}
              for k in ("a", "b") for s in range(n_seeds)]
    rng = np.random.default_rng(0)
    w2 = {(c["name"], g): float(rng.random()) for c in chains for g in (1, 2, 3)}
    # generation 1 of every chain finished in an earlier session: counted, not logged again
    done = [{"chain": c["name"], "gen": 1, "w2": w2[(c["name"], 1)]} for c in chains]
    with GroupSummaryTracker(tmp_path, chains, done) as tracker:
        for g in (2, 3):
            for c in chains[::-1]:
                tracker.log_generation(c["name"], g, {"w2": w2[(c["name"], g)], "gen": g, "seed": 0})
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["loop.kind=a", "loop.kind=b"]
    for k in ("a", "b"):
        acc = EventAccumulator(str(chain_log_dir(tmp_path, f"loop.kind={k}")), size_guidance={"scalars": 0})
        acc.Reload()
        assert sorted(acc.Tags()["scalars"]) == ["w2", "w2_std"]
        names = [c["name"] for c in chains if c["assignment"]["loop.kind"] == k]
        for tag, fn in (("w2", np.mean), ("w2_std", np.std)):
            events = acc.Scalars(tag)
            assert [e.step for e in events] == [2, 3]
            expected = [fn([w2[(n, g)] for n in names]) for g in (2, 3)]
            np.testing.assert_allclose([e.value for e in events], expected, rtol=1e-6)

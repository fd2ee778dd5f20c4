"""The driver on a real multi-node Ray cluster: two raylets started with ``ray start`` on this machine.

One cluster serves the whole module (each Ray start costs 10-20 s here). Its head node alone first
runs the single-node reference; then a second node joins, and the same run, done again on two nodes
(and once more with a Ray worker killed mid-task), must give the same records, timing aside.

Isolation: every Ray process of this cluster descends from a ``ray start`` launched in a new session,
and Ray's daemons keep that session id, so teardown kills exactly those sessions (never ``ray stop``,
which would also stop any other Ray on the machine, such as the in-process ``ray_local`` of
tests/conftest.py). The auth token lives in the environment of our processes, not in ~/.ray.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT
from mad.driver import TIMING_FIELDS

pytestmark = pytest.mark.slow

# Tiny Gaussian loops (as in tests/test_driver.py): two chains, so two tasks are runnable at once.
ARGS = ["data.name=gaussian", "data.dim=3", "data.n_reference=300", "model.family=gaussian",
        "metrics.features=raw", "metrics.n_eval=200", "loop.n_init=40", "report.progress=false",
        "loop.generations=3", "sweep={}", "sweep.loop.kind=[fully_synthetic,fresh_data]",
        # one Ray task per stage and chain-generation, none shared: the per-stage path on a cluster
        # (cheap families otherwise run in chain blocks, and generation 1 of the two loops is shared)
        "resources.block_size=0", "resources.share_identical=false"]
STAGES = ("_train", "_sample", "_evaluate")
RUN_TIMEOUT_S = 240
# The CLI of the Ray next to this interpreter (a shim or another environment's Ray would not match).
RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
START_TIMEOUT_S = 120

# The state API needs the cluster's token, which this process may not have (ray_local sets its own),
# so it is queried from a short subprocess with the cluster's environment.
STATE_QUERY = """
import json, sys
from ray.util.state import list_jobs, list_nodes, list_tasks
url = sys.argv[1]
tasks = list_tasks(address=url, limit=10000, detail=True, raise_on_missing_output=False)
keys = ("task_id", "attempt_number", "name", "state", "job_id", "node_id", "worker_pid", "error_type")
print(json.dumps({
    "tasks": [{k: getattr(t, k) for k in keys} for t in tasks],
    "nodes": {n.node_id: n.resources_total for n in list_nodes(address=url, detail=True)},
    "drivers": {str(j.driver_info.pid): j.job_id for j in list_jobs(address=url) if j.driver_info},
}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sids: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) in sids:
                    pids.append(int(entry))
            except OSError:  # gone meanwhile
                pass
    return pids


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
    except OSError:
        return ""


def node_of_worker(pid: int) -> str | None:
    """The Ray node id of a worker process: its parent is the raylet, whose command line names the node."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        args = Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (OSError, IndexError, ValueError):
        return None
    return next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), None)


def kill_sessions(sids: set[int], timeout_s: float = 15) -> list[int]:
    """SIGKILL every process of the given sessions; returns those still alive after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while True:
        pids = [p for p in session_pids(sids) if p != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not pids or time.time() > deadline:
            return pids
        time.sleep(0.2)


def records(run_dir: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        for k in TIMING_FIELDS:
            r.pop(k)
    return sorted(recs, key=lambda r: (r["chain"], r["gen"]))


@dataclass
class Cluster:
    root: Path
    env: dict  # environment of every process that talks to the cluster
    address: str
    dashboard: str
    sids: set[int] = field(default_factory=set)
    reference: list[dict] = field(default_factory=list)  # records of the head-only (single-node) run

    def start_node(self, *args: str) -> None:
        proc = subprocess.Popen([RAY_CLI, "start", *args, "--disable-usage-stats"], env=self.env, cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.sids.add(proc.pid)  # session leader: its pid is the session id its daemons keep
        out, _ = proc.communicate(timeout=START_TIMEOUT_S)
        assert proc.returncode == 0, f"ray start {' '.join(args)} failed:\n{out[-3000:]}"

    def driver(self, out: Path, quiet: bool = True) -> subprocess.Popen:
        """``python run.py`` joined to this cluster through $RAY_ADDRESS, as a user would run it."""
        return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *ARGS, f"out={out}", "--quiet"],
                                cwd=ROOT, env={**self.env, "RAY_ADDRESS": self.address}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run(self, out: Path) -> subprocess.Popen:
        proc = self.driver(out)
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
        return proc

    def state(self) -> dict:
        proc = subprocess.run([sys.executable, "-c", STATE_QUERY, self.dashboard], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def tasks_of(self, driver_pid: int, condition, timeout_s: float = 20) -> tuple[list[dict], dict]:
        """The driver's task attempts, polled until ``condition(tasks)`` holds (task events arrive in batches)."""
        deadline = time.time() + timeout_s
        while True:
            st = self.state()
            job = st["drivers"].get(str(driver_pid))
            tasks = [t for t in st["tasks"] if job is not None and t["job_id"] == job]
            if condition(tasks) or time.time() > deadline:
                return tasks, st
            time.sleep(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head node alone runs the reference; then a worker node joins. Torn down whatever happens."""
    # Short root: Ray's unix socket paths live under it and must stay below ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="madray-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    port, dash = free_port(), free_port()
    c = Cluster(root, env, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}")
    try:
        c.start_node("--head", "--num-cpus=1", f"--port={port}", '--resources={"head_node": 1}',
                     f"--temp-dir={root}", "--include-dashboard=true", f"--dashboard-port={dash}",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                     "--node-name=head")
        reference = tmp_path_factory.mktemp("single") / "run"
        c.run(reference)
        c.reference = records(reference)
        c.start_node(f"--address={c.address}", "--num-cpus=1", '--resources={"worker_node": 1}',
                     f"--temp-dir={root}", f"--dashboard-agent-listen-port={free_port()}",
                     "--min-worker-port=0", "--max-worker-port=0", "--node-name=worker")
        yield c
    finally:
        left = kill_sessions(c.sids)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster survived teardown: {left}"


def test_two_node_run_spreads_tasks_and_matches_single_node(cluster, tmp_path):
    out = tmp_path / "two"
    proc = cluster.run(out)
    tasks, st = cluster.tasks_of(proc.pid, lambda ts: sum(t["state"] == "FINISHED" for t in ts) >= 19)

    nodes = {role: nid for nid, res in st["nodes"].items() for role in ("head_node", "worker_node") if role in res}
    assert len(nodes) == 2, st["nodes"]
    stage_tasks = [t for t in tasks if t["name"] in STAGES]
    # 2 chains x 3 generations x (train, sample, evaluate), each finished once
    assert len(stage_tasks) == 18 and all(t["state"] == "FINISHED" for t in stage_tasks), stage_tasks
    used = {t["node_id"] for t in stage_tasks}
    assert used == set(nodes.values()), f"tasks ran on {used}, cluster nodes {nodes}"

    assert len(cluster.reference) == 6
    assert records(out) == cluster.reference


def test_worker_killed_mid_task_is_retried_to_the_same_records(cluster, tmp_path):
    out = tmp_path / "killed"
    proc = cluster.driver(out)
    killed = None  # (task name, node id) of the worker we killed
    try:
        deadline = time.time() + RUN_TIMEOUT_S
        while killed is None and proc.poll() is None and time.time() < deadline:
            for pid in session_pids(cluster.sids):
                title = process_title(pid)
                # Ray renames a worker "ray::<task>" while it executes that task (and "ray::IDLE" after).
                if title in ("ray::_train", "ray::_sample"):
                    node = node_of_worker(pid)
                    os.kill(pid, signal.SIGKILL)
                    killed = (title.removeprefix("ray::"), node)
                    break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        proc.kill()
    assert killed is not None, "no training or sampling task was seen running"
    assert proc.returncode == 0, err[-3000:]

    def retried(ts):
        return (any(t["state"] == "FAILED" for t in ts)
                and any(t["attempt_number"] > 0 and t["state"] == "FINISHED" for t in ts))

    tasks, _ = cluster.tasks_of(proc.pid, retried)
    # The kill hit a running attempt: the state API shows exactly one failed attempt, of the task we saw
    # running, on the node of the worker we killed, because its worker died; a later attempt finished.
    failed = [t for t in tasks if t["state"] != "FINISHED"]
    assert len(failed) == 1, failed
    name, node = killed
    assert (failed[0]["name"], failed[0]["state"], failed[0]["error_type"]) == (name, "FAILED", "WORKER_DIED")
    assert node is not None and failed[0]["node_id"] == node, (failed, node)
    again = [t for t in tasks if t["task_id"] == failed[0]["task_id"] and t["attempt_number"] > failed[0]["attempt_number"]]
    assert [t["state"] for t in again] == ["FINISHED"], again

    assert records(out) == cluster.reference

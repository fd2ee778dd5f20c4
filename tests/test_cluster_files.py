"""The cluster launch files in cluster/: valid for Ray's launcher, KubeRay, Slurm and bash,
and in step with this project's install command, Ray version and config schema.

No cloud is touched: the launcher YAMLs go through the same JSON schema and the same
preparation and validation functions that `ray up` runs before it contacts a provider.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from mad.config import Config, ConfigError, ResourcesConfig, get_dotted

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
AWS = CLUSTER / "ray-cluster-aws.yaml"
ONPREM = CLUSTER / "ray-cluster-onprem.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
SLURM = CLUSTER / "slurm.sbatch"
README = CLUSTER / "README.md"
LAUNCHERS = [AWS, ONPREM]
INSTALL = "pip install -e ."

# Kubernetes object and container names: lower-case RFC 1123 labels.
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_yaml(path: Path) -> Dict[str, Any]:
    return yaml.safe_load(path.read_text())


def load_ray_schema() -> Dict[str, Any]:
    # The schema ships inside Ray; `ray up` validates every cluster config against it.
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def schema_errors(config: Dict[str, Any]) -> List[str]:
    validator = jsonschema.Draft7Validator(load_ray_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def rayjob_documents() -> tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """(the RayJob, other documents by kind) from the multi-document manifest."""
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, f"expected one RayJob in {RAYJOB.name}, found {len(jobs)}"
    return jobs[0], {d["kind"]: d for d in docs if d.get("kind") != "RayJob"}


def cluster_texts() -> Dict[str, str]:
    return {p.name: p.read_text() for p in sorted(CLUSTER.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- launcher YAMLs
@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_yaml_matches_rays_json_schema(path: Path) -> None:
    config = load_yaml(path)
    assert schema_errors(config) == []


@pytest.mark.parametrize(
    "path, spoil",
    [
        (AWS, lambda c: c["available_node_types"]["gpu_1x"].__setitem__("min_workers", "one")),
        (AWS, lambda c: c["available_node_types"]["gpu_1x"].__setitem__("gpus", 1)),
        (ONPREM, lambda c: c.__setitem__("min_workers", 1)),
    ],
    ids=["wrong-type", "unknown-node-key", "onprem-top-level-min_workers"],
)
def test_schema_check_rejects_a_spoiled_config(path: Path, spoil) -> None:
    # The schema check above must be able to fail: spoil a copy and expect errors.
    config = copy.deepcopy(load_yaml(path))
    spoil(config)
    assert schema_errors(config) != []


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_yaml_passes_ray_up_preparation(path: Path) -> None:
    # What `ray up` does before contacting the provider: merge the provider defaults,
    # build node types (provider local), then validate the result.
    prepared = prepare_config(load_yaml(path))
    validate_config(prepared)
    node_types = prepared["available_node_types"]
    assert prepared["head_node_type"] in node_types
    for name, node_type in node_types.items():
        for key in ("resources", "min_workers", "max_workers", "node_config"):
            assert key in node_type, f"{name} lacks {key}"
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    assert sum(t["min_workers"] for t in node_types.values()) <= prepared["max_workers"]


def test_ray_up_validation_rejects_an_unknown_head_type() -> None:
    config = load_yaml(AWS)
    config["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(config))


def test_aws_has_a_cpu_head_and_gpu_worker_pools() -> None:
    config = load_yaml(AWS)
    assert config["cluster_name"]
    assert config["provider"]["type"] == "aws"
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = {n: t for n, t in node_types.items() if n != config["head_node_type"]}
    gpu_pools = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_pools, "no GPU worker pool"
    for name, pool in gpu_pools.items():
        assert pool["node_config"]["InstanceType"], name
        assert 0 <= pool["min_workers"] <= pool["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    # Ray refuses a cluster whose Ray differs from the launcher's.
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert config["docker"]["image"].endswith("-gpu")


def test_onprem_lists_machines_and_leaves_node_types_to_ray() -> None:
    config = load_yaml(ONPREM)
    assert config["cluster_name"]
    provider = config["provider"]
    assert provider["type"] == "local"
    assert isinstance(provider["head_ip"], str) and provider["head_ip"]
    assert isinstance(provider["worker_ips"], list) and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]
    # The local provider aborts on these; Ray builds the single node type itself.
    assert "available_node_types" not in config and "head_node_type" not in config
    assert config["max_workers"] <= len(provider["worker_ips"])
    pinned = [c for c in config["setup_commands"] if "ray[default]==" in c]
    assert pinned and all(f"ray[default]=={ray.__version__}" in c for c in pinned)


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_setup_commands_install_this_project_where_it_is_mounted(path: Path) -> None:
    config = load_yaml(path)
    mounted = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert mounted, "the repository is not copied to the nodes"
    installs = [c for c in config["setup_commands"] if INSTALL in c]
    assert installs, f"no '{INSTALL}' in setup_commands"
    assert any(f"cd {remote} &&" in c for c in installs for remote in mounted)
    # Uploads honour .gitignore, which keeps runs/, data/ and caches on the laptop.
    assert ".gitignore" in config["rsync_filter"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_start_commands_start_a_head_and_join_workers_to_it(path: Path) -> None:
    config = load_yaml(path)
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    port = re.search(r"ray start --head --port=(\d+)", head)
    assert port, head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert f"ray start --address=$RAY_HEAD_IP:{port.group(1)}" in workers


# ----------------------------------------------------------------------------- KubeRay
def test_rayjob_has_the_fields_kuberay_requires() -> None:
    job, _ = rayjob_documents()
    assert job["apiVersion"] == "ray.io/v1"
    assert K8S_NAME.match(job["metadata"]["name"])
    spec = job["spec"]
    assert "run.py" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    assert len(groups) >= 2
    for name, group in groups:
        params = group["rayStartParams"]
        # The CRD types rayStartParams as map[string]string: numbers must be quoted.
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), name
        containers = group["template"]["spec"]["containers"]
        assert containers, name
        for container in containers:
            assert K8S_NAME.match(container["name"]), container["name"]
            assert container["image"], name
    images = {c["image"] for _, g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, f"head and workers should run one image, got {images}"
    assert f"{ray.__version__}-" in images.pop()


def test_rayjob_workers_request_gpus_and_the_head_does_not() -> None:
    job, _ = rayjob_documents()
    cluster = job["spec"]["rayClusterSpec"]
    head_limits = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        # Kubernetes rejects GPU requests that differ from the limits.
        assert resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"]) == resources["limits"]["nvidia.com/gpu"]


def test_rayjob_writes_the_run_directory_to_the_volume() -> None:
    job, others = rayjob_documents()
    pvc = others["PersistentVolumeClaim"]
    head_spec = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head_spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in head_spec["containers"][0]["volumeMounts"]}
    claimed = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]]
    assert len(claimed) == 1
    runs_path = mounts[claimed[0]]
    out = re.search(r"\bout=(\S+)", job["spec"]["entrypoint"])
    assert out and out.group(1).startswith(runs_path.rstrip("/") + "/"), job["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint into the submitter's shell: operators would run there.
    assert not re.search(r"&&|\|\||;|\|", job["spec"]["entrypoint"])
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# ----------------------------------------------------------------------------- Slurm
def test_slurm_script_is_valid_bash_that_starts_ray_and_runs_the_driver() -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the Slurm script"
    check = subprocess.run([bash, "-n", str(SLURM)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = SLURM.read_text()
    assert text.startswith("#!/bin/bash")
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, flags=re.M))
    assert directives.get("ntasks-per-node") == "1"  # one Ray node per Slurm node
    assert "nodes" in directives and "time" in directives
    for needle in ("ray start --head", "ray start --address", "srun", "--block", 'python -u run.py "$@"'):
        assert needle in text, needle
    # The head starts before the workers, and the driver runs after both.
    assert text.index("ray start --head") < text.index("ray start --address") < text.index("run.py \"$@\"")


# ----------------------------------------------------------------------------- README and drift
def test_readme_covers_launch_submit_watch_fetch_and_resume() -> None:
    text = README.read_text()
    for needle in (
        "ray up", "ray job submit --working-dir .", "ray dashboard", "8265", "ray rsync-down",
        "python run.py report", "report.html", "tensorboard", "resources.max_retries", "records.jsonl",
        "resources.sample_shards", "kubectl apply -f cluster/kuberay-rayjob.yaml", "sbatch cluster/slurm.sbatch",
    ):
        assert needle in text, needle
    for name in re.findall(r"cluster/([\w.-]+\.(?:yaml|sbatch))", text):
        assert (CLUSTER / name).is_file(), name


def test_readme_image_recipe_installs_the_project_on_the_pinned_ray() -> None:
    text = README.read_text()
    recipe = re.search(r"<<'EOF'\n(.*?)\nEOF", text, flags=re.S)
    assert recipe, "no Dockerfile recipe in the README"
    assert f"FROM rayproject/ray:{ray.__version__}-" in recipe.group(1)
    assert INSTALL in recipe.group(1)
    job, _ = rayjob_documents()
    # The RayJob's working_dir is the repository copied into the image by this recipe.
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert f"COPY --chown=ray:users . {runtime_env['working_dir']}" in recipe.group(1)


_SECTIONS = "data|model|train|sample|loop|metrics|resources|ray|artifacts|report|sweep"
_OVERRIDE = re.compile(rf"(?<![\w./$-])((?:out|seed)|(?:{_SECTIONS})(?:\.\w+)+)=")


def test_every_config_key_named_in_the_cluster_files_exists() -> None:
    # Commands in the docs and manifests must keep working when the schema changes.
    cfg = Config()
    seen = set()
    for name, text in cluster_texts().items():
        for key in _OVERRIDE.findall(text):
            seen.add(key)
            dotted = key[len("sweep."):] if key.startswith("sweep.") else key
            try:
                get_dotted(cfg, dotted)
            except ConfigError:
                pytest.fail(f"{name}: {key}= is not a config key")
        for field in re.findall(r"\bresources\.(\w+)", text):
            assert hasattr(ResourcesConfig(), field), f"{name}: resources.{field} is not in ResourcesConfig"
    assert {"out", "resources.sample_shards", "resources.train_gpus"} <= seen

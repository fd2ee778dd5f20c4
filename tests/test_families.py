"""Model families as plug-ins: the registry, the config's family sections, third-party families
(registered in a process, or installed through the ``mad.families`` entry points) run through
``run.py``, and the import wall between the driver and the families.

This module must stay importable outside pytest (the plug-in runs import it in a ``run.py``
process and in its Ray workers), so it imports no conftest.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mad.config import ConfigError, load_config
from mad.models import FamilyBase, ModelFamily, get_family, known_families, register, unregister

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["data.name=gaussian", "data.dim=2", "data.n_reference=40", "metrics.features=raw", "metrics.n_eval=40",
         "loop.generations=2", "loop.n_init=30", "sweep={}", "report.html=false", "report.tensorboard=false",
         "ray.num_cpus=2"]


@dataclass
class ToyOptions:
    scale: float = 1.0


class ToyFamily(FamilyBase):
    """Fits the mean only; samples mean + bias * scale * N(0, I). Has a closed-form metric."""

    name = "toy"
    data_kinds = ("vectors",)
    cheap = True
    config_class = ToyOptions

    def train(self, x, y, num_classes, model_cfg, train_cfg, seed, init_state=None, progress=False, device=None):
        return {"mean": torch.from_numpy(np.asarray(x, dtype=np.float64).mean(axis=0))}

    def sample(self, state, n, num_classes, sample_shape, model_cfg, sample_cfg, seed, class_probs=None,
               progress=False, device=None):
        rng = np.random.default_rng(seed)
        scale = sample_cfg.bias * model_cfg.options.scale
        return state["mean"].numpy() + scale * rng.standard_normal((n, *sample_shape)), None

    def closed_form_metrics(self, state, bias, real):
        return {"toy_mean_err": float(np.linalg.norm(state["mean"].numpy() - real.mean))}


def _env(extra_path: str = "") -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), extra_path) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _run_py_with_toy(*args: str) -> subprocess.CompletedProcess:
    """``run.py ARGS`` in a process that registered ToyFamily as "toy" first (as a launcher script would)."""
    launcher = textwrap.dedent("""
        import runpy, sys
        from mad.models import register
        from tests.test_families import ToyFamily
        register("toy", ToyFamily())
        sys.argv = ["run.py", *sys.argv[1:]]
        runpy.run_path("run.py", run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", launcher, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _records(out: Path) -> list[dict]:
    return sorted((json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()),
                  key=lambda r: (r["chain"], r["gen"]))


# ----------------------------------------------------------------------------- registry and config
def test_builtin_families_satisfy_the_protocol():
    for name in ("gaussian", "diffusion", "gmm", "kde", "mlp_diffusion", "gan"):
        fam = get_family(name)
        assert isinstance(fam, ModelFamily), name
        assert set(fam.data_kinds) <= {"vectors", "images"}
    assert get_family("gaussian").cheap and not get_family("diffusion").cheap
    assert get_family("diffusion").supports_data_parallel and not get_family("gaussian").supports_data_parallel
    assert hasattr(get_family("gaussian"), "closed_form_metrics")
    assert not hasattr(get_family("diffusion"), "closed_form_metrics")


def test_unknown_family_is_one_line_listing_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.family=nope"])
    msg = str(err.value)
    assert msg.startswith("model.family: unknown family 'nope'") and "\n" not in msg
    for name in ("diffusion", "gan", "gaussian", "gmm", "kde", "mlp_diffusion"):
        assert name in msg


def test_family_data_kinds_are_checked_at_load_time():
    with pytest.raises(ConfigError, match=r"^model.family: gmm takes vectors data, got data.name=digits"):
        load_config(None, ["model.family=gmm"])
    with pytest.raises(ConfigError, match=r"^model.family: diffusion takes images data"):
        load_config(None, ["data.name=toy2d", "metrics.features=raw"])
    with pytest.raises(ConfigError, match="does not support data-parallel"):
        load_config(None, [*QUICK, "model.family=gmm", "train.num_workers=2"])


def test_family_sections_are_typed_and_strict():
    cfg = load_config(None, [*QUICK, "model.family=gmm", "model.gmm.components=3"])
    assert cfg.model.gmm.components == 3
    with pytest.raises(ConfigError, match=r"^model.gmm.bogus: unknown key"):
        load_config(None, [*QUICK, "model.family=gmm", "model.gmm.bogus=1"])
    with pytest.raises(ConfigError, match=r"^model.gmm.components: must be positive"):
        load_config(None, [*QUICK, "model.family=gmm", "model.gmm.components=0"])
    with pytest.raises(ConfigError, match=r"^model.options: is for plug-in families"):
        load_config(None, [*QUICK, "model.family=kde", "model.options.x=1"])


def test_registered_family_options_become_its_config_class():
    register("toy", ToyFamily())
    try:
        cfg = load_config(None, [*QUICK, "model.family=toy", "model.options.scale=0.5"])
        assert cfg.model.options == ToyOptions(scale=0.5)
        assert load_config(None, [*QUICK, "model.family=toy"]).model.options == ToyOptions()
        with pytest.raises(ConfigError, match=r"^model.options.bogus: unknown key"):
            load_config(None, [*QUICK, "model.family=toy", "model.options.bogus=1"])
        with pytest.raises(ConfigError, match=r"^model.options.scale: "):
            load_config(None, [*QUICK, "model.family=toy", "model.options.scale=abc"])
        assert "toy" in known_families()
        with pytest.raises(ValueError, match="exists already"):
            register("toy", ToyFamily())
    finally:
        unregister("toy")
    with pytest.raises(ValueError, match="is not a model family: it lacks"):
        register("broken", object())


# ----------------------------------------------------------------------------- the import wall
FAMILY_MODULES = sorted(p.stem for p in (ROOT / "mad" / "models").glob("*.py")
                        if p.stem not in ("__init__", "protocol", "registry"))


@pytest.mark.parametrize("module", ["driver", "remote", "tasks"])
def test_driver_remote_and_tasks_import_no_family_module(module):
    assert {"gaussian", "diffusion", "gmm", "kde", "mlp_diffusion", "gan"} <= set(FAMILY_MODULES)
    tree = ast.parse((ROOT / "mad" / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            assert not any(name == f"mad.models.{f}" for f in FAMILY_MODULES), f"mad/{module}.py imports {name}"
    # and no branch on a family by name: neither the Family constants nor a built-in family's name as a string
    source = (ROOT / "mad" / f"{module}.py").read_text()
    assert "Family." not in source and "Family(" not in source
    names = {"gaussian", "diffusion", "gmm", "kde", "mlp_diffusion", "gan"}
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not names & set(literals), f"mad/{module}.py names a family: {sorted(names & set(literals))}"


# ----------------------------------------------------------------------------- plug-ins through run.py
def test_family_registered_in_a_test_module_runs_through_run_py(tmp_path):
    out = tmp_path / "run"
    proc = _run_py_with_toy(*QUICK, "model.family=toy", "model.options.scale=0.5", f"out={out}", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    assert [r["gen"] for r in recs] == [1, 2]
    assert all("toy_mean_err" in r and "fid" in r for r in recs)  # its closed form and the sample metrics
    samples = np.load(out / recs[0]["chain"] / "gen_001" / "samples.npz")["x"]
    assert 0.3 < samples.std() < 0.7  # scale 0.5 from model.options reached the sampler in the worker
    assert "family: toy" in (out / "config.yaml").read_text()

    bad = _run_py_with_toy(*QUICK, "model.family=toy", "data.name=digits", f"out={tmp_path / 'bad'}")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "toy takes vectors data" in bad.stderr and not (tmp_path / "bad").exists()


PLUGIN = '''
import numpy as np
import torch


class Shift:
    """A family from another package: the data mean plus bias-scaled unit noise, shifted by 100."""
    name = "epfam"
    data_kinds = ("vectors",)
    supports_data_parallel = False
    cheap = True
    config_class = None

    def train(self, x, y, num_classes, model_cfg, train_cfg, seed, init_state=None, progress=False, device=None):
        return {"mean": torch.from_numpy(np.asarray(x, dtype=np.float64).mean(axis=0) + 100.0)}

    def sample(self, state, n, num_classes, sample_shape, model_cfg, sample_cfg, seed, class_probs=None,
               progress=False, device=None):
        rng = np.random.default_rng(seed)
        return state["mean"].numpy() + sample_cfg.bias * rng.standard_normal((n, *sample_shape)), None


FAMILY = Shift()
'''


def test_family_installed_through_an_entry_point_runs_through_run_py(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "epfam_pkg").mkdir(parents=True)
    (pkg / "epfam_pkg" / "__init__.py").write_text(PLUGIN)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "epfam-pkg"
        version = "0.1"

        [project.entry-points."mad.families"]
        epfam = "epfam_pkg:FAMILY"
    """))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(pkg)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *QUICK, "model.family=epfam", f"out={out}",
                           "--quiet"], cwd=ROOT, env=_env(str(site)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    assert [r["gen"] for r in recs] == [1, 2]
    x2 = np.load(out / recs[1]["chain"] / "gen_002" / "samples.npz")["x"]
    assert 150 < x2.mean() < 250  # trained twice on its own samples: shifted by 100 per generation
    # without the package on the path the name is unknown, in one line
    gone = subprocess.run([sys.executable, str(ROOT / "run.py"), *QUICK, "model.family=epfam", f"out={out}2"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and "unknown family 'epfam'" in gone.stderr


def test_a_run_written_before_the_family_sections_still_resumes():
    from mad.config import science_dict, science_of_yaml, to_yaml
    import yaml

    cfg = load_config(None, [*QUICK, "model.family=gmm"])
    old = yaml.safe_load(to_yaml(cfg))
    for key in ("gmm", "kde", "mlp_diffusion", "gan", "options"):
        del old["model"][key]
    assert science_of_yaml(yaml.safe_dump(old)) == science_dict(cfg)
    old["model"]["channels"] = [1]  # a real difference still shows
    assert science_of_yaml(yaml.safe_dump(old)) != science_dict(cfg)

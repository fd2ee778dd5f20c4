"""Which keys a resume compares (README "Guarantees"): every key is classified once, in the schema, as
science (it can change a record: resume compares it and a change is refused naming the key) or not
(where the run lives, how it is shown or scheduled: a resume may change it and the records stay the same)."""
import copy
import enum
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from conftest import cut_records
from mad.artifacts import ResumeError
from mad.config import (Config, load_config, run_keys, science_dict, science_diff, science_keys,
                        science_of_yaml, to_yaml)
from mad.driver import Driver
from test_driver import GAUSS, records


def _all_leaves(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            yield from _all_leaves(type(default), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, hints[f.name]


LEAVES = dict(_all_leaves())


def test_every_key_is_classified_once():
    science, run = science_keys(), run_keys()
    assert not set(science) & set(run)
    assert sorted(science + run) == sorted(LEAVES)
    # the sample stream depends on the shards; a task's CPUs set torch's threads and its GPUs the device
    assert {"resources.sample_shards", "resources.train_cpus", "resources.sample_gpus", "seed", "sweep"} <= set(science)
    assert {"out", "ray.temp_dir", "report.html", "resources.block_size", "resources.share_identical"} <= set(run)


def _another(value, hint):
    """A different value of the key's type (not necessarily a valid one: the comparison does not validate)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    if isinstance(value, enum.Enum):
        return next(m for m in type(value) if m != value)
    if isinstance(value, bool):
        return not value
    if hint is int:
        return 7 if value is None else value + 1
    if hint is float:
        return 0.5 if value is None else value + 0.5
    if hint is str:
        return "elsewhere" if value is None else value + "x"
    if typing.get_origin(hint) is list:
        return [*value, 8]
    if typing.get_origin(hint) is dict:
        return {**value, "seed": [1, 2]}
    return {"width": 3}  # model.options: a plug-in family's section


def _changed(cfg, key):
    new = copy.deepcopy(cfg)
    *parents, last = key.split(".")
    owner = new
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, last, _another(getattr(owner, last), LEAVES[key]))
    return new


@pytest.fixture(scope="module")
def base():
    return load_config(None, [])


@pytest.mark.parametrize("key", sorted(LEAVES))
def test_the_resume_comparison_names_each_science_key_and_ignores_the_others(key, base):
    changed = _changed(base, key)
    stored = science_of_yaml(to_yaml(base))  # what resume reads back from the run's config.yaml
    diff = science_diff(stored, science_dict(changed))
    if key in science_keys():
        assert diff and all(line.startswith(key) for line in diff), diff
        assert "in the run" in diff[0] and diff[0].endswith("now")
    else:
        assert diff == [] and stored == science_dict(changed)
        assert science_of_yaml(to_yaml(changed)) == science_dict(base)


def test_a_science_key_changed_on_resume_is_refused_naming_it(tmp_path, ray_local):
    out = tmp_path / "run"
    Driver(load_config(None, [*GAUSS, f"out={out}", "loop.generations=2", "sweep={}"]), quiet=True).run()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    for change, line in [("resources.sample_shards=2", "resources.sample_shards: 1 in the run, 2 now"),
                         ("resources.train_cpus=2", "resources.train_cpus: 1.0 in the run, 2.0 now"),
                         ("sample.bias=0.5", "sample.bias: 1.0 in the run, 0.5 now")]:
        cfg = load_config(None, [*GAUSS, f"out={out}", "loop.generations=2", "sweep={}", change])
        with pytest.raises(ResumeError) as err:
            Driver(cfg, quiet=True).run()
        assert line in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == before


# run keys a resume below changes; the others are covered elsewhere: out (test_reliability's moved run
# directory), ray.address (a cluster: test_cluster_ray), report.html / report.progress / report.tracker
# (what the console and the report show: the records do not depend on them by construction)
RESUME_CHANGES = [
    ["resources.block_size=0", "resources.share_identical=false", "resources.max_retries=0",
     "report.band=median_iqr", "report.phase.metric=fid", "report.phase.last_k=2",
     "report.phase.baseline_bias=0.5", "ray.num_cpus=1", "report.tensorboard=true"],
    ["resources.block_size=2", "report.tracker_dir={tmp}/mlflow", "ray.temp_dir={tmp}"],
]
ELSEWHERE = {"out", "ray.address", "report.html", "report.progress", "report.tracker"}


def test_run_keys_changed_on_resume_give_identical_records(tmp_path, ray_local):
    changed = {c.split("=")[0] for cs in RESUME_CHANGES for c in cs}
    assert changed | ELSEWHERE == set(run_keys())
    args = [*GAUSS, "loop.generations=4", "loop.kind=fresh_data", "sweep={seed: [0, 1, 2]}"]
    full, part = tmp_path / "full", tmp_path / "part"
    Driver(load_config(None, [*args, f"out={full}"]), quiet=True).run()
    Driver(load_config(None, [*args, f"out={part}"]), quiet=True).run()
    for changes in RESUME_CHANGES:
        cut_records(part, "c01-seed=1", 2)
        cut_records(part, "c02-seed=2", 3)
        driver = Driver(load_config(None, [*args, f"out={part}",
                                           *(c.format(tmp=tmp_path) for c in changes)]), quiet=True)
        driver.run()
        assert sum(driver._resumed.values()) > 0  # it resumed, it did not start over
        assert records(part) == records(full), changes

"""Only the driver writes, and it writes no environment values.

* The classifier feature cache: the reference task trains the classifier without touching disk and
  returns it inside the reference; the driver reads and writes ``metrics.cache_dir``.
* ``${oc.env:VAR}`` in a path key is resolved for use, while config.yaml and report.html keep the
  unresolved form.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from mad import tasks
from mad.config import DataConfig, DataName, Features, MetricsConfig, load_config, science_dict, to_yaml
from mad.data import load_real
from mad.driver import Driver
from mad.metrics.features import cached_classifier_state, save_classifier_state


def test_reference_task_writes_nothing_and_its_classifier_round_trips_through_the_cache(tmp_path, monkeypatch):
    """The task side and the cache format. That the driver itself writes the cache during a real run
    is asserted through run.py in tests/test_digits_e2e.py."""
    monkeypatch.chdir(tmp_path)  # a task that wrote into its current directory would write here
    pool, (ref_x, ref_y) = load_real(DataConfig(name=DataName.digits, n_reference=500), 0)
    cache = tmp_path / "cache"
    metrics = MetricsConfig(features=Features.classifier, cache_dir=str(cache), classifier_epochs=1)
    assert tasks.cached_classifier(pool, metrics) is None  # nothing cached yet

    torch.set_num_threads(1)
    ref = tasks.prepare_reference(ref_x, ref_y, pool, metrics, None)  # what the Ray task runs
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no cache_dir, no file anywhere

    path = save_classifier_state(ref.extractor_state, cache)  # what the driver does with the result
    assert path.parent == cache and path.is_file()
    state = tasks.cached_classifier(pool, metrics)  # the driver's look-up on the next run
    assert state is not None and state["key"] == ref.extractor_state["key"]
    for name, w in ref.extractor_state["weights"].items():
        np.testing.assert_array_equal(state["weights"][name], w)
    # the next reference task is given the cached classifier: same features, still no writes
    again = tasks.prepare_reference(ref_x, ref_y, pool, metrics, state)
    np.testing.assert_allclose(again.feats, ref.feats, rtol=1e-5, atol=1e-6)
    assert cached_classifier_state(pool.x, pool.y, 10, tmp_path / "elsewhere", epochs=1) is None


def test_env_interpolation_is_used_but_never_written(tmp_path, monkeypatch):
    secret = "/very/secret/place"
    monkeypatch.setenv("MAD_TEST_DATA", secret)
    monkeypatch.setenv("MAD_TEST_OUT", str(tmp_path))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: {name: gaussian, root: '${oc.env:MAD_TEST_DATA}/gauss'}\nout: '${oc.env:MAD_TEST_OUT}/run'\n"
                        "loop: {generations: 1}\n")
    cfg = load_config(cfg_file)
    assert cfg.data.root == f"{secret}/gauss" and cfg.out == f"{tmp_path}/run"  # resolved once, for use
    assert secret not in to_yaml(cfg) and "${oc.env:MAD_TEST_DATA}/gauss" in to_yaml(cfg)
    assert science_dict(cfg)["data"]["root"] == "${oc.env:MAD_TEST_DATA}/gauss"

    driver = Driver(cfg, quiet=True)
    driver.prepare_run_dir()  # writes config.yaml as a run does
    from mad.report import load_run, write_run_report

    page = write_run_report(load_run(tmp_path / "run"))
    for written in (tmp_path / "run" / "config.yaml", page):
        text = written.read_text()
        assert secret not in text and str(tmp_path) not in text.replace(str(page.parent), ""), written
    assert "${oc.env:MAD_TEST_DATA}/gauss" in (tmp_path / "run" / "config.yaml").read_text()
    # a different value of the variable resumes the same run: the unresolved form is compared
    monkeypatch.setenv("MAD_TEST_DATA", "/moved/elsewhere")
    assert Driver(load_config(cfg_file), quiet=True).prepare_run_dir() is True
    assert os.environ["MAD_TEST_DATA"] not in (tmp_path / "run" / "config.yaml").read_text()

"""Experiment trackers of a real run (issue 14, item 7): TensorBoard hparams per chain, read back with
TensorBoard's own event reader."""
import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mad.config import load_config
from mad.driver import Driver
from mad.tracking import chain_log_dir

GAUSS = ["data.name=gaussian", "data.dim=3", "data.n_reference=300", "model.family=gaussian",
         "metrics.features=raw", "metrics.n_eval=200", "loop.n_init=40", "loop.n_real=null", "loop.n_synth=null",
         "loop.generations=2", "report.html=false"]
SWEEP = "sweep={loop.kind: [fully_synthetic, fresh_data], sample.bias: [1.0, 0.5], seed: [0, 1]}"


def _hparams(run_dir: Path, run: str) -> tuple[dict, list[str]]:
    """The hparams TensorBoard shows for one run, and the metric columns of its HParams tab."""
    acc = EventAccumulator(str(chain_log_dir(run_dir, run)))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {}
    for name, v in start.session_start_info.hparams.items():
        kind = v.WhichOneof("kind")
        values[name] = getattr(v, kind)
    return values, [m.name.tag for m in experiment.metric_infos]


@pytest.mark.usefixtures("ray_local")
def test_tensorboard_hparams_of_every_chain_read_back(tmp_path):
    out = tmp_path / "run"
    Driver(load_config(None, [*GAUSS, SWEEP, f"out={out}"]), quiet=True).run()
    chains = json.loads((out / "chains.json").read_text())
    assert len(chains) == 8
    seen = set()
    for c in chains:
        values, metrics = _hparams(out, c["name"])
        a = c["assignment"]
        assert values == {"loop.kind": a["loop.kind"], "sample.bias": pytest.approx(a["sample.bias"]),
                          "seed": a["seed"]}, (c["name"], values)
        assert {"w2", "trace_ratio", "wall_s"} <= set(metrics), metrics
        seen.add((values["loop.kind"], values["sample.bias"], values["seed"]))
    assert len(seen) == 8  # every chain its own point of the sweep


@pytest.mark.usefixtures("ray_local")
def test_group_summaries_carry_the_hparams_but_seed(tmp_path, monkeypatch):
    from mad import tracking

    monkeypatch.setattr(tracking, "MAX_CHAIN_RUNS", 4)  # 8 chains: one summary run per group of seeds
    out = tmp_path / "run"
    Driver(load_config(None, [*GAUSS, SWEEP, f"out={out}"]), quiet=True).run()
    groups = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(groups) == 4, groups
    for group in groups:
        values, metrics = _hparams(out, group)
        assert set(values) == {"loop.kind", "sample.bias"}
        assert f"loop.kind={values['loop.kind']}" in group
        assert {"w2", "w2_std"} <= set(metrics)

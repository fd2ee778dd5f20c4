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


# ------------------------------------------------------------------ MLflow, local store, no server
@pytest.mark.usefixtures("ray_local")
def test_mlflow_params_and_metric_history_read_back_with_its_client(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mad.tracking import CHAIN_TAG, mlflow_uri

    out = tmp_path / "run"
    sweep = "sweep={loop.kind: [fully_synthetic, fresh_data], sample.bias: [1.0, 0.5]}"
    Driver(load_config(None, [*GAUSS, "loop.generations=3", "report.html=true", "report.tensorboard=false",
                              "report.tracker=mlflow", sweep, f"out={out}"]), quiet=True).run()
    assert (out / "mlflow" / "mlflow.db").is_file()  # the default store: inside the run directory
    client = MlflowClient(tracking_uri=mlflow_uri(out / "mlflow"))
    exp = client.get_experiment_by_name(str(out.resolve()))
    runs = {r.data.tags[CHAIN_TAG]: r for r in client.search_runs([exp.experiment_id])}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    chains = json.loads((out / "chains.json").read_text())
    assert set(runs) == {c["name"] for c in chains}
    for c in chains:
        run = runs[c["name"]]
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["loop.kind"] == c["assignment"]["loop.kind"]
        assert float(params["sample.bias"]) == c["assignment"]["sample.bias"]
        assert params["model.family"] == "gaussian" and params["loop.generations"] == "3"
        assert run.data.tags["mad.report"] == str((out / "report.html").resolve())
        mine = sorted((r for r in records if r["chain"] == c["name"]), key=lambda r: r["gen"])
        for metric in ("w2", "trace_ratio"):
            history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
            assert [m.step for m in history] == [1, 2, 3]
            assert [m.value for m in history] == pytest.approx([r[metric] for r in mine])


def test_a_bad_tracker_is_one_line_and_exit_2(tmp_path):
    from conftest import run_cli

    out = tmp_path / "run"
    proc = run_cli("configs/experiment/gaussian.yaml", "report.tracker=wandb", f"out={out}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: report.tracker: Invalid value 'wandb', "
                                                "expected one of [none, mlflow]"]
    assert not out.exists()

"""The config contract: defaults, overrides, sweeps, and every bad input as one line with exit code 2."""
import math
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from mad.plan import plan_chains
from mad.config import ConfigError, LoopKind, config_notes, expand_sweep, load_config, resolved_counts


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text or "{}\n")  # an empty file is refused (see test_bad_inputs); {} is an explicit empty mapping
    return p


def test_default_config_loads_and_overrides_apply():
    cfg = load_config(None, ["loop.kind=fresh_data", "sample.bias=0.8", "loop.n_real=50"])
    assert cfg.loop.kind == LoopKind.fresh_data
    assert cfg.sample.bias == 0.8
    # default.yaml sizes by n_total/real_fraction (400, 0.375); an n_real override turns that into counts,
    # keeping default.yaml's 250 synthetic samples, and says so in one note
    assert resolved_counts(cfg.loop) == (50, cfg.loop.n_synth) and cfg.loop.n_synth == 250
    assert cfg.loop.real_fraction is None and cfg.loop.n_total is None
    assert any("give way" in n for n in config_notes(cfg))
    share = load_config(None, ["loop.n_total=200"])  # and the other way: a total over counts keeps the share
    assert resolved_counts(load_config(None, ["loop.kind=fresh_data", "loop.n_total=200"]).loop) == (75, 125)
    assert share.loop.n_real is None
    bare = load_config(None, ["loop.n_real=null", "loop.n_synth=null", "loop.kind=fresh_data", "loop.n_init=200"])
    assert resolved_counts(bare.loop) == (200, 200)  # both default to n_init


def test_real_fraction_gives_counts(tmp_path):
    cfg = load_config(write(tmp_path, "loop: {kind: fresh_data, real_fraction: 0.25, n_total: 400}\n"))
    assert resolved_counts(cfg.loop) == (100, 300)


def test_sweep_is_cartesian_product(tmp_path):
    cfg = load_config(write(tmp_path, "sweep: {loop.kind: [fully_synthetic, fresh_data], sample.bias: [1.0, 0.5], seed: [0, 1, 2]}\n"))
    chains = expand_sweep(cfg)
    assert len(chains) == 12
    kinds = {(c.loop.kind, c.sample.bias, c.seed) for _, c in chains}
    assert len(kinds) == 12
    assert all(c.sweep == {} for _, c in chains)


BAD = [
    # (yaml, overrides, key named in the message, words in the message)
    ("", ["loop.nope=3"], "loop.nope", "unknown key"),
    ("loop: {n_init: abc}\n", [], "loop.n_init", "could not be converted"),
    ("", ["sample.bias=1.5"], "sample.bias", "(0, 1]"),
    ("", ["sample.bias=0"], "sample.bias", "(0, 1]"),
    ("", ["loop.n_synth=-3"], "loop.n_synth", "positive"),
    ("", ["loop.n_init=0"], "loop.n_init", "positive"),
    ("data: {name: digits}\nmodel: {family: diffusion}\nmetrics: {features: raw}\nloop: {kind: fresh_data, n_init: 100, n_real: 5000}\n",
     [], "loop.n_real", "pool (1797 minus data.n_reference=500) holds 1297"),
    ("loop: {n_real: 10, real_fraction: 0.5, n_total: 100}\n", [], "loop.real_fraction", "not both"),
    ("", ["loop.kind=half_synthetic"], "loop.kind", "half_synthetic"),
    ("sweep: {loop.nope: [1, 2]}\n", [], "sweep.loop.nope", "unknown key"),
    ("loop: [unclosed\n", [], "c.yaml", "malformed YAML"),
]


@pytest.mark.parametrize("yaml_text,overrides,key,words", BAD, ids=[b[2] + ":" + b[3][:12] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, yaml_text, overrides, key, words):
    cfg = write(tmp_path, yaml_text)
    out = tmp_path / "run"
    proc = run_cli(str(cfg), f"out={out}", *overrides)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0] and words in lines[0], lines[0]
    assert not out.exists()
    # the library raises the same error
    with pytest.raises(ConfigError):
        load_config(cfg, [f"out={out}", *overrides])


def test_dry_run_prints_config_and_chains_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"out={out}", "--dry-run", "sweep.seed=[0,1]")
    assert proc.returncode == 0, proc.stderr
    assert "loop:" in proc.stdout and "6 chain(s)" in proc.stdout
    assert "c05-loop.kind=fresh_data-seed=1" in proc.stdout
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")))
def test_every_shipped_config_loads(path):
    cfg = load_config(ROOT / path)  # validation included: mnist/cifar10 check their pools without downloading
    chains = plan_chains(cfg)
    baseline = [c for c in chains if c.name.endswith("-baseline")]  # report.phase.baseline=auto adds these
    assert len(chains) - len(baseline) == math.prod(len(v) for v in cfg.sweep.values())
    assert all(c.cfg.loop.n_synth == 0 and c.cfg.loop.kind == LoopKind.fresh_data for c in baseline)
    assert len({c.name for c in chains}) == len(chains)
    # no shipped chain reuses real data: each fits its finite pool without loop.allow_real_reuse
    pools = {"digits": 1797 - cfg.data.n_reference, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}
    for c in chains:
        loop = c.cfg.loop
        assert not loop.allow_real_reuse
        if c.cfg.data.name.value in pools:
            n_real, _ = resolved_counts(loop)
            need = {LoopKind.fresh_data: loop.n_init + (loop.generations - 1) * n_real,
                    LoopKind.synthetic_augmentation: max(loop.n_init, n_real)}.get(loop.kind, loop.n_init)
            assert need <= pools[c.cfg.data.name.value], (c.name, need)


def test_sweep_override_replaces_the_grid():
    assert len(expand_sweep(load_config(None, ["sweep={}"]))) == 1
    assert len(expand_sweep(load_config(None, ["sweep={seed: [1, 2]}"]))) == 2


# ----------------------------------------------------------------------------- every value validated
def _numeric_keys() -> list[tuple[str, str]]:
    """(dotted key, its numeric type) of every int, float and list-of-int key, read from the schema's
    type hints: a key added to the schema is swept here without being listed."""
    import typing
    from dataclasses import fields, is_dataclass

    from mad.config import Config

    out = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            hint = hints[f.name]
            default = f.default_factory() if callable(f.default_factory) else f.default
            if is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")
                continue
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
            if base in (int, float) and base is not bool:
                out.append((prefix + f.name, base.__name__))
            elif typing.get_origin(base) is list and typing.get_args(base) == (int,):
                out.append((prefix + f.name, "list"))

    walk(Config, "")
    return out


NUMERIC = _numeric_keys()


def test_the_schema_has_numeric_keys_in_every_section():
    sections = {k.split(".")[0] for k, _ in NUMERIC}
    assert {"seed", "data", "model", "train", "sample", "loop", "curate", "correct", "metrics", "resources",
            "ray", "report"} <= sections
    assert len(NUMERIC) >= 50


@pytest.mark.parametrize("key,kind", NUMERIC, ids=[k for k, _ in NUMERIC])
def test_every_numeric_key_refuses_a_bad_value_swept_or_not(key, kind):
    """-1 is out of range for every numeric key (a count, a rate, a fraction, a seed); NaN for every
    float. Swept or set directly, the same rule refuses it, naming the key."""
    bad = ["[-1]"] if kind == "list" else ["-1"] + (["nan"] if kind == "float" else [])
    for value in bad:
        with pytest.raises(ConfigError) as err:
            load_config(None, ["sweep={}", f"{key}={value}"])
        assert err.value.key == key, str(err.value)
        with pytest.raises(ConfigError) as err:
            load_config(None, ["sweep={}", f"sweep.{key}=[{value}]"])
        assert err.value.key == f"sweep.{key}", str(err.value)
        assert "\n" not in str(err.value)


def test_a_bad_base_value_is_refused_even_when_a_sweep_overrides_it():
    with pytest.raises(ConfigError, match=r"^seed: must be at least 0"):
        load_config(None, ["seed=-3", "sweep={seed: [4, 5, 6]}"])
    with pytest.raises(ConfigError, match=r"^sample.bias: must be in \(0, 1\]"):
        load_config(None, ["sample.bias=2", "sweep.sample.bias=[0.5, 1.0]"])
    assert len(expand_sweep(load_config(None, ["seed=3", "sweep={seed: [4, 5, 6]}"]))) == 3


@pytest.mark.parametrize("sweep,words", [
    ("sweep.seed=[1, 1]", "lists 1 twice"),
    ("sweep.sample.bias=[0.5, 1, 0.50]", "lists 0.5 twice"),
    ("sweep.sample.bias=[1, 1.0]", "1 and 1.0 (the same value)"),
    ("sweep.loop.kind=[fresh_data, fully_synthetic, fresh_data]", "lists 'fresh_data' twice"),
    ("sweep.model.channels=[[8, 16], [8, 16]]", "twice"),
])
def test_duplicate_sweep_values_are_refused(sweep, words):
    key = sweep.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, [sweep])
    assert err.value.key == key and words in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- metrics.features=auto
def test_features_auto_is_the_default_and_picks_the_classifier_for_images_and_raw_for_vectors(tmp_path):
    from mad.config import Features, MetricsConfig, config_notes, to_yaml

    assert MetricsConfig().features == Features.auto
    images = load_config(None, [])  # configs/default.yaml: digits
    assert images.metrics.features == Features.classifier
    assert config_notes(images) == ["metrics.features: auto -> classifier (data.name=digits is images: the "
                                    "LeNet classifier)"]
    assert "features: classifier" in to_yaml(images)  # what config.yaml holds
    vectors = load_config(None, ["data.name=toy2d", "model.family=gmm"])
    assert vectors.metrics.features == Features.raw and "features: raw" in to_yaml(vectors)
    assert config_notes(vectors) == ["metrics.features: auto -> raw (data.name=toy2d is vectors)"]
    unlabeled = load_config(None, ["data.name=folder", f"data.root={tmp_path}", "data.labels=false"])
    assert unlabeled.metrics.features == Features.raw
    chosen = load_config(None, ["metrics.features=raw"])
    assert chosen.metrics.features == Features.raw and config_notes(chosen) == []
    # a sweep over the data leaves the choice to each chain
    swept = load_config(None, ["sweep={metrics.features: [auto, raw]}"])
    assert swept.metrics.features == Features.auto and "chosen per chain" in config_notes(swept)[0]
    assert [c.metrics.features for _, c in expand_sweep(swept)] == [Features.classifier, Features.raw]
    with pytest.raises(ConfigError, match="^metrics.features: classifier needs image data"):
        load_config(None, ["data.name=toy2d", "model.family=gmm", "metrics.features=classifier"])
    # what stays impossible on the default config is the image diffusion family on vectors: named with the fits
    with pytest.raises(ConfigError, match=r"^model.family: diffusion takes images data, .*for vectors: .*gmm"):
        load_config(None, ["data.name=toy2d"])


def test_features_auto_is_printed_once_by_the_command():
    proc = run_cli("data.name=toy2d", "model.family=gmm", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "metrics.features" in line]
    assert lines == ["# metrics.features: auto -> raw (data.name=toy2d is vectors)"]
    assert "  features: raw" in proc.stdout

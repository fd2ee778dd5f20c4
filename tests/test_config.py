"""The config contract: defaults, overrides, sweeps, and every bad input as one line with exit code 2."""
import math
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from mad.plan import plan_chains
from mad.config import ConfigError, LoopKind, expand_sweep, load_config, resolved_counts


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text or "{}\n")  # an empty file is refused (see test_bad_inputs); {} is an explicit empty mapping
    return p


def test_default_config_loads_and_overrides_apply():
    cfg = load_config(None, ["loop.kind=fresh_data", "sample.bias=0.8", "loop.n_real=50"])
    assert cfg.loop.kind == LoopKind.fresh_data
    assert cfg.sample.bias == 0.8
    assert resolved_counts(cfg.loop) == (50, cfg.loop.n_synth) and cfg.loop.n_synth == 200  # default.yaml's
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
    assert len(chains) == math.prod(len(v) for v in cfg.sweep.values())
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

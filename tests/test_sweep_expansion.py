"""Fast sweep expansion gives exactly what setting every swept key through OmegaConf per chain gave."""
import copy
import itertools

import pytest

from conftest import run_cli
from mad.config import ConfigError, LoopKind, config_to_dict, expand_sweep, load_config, set_dotted
from mad.plan import estimate_compute, plan_chains

# Enums as strings, ints as strings, floats written as ints, bools as words, Optional ints with
# None, a list-valued key and nested dotted keys: every conversion OmegaConf does for a sweep.
MIXED = [
    "sweep={loop.kind: [fresh_data, synthetic_augmentation], sample.bias: [1, 0.5], seed: ['7'],"
    " report.html: ['false'], loop.n_real: [null], model.channels: [[8, 16], ['4']],"
    " sample.scheduler: [ddpm], loop.synth_source: [last_k], loop.last_k: [2], metrics.cache_dir: [3]}",
    "data.name=gaussian", "model.family=gaussian", "metrics.features=raw",
]


def _old_expand(cfg):
    """The semantics before the fast path: a deep copy per chain, each key set with set_dotted."""
    keys = list(cfg.sweep)
    out = []
    for combo in itertools.product(*(cfg.sweep[k] for k in keys)):
        chain = copy.deepcopy(cfg)
        chain.sweep = {}
        assignment = dict(zip(keys, combo))
        for k, v in assignment.items():
            chain = set_dotted(chain, k, v)
        out.append((assignment, chain))
    return out


def test_expansion_equals_setting_each_key_through_omegaconf():
    cfg = load_config(None, MIXED)
    new, old = expand_sweep(cfg), _old_expand(cfg)
    assert len(new) == len(old) == 8
    for (a_new, c_new), (a_old, c_old) in zip(new, old):
        assert a_new == a_old
        assert c_new == c_old  # dataclass equality: every field, enum members included
        assert config_to_dict(c_new) == config_to_dict(c_old)
        assert type(c_new.seed) is int and type(c_new.sample.bias) is float and type(c_new.report.html) is bool
        assert isinstance(c_new.loop.kind, LoopKind)
    assert [c.cfg.model.channels for c in plan_chains(cfg)][:2] == [[8, 16], [4]]
    assert {c.cfg.metrics.cache_dir for c in plan_chains(cfg)} == {"3"}


def test_chain_configs_are_independent_copies():
    cfg = load_config(None, MIXED)
    before = config_to_dict(cfg)
    chains = expand_sweep(cfg)
    first, same = chains[0][1], chains[2][1]  # same swept channels
    first.model.channels.append(99)
    first.loop.n_init = 5
    assert same.model.channels == [8, 16] and same.loop.n_init == cfg.loop.n_init
    assert config_to_dict(cfg) == before


@pytest.mark.parametrize("sweep,key,words", [
    ("{seed: [0, 1.5]}", "sweep.seed", "could not be converted"),
    ("{loop.kind: [fresh_data, half]}", "sweep.loop.kind", "half"),
    ("{sample.bias: [true]}", "sweep.sample.bias", "could not be converted"),
    ("{loop.n_synth: [10, -1]}", "loop.n_synth", "positive"),
])
def test_bad_swept_values_still_name_the_key(sweep, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"sweep={sweep}"])
    assert key in str(err.value) and words in str(err.value)


def test_fresh_data_accepts_n_synth_zero_but_fully_synthetic_does_not():
    cfg = load_config(None, ["sweep={}", "loop.kind=fresh_data", "loop.n_synth=0"])
    assert cfg.loop.n_synth == 0
    with pytest.raises(ConfigError, match="needs synthetic samples"):
        load_config(None, ["sweep={}", "loop.kind=fully_synthetic", "loop.n_synth=0"])


def test_compute_estimate_counts_what_the_driver_runs():
    cfg = load_config(None, ["sweep={loop.generations: [3, 5]}", "loop.n_init=100", "loop.n_synth=200",
                             "metrics.n_eval=50", "train.steps=10", "sample.steps=4"])
    est = estimate_compute(plan_chains(cfg))
    assert est["chain_generations"] == 8
    assert est["diffusion_train_steps"] == 80
    # per chain: (G-1) generations keep 200 synthetic samples (>= n_eval), the last samples n_eval only
    assert est["diffusion_images"] == (2 * 200 + 50) + (4 * 200 + 50)
    assert est["diffusion_denoiser_passes"] == 4 * est["diffusion_images"]


def test_dry_run_prints_count_and_compute(tmp_path):
    proc = run_cli("--dry-run", f"out={tmp_path / 'run'}", "loop.generations=4", "train.steps=10",
                   "loop.n_init=100", "loop.n_real=null", "loop.n_synth=null", "metrics.n_eval=50", "sample.steps=2")
    assert proc.returncode == 0, proc.stderr
    # 3 loops x 4 generations; per chain 3 x 100 kept synthetic + 50 scored at the last generation
    assert "# 3 chain(s), 4 generation(s) each" in proc.stdout
    assert "# compute: 12 chain-generation(s); diffusion: 120 training steps, 1,050 images sampled (2,100 denoiser passes)" in proc.stdout
    assert not (tmp_path / "run").exists()

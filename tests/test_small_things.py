"""Issue 21 item 12: small things a careful reader trips on (phase metric vs metrics.every, seed keys,
exactly balanced labels, the toy2d grid's mode std)."""
from __future__ import annotations

import pytest

from mad.config import ConfigError, load_config

PHASE = "configs/experiment/gaussian_phase.yaml"
SMALL = ["sweep={loop.n_synth: [0, 25], loop.n_real: [50]}", "loop.generations=4"]


@pytest.mark.parametrize("extra", [["report.phase.metric=fid"], ["report.phase.metric=auto", "model.family=kde"],
                                   ["report.phase.metric=precision"]])
def test_a_sample_based_phase_metric_with_metrics_every_above_1_is_refused(extra):
    # fid is recorded every metrics.every-th generation only, and mad.phase drops a chain that lacks its
    # metric at any generation, so the phase diagram would have silently lost every chain
    with pytest.raises(ConfigError) as err:
        load_config(PHASE, [*SMALL, *extra, "metrics.every=2"])
    assert err.value.key == "metrics.every" and "metrics.every=1" in str(err.value)
    load_config(PHASE, [*SMALL, *extra, "metrics.every=1"])  # every generation: accepted


def test_metrics_every_above_1_stays_allowed_where_the_phase_diagram_does_not_need_it():
    load_config(PHASE, [*SMALL, "metrics.every=2"])  # w2 is closed-form: recorded every generation
    load_config(PHASE, [*SMALL, "report.phase.metric=auto", "metrics.every=2"])  # auto = w2 for the Gaussian
    # no real-only chain: no phase diagram, nothing to drop
    load_config(PHASE, ["sweep={loop.n_synth: [25, 50]}", "report.phase.metric=fid", "metrics.every=2"])

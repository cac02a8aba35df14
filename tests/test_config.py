"""Composing configs: every figure at every scale (and each of its runs) composes, and equals what
Hydra's compose API gives for the same overrides; errors are one line with the valid choices."""

from __future__ import annotations

import pytest

from enkf_repro.api import compose
from enkf_repro.config.compose import hydra_compose
from enkf_repro.config.identity import to_plain
from enkf_repro.errors import ConfigError
from enkf_repro.experiments import FIGURES
from enkf_repro.runs.runner import plan


def plain(cfg) -> dict:
    out = to_plain(cfg)
    out.pop("overrides")
    return out


@pytest.mark.parametrize("scale", ["smoke", "paper"])
@pytest.mark.parametrize("fig_id", sorted(FIGURES))
def test_every_figure_and_run_composes_as_hydra_does(fig_id, scale):
    fig = FIGURES[fig_id]
    overrides = [f"figure={fig.config}", f"scale={scale}"]
    cfg = compose(overrides)
    assert plain(cfg) == plain(hydra_compose(overrides))
    specs = plan(cfg)
    assert bool(specs) == fig.needs_runs
    for spec in specs[:4] + specs[-2:]:   # the first and last runs: every family of a figure
        ref = hydra_compose([o for o in spec.overrides if not o.startswith("seed=")])
        ref.seed = spec.seed
        assert plain(spec.cfg) == plain(ref), spec.label


@pytest.mark.parametrize("overrides", [
    ["optimizer=sgd", "model=dnn2", "optimizer.lr=0.5"],
    ["dataset=fashion_mnist", "optimizer.gamma=0.5", "+foo.bar=1", "++seed=4"],
    ["figure=fig8", "scale=smoke", "model=mlp", "optimizer=eki", "optimizer.momentum=nesterov"],
    ["figure=fig1", "optimizer=adam", "train.max_batches=null", "dataset.test_size=100"],
])
def test_group_and_value_overrides_compose_as_hydra_does(overrides):
    assert plain(compose(overrides)) == plain(hydra_compose(overrides))


@pytest.mark.parametrize("override,words", [
    ("optimizer.ensembel_size=3", ["optimizer.ensembel_size=3", "did you mean 'ensemble_size'"]),
    ("dataset=fashion-mnist", ["dataset='fashion-mnist'", "did you mean 'fashion_mnist'", "mnist, notmnist"]),
    ("figure=99", ["figure='99'", "1, 2, 3"]),
    ("optimizer.ensemble_size=abc", ["optimizer.ensemble_size='abc'", "Integer"]),
    ("+optimizer.ensemble_size=3", ["exists"]),
    ("seed=1,2", ["sweeps need `enkf-repro run -m`"]),
])
def test_composition_errors_are_one_line_with_the_choices(override, words):
    with pytest.raises(ConfigError) as e:
        compose([override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_composing_again_gives_an_independent_copy():
    a = compose(["figure=8", "scale=smoke"])
    a.optimizer.ensemble_size = 3
    assert compose(["figure=8", "scale=smoke"]).optimizer.ensemble_size == 5000

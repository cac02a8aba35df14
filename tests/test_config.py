"""Composing configs (Hydra's compose API): every figure at every scale composes and plans, each
run's config is what its recorded overrides compose to, a figure's settings are typed by its own
dataclass; errors are one line with the valid choices."""

from __future__ import annotations

import pytest

from enkf_repro.api import compose
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
def test_every_figure_composes_and_each_run_is_what_its_record_composes_to(fig_id, scale):
    """A run's config is the figure's composed config with data merged on; the overrides it records
    (``enkf-repro run <overrides>``) compose to the same config."""
    fig = FIGURES[fig_id]
    cfg = compose([f"figure={fig.config}", f"scale={scale}"])
    assert isinstance(fig.settings_of(cfg), fig.settings)
    specs = plan(cfg)
    assert bool(specs) == fig.needs_runs
    for spec in specs[:4] + specs[-2:]:   # the first and last runs: every family of a figure
        ref = compose(list(spec.overrides))
        assert plain(spec.cfg) == plain(ref), spec.label


@pytest.mark.parametrize("override,words", [
    ("figure.smoke.ensembel_size=3", ["figure.smoke.ensembel_size=3", "did you mean 'ensemble_size'"]),
    ("figure.paper.activations=[sigmoid]", ["figure.paper.activations", "sigmoid"]),
])
def test_a_figures_settings_are_typed_by_its_own_dataclass(override, words):
    with pytest.raises(ConfigError) as e:
        compose(["figure=fig8", override])
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


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

"""What a method's config declares (``config.schema.MethodConfig``) and what the package asks of
it: the range checks, the cost, the typed config and context a method is built from (the run
identity's use of the declarations: test_run_ids.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_run
from enkf_repro.api import compose
from enkf_repro.config.schema import (
    METHOD_SECTIONS,
    OPTIMIZER_SCHEMAS,
    Cost,
    InstrumentConfig,
    MethodConfig,
    RunSize,
    method_config,
    upgrade,
)
from enkf_repro.config.validate import validate
from enkf_repro.errors import ConfigError
from enkf_repro.models.ensemble import EnsembleForward
from enkf_repro.models.registry import build_model
from enkf_repro.optim.base import METHODS, MethodContext, make_method

# -- the declarations of every registered method ----------------------------------------------------
SIZE = RunSize(batches=10, per_epoch=5, batch_size=4, classes=3, params=100, forward_flops=50.0, test_size=20,
               eval_every=None)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_SCHEMAS))
def test_every_method_declares_what_the_package_asks(name):
    schema = OPTIMIZER_SCHEMAS[name]
    assert issubclass(schema, MethodConfig) and dataclasses.is_dataclass(schema) and name in METHODS
    fields = {f.name for f in dataclasses.fields(schema)}
    assert set(schema.neutral) <= fields and set(schema.positive) <= fields
    assert set(schema.reads) <= set(METHOD_SECTIONS)
    opt = method_config(compose([f"optimizer={name}"]).optimizer)
    assert type(opt) is schema and opt.name == name
    cost = opt.cost(SIZE)
    assert isinstance(cost, Cost) and cost.flops > SIZE.evaluation_flops() and cost.steps >= SIZE.batches


@pytest.mark.parametrize("name,key", [(n, k) for n in sorted(OPTIMIZER_SCHEMAS) for k in OPTIMIZER_SCHEMAS[n].positive])
def test_the_positive_keys_must_be_positive(name, key):
    with pytest.raises(ConfigError, match=f"optimizer.{key}=0.*> 0"):
        validate(compose([f"optimizer={name}", f"optimizer.{key}=0"]))


@pytest.mark.parametrize("override,match", [
    (["optimizer=enkf", "optimizer.ensemble_size=1"], "optimizer.ensemble_size=1.*>= 2"),
    (["optimizer=enkf", "optimizer.repetitions=0"], "optimizer.repetitions=0.*>= 1"),
    (["optimizer=haber", "optimizer.ensemble_size=1"], "optimizer.ensemble_size=1"),
    (["optimizer=eki", "optimizer.delta=-1"], "optimizer.delta=-1.*>= 0"),
    (["optimizer=ienk_simple", "optimizer.delta=-1"], "optimizer.delta=-1.*>= 0"),
    (["optimizer=etki", "optimizer.ddof=2"], "optimizer.ddof=2"),
    (["optimizer=enkf", "optimizer.adaptive.enabled=true", "optimizer.adaptive.tau=300"],
     "optimizer.adaptive.tau=300.*train.eval_every"),
])
def test_each_method_checks_its_own_ranges(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(compose(override))


def test_the_cost_is_the_methods_formula_on_the_runs_size():
    enkf = method_config(compose(["optimizer=enkf", "optimizer.ensemble_size=10", "optimizer.repetitions=2"]).optimizer)
    iters = SIZE.batches * 2
    evals = iters // (SIZE.per_epoch * 2) + 2
    assert enkf.cost(SIZE) == (iters * (10 * 4 * 50.0 + 4.0 * 10 * 12 * 100) + evals * 20 * 50.0, iters, "step")
    sgd = method_config(compose(["optimizer=sgd"]).optimizer)
    assert sgd.cost(SIZE) == (10 * 4 * 3.0 * 50.0 + (10 // 5 + 2) * 20 * 50.0, 10, "step")
    ienk = method_config(compose(["optimizer=ienk_simple"]).optimizer)
    assert ienk.cost(SIZE)[1:] == (10 * 4, "sample")


# -- the typed config and context a method is built from -------------------------------------------
def test_a_method_gets_its_typed_config_and_only_the_sections_it_reads():
    cfg = compose_run(["optimizer=eki", "model=dnn1", "optimizer.ensemble_size=4", "optimizer.loss=mse"])
    model = build_model(cfg.model)
    eki = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), "cpu")
    assert type(eki.config).__name__ == "EKIConfig" and eki.config.loss.value == "mse" and eki.loss == "mse"
    ctx = MethodContext.of(upgrade(cfg), eki.config, model, None, None, "cpu")
    assert ctx.instrument is None and ctx.device == torch.device("cpu")
    sgd_cfg = compose_run(["optimizer=sgd", "model=dnn1", "instrument.hist_every=9"])
    sgd = make_method(sgd_cfg, model, None, torch.Generator().manual_seed(0), "cpu")
    assert isinstance(sgd.ctx.instrument, InstrumentConfig) and sgd.ctx.instrument.hist_every == 9


def test_an_older_or_hand_built_config_is_upgraded_once_onto_the_schema():
    """Keys a config lacks take the schema's defaults there, and nowhere else; a composed config
    comes out equal to itself."""
    cfg = compose_run(["optimizer=eki"])
    assert upgrade(cfg) == cfg
    old = OmegaConf.create({"optimizer": {"name": "eki", "ensemble_size": 6, "loss": "mse"},
                            "init": {"scheme": "glorot", "sigma": 0.1}})
    up = upgrade(old)
    assert up.optimizer.scheduler.value == "kovachki_stuart" and up.optimizer.inflation.multiplicative is None
    assert up.train.batch_size == 64 and up.optimizer.ensemble_size == 6
    model = build_model(OmegaConf.create({"name": "dnn1", "hidden": [], "activation": "relu"}))
    eki = make_method(old, model, EnsembleForward(model), torch.Generator().manual_seed(0), "cpu")
    assert eki.form == "euler" and eki.scheduler.name == "kovachki_stuart" and eki.U.shape[0] == 6
    with pytest.raises(Exception, match="nope"):
        upgrade(OmegaConf.create({"optimizer": {"name": "eki", "nope": 1}}))
    with pytest.raises(ConfigError, match="optimizer.name='nomethod'.*registered methods: adam"):
        method_config({"name": "nomethod"})

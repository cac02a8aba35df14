"""The cost model behind `enkf-repro list` and reproduce's estimate and ETA."""

import pytest

from conftest import compose_run
from enkf_repro.models import build_model
from enkf_repro.runs.cost import STEP_OVERHEAD_S, estimate_cost, estimate_seconds


def test_enkf_cost_is_reference_md_formula():
    cfg = compose_run(["optimizer=enkf", "dataset=fashion_mnist", "optimizer.ensemble_size=100",
                       "optimizer.repetitions=2", "train.max_batches=3", "train.eval_every=4",
                       "dataset.test_size=500"])
    model = build_model(cfg.model)
    f, P, B = model.forward_flops(), model.num_params, cfg.train.batch_size
    flops, steps, kind = estimate_cost(cfg)
    iters = 3 * 2
    evals = iters // 4 + 2
    assert (steps, kind) == (iters, "step")
    assert flops == pytest.approx(iters * (100 * B * f + 4.0 * 100 * B * 10 * P) + evals * 500 * f)
    assert estimate_seconds(cfg, 1e10, "cpu") == pytest.approx(flops / 1e10 + iters * STEP_OVERHEAD_S["cpu"]["step"])


def test_backprop_counts_steps_and_per_sample_ienk_counts_samples():
    sgd = compose_run(["optimizer=sgd", "dataset=fashion_mnist", "train.max_batches=5"])
    assert estimate_cost(sgd)[1:] == (5, "step")
    ienk = compose_run(["optimizer=ienk_simple", "model=mlp", "dataset=fashion_mnist", "train.max_batches=5"])
    flops, steps, kind = estimate_cost(ienk)
    assert (steps, kind) == (5 * ienk.train.batch_size, "sample")
    assert estimate_seconds(ienk, 40e9, "cpu") == pytest.approx(
        flops / 40e9 + steps * STEP_OVERHEAD_S["cpu"]["sample"])


@pytest.mark.parametrize("extra", [[], ["dataset.test_only=true"], ["dataset.test_size=500"],
                                   ["dataset.test_only=true", "dataset.test_only_train_size=9000",
                                    "dataset.test_size=300"]])
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_the_estimates_take_the_sizes_the_loader_reads(data_root, dataset, extra):
    """The cost model's dataset sizes (no file read) are those of the files the loader reads, after
    test_only and test_size."""
    from enkf_repro.data.datasets import dataset_sizes

    cfg = compose_run([f"dataset={dataset}", f"dataset.root={data_root}", *extra])
    assert dataset_sizes(cfg.dataset, files=False) == dataset_sizes(cfg.dataset)


def test_the_run_size_and_the_cost_come_from_the_data_the_model_and_the_method():
    from enkf_repro.config.schema import method_config
    from enkf_repro.runs.cost import run_size

    cfg = compose_run(["optimizer=eki", "model=dnn2", "dataset.test_only=true", "train.epochs=2.5",
                       "train.batch_size=100", "train.eval_every=null"])
    run = run_size(cfg)
    model = build_model(cfg.model)
    assert (run.per_epoch, run.batches, run.test_size, run.classes) == (80, 200, 2000, 10)
    assert (run.params, run.forward_flops) == (model.num_params, model.forward_flops())
    assert estimate_cost(cfg) == method_config(cfg.optimizer).cost(run)

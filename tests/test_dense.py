"""Dense models (mlp, dnn1..dnn4): batched forward against a per-member loop of the nn.Module."""

import pytest
import torch
from test_models import member_loop  # the per-member reference loop

from conftest import compose_run
from enkf_repro.models import build_model
from enkf_repro.models.dense import DenseNet, DenseSpec
from enkf_repro.models.ensemble import EnsembleForward

WIDTHS = {"mlp": [128], "dnn1": [], "dnn2": [128], "dnn3": [128, 128], "dnn4": [128, 128, 128]}


@pytest.mark.parametrize("name", list(WIDTHS))
def test_configs_give_the_documented_widths_relu_and_glorot(name):
    cfg = compose_run([f"model={name}", "optimizer=eki"])
    assert list(cfg.model.hidden) == WIDTHS[name]
    assert cfg.model.activation.value == "relu" and cfg.init.scheme.value == "glorot"
    spec = build_model(cfg.model)
    widths = [784, *WIDTHS[name], 10]
    assert spec.num_params == sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))


def test_depth_increases_from_dnn1_to_dnn4_and_mlp_is_784_128_10():
    depths = [len(WIDTHS[f"dnn{i}"]) for i in range(1, 5)]
    assert depths == sorted(set(depths))
    assert DenseSpec("mlp", [128]).num_params == 101770


@pytest.mark.parametrize("name", list(WIDTHS))
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_batched_forward_equals_member_loop(name, activation, chunk):
    hidden = [h // 8 for h in WIDTHS[name]]      # narrower: same code paths, faster reference loop
    spec = DenseSpec(name, hidden, activation)
    g = torch.Generator().manual_seed(0)
    U = torch.randn(7, spec.num_params, generator=g, dtype=torch.float64) * 0.3
    x = torch.rand(5, 1, 28, 28, generator=g, dtype=torch.float64)
    got = EnsembleForward(spec, chunk_size=chunk)(U, x)
    assert got.shape == (7, 5, 10)
    assert (got - member_loop(spec, U, x)).abs().max() < 1e-10


def test_full_width_dnn4_forward_equals_member_loop_and_float32_is_close():
    spec = DenseSpec("dnn4", WIDTHS["dnn4"], "relu")
    g = torch.Generator().manual_seed(1)
    U = torch.randn(3, spec.num_params, generator=g, dtype=torch.float64) * 0.05
    x = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64)
    ref = member_loop(spec, U, x)
    assert (EnsembleForward(spec)(U, x) - ref).abs().max() < 1e-10
    got32 = EnsembleForward(spec)(U.float(), x.float()).double()
    assert (got32 - ref).abs().max() / ref.abs().max() < 1e-5


def test_single_network_forward_and_module_shape():
    spec = DenseSpec("dnn2", [8])
    theta = torch.randn(spec.num_params, dtype=torch.float64)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    assert (spec.forward(theta, x) - member_loop(spec, theta[None], x)[0]).abs().max() < 1e-12
    assert isinstance(spec.module(), DenseNet)

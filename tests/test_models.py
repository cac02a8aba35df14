"""The batched, chunked ensemble forward against a per-member loop of the plain nn.Module."""

import pytest
import torch
from omegaconf import OmegaConf

from enkf_repro.models import PaperCNN, PaperCNNSpec, build_model
from enkf_repro.models.ensemble import EnsembleForward


def member_loop(spec, U, x):
    net = spec.module().double()
    outs = []
    with torch.no_grad():
        for theta in U:
            torch.nn.utils.vector_to_parameters(theta, net.parameters())
            outs.append(net(x))
    return torch.stack(outs)


def test_paper_cnn_has_18050_parameters_and_8450_with_text_pooling():
    assert PaperCNNSpec().num_params == 18050
    assert sum(p.numel() for p in PaperCNN().parameters()) == 18050
    assert PaperCNNSpec(pool_conv2=True).num_params == 8450


@pytest.mark.parametrize("activation", ["logistic", "relu", "tanh"])
@pytest.mark.parametrize("pool_conv2", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_batched_forward_equals_member_loop(activation, pool_conv2, chunk):
    spec = PaperCNNSpec(activation, pool_conv2)
    g = torch.Generator().manual_seed(0)
    U = torch.randn(7, spec.num_params, generator=g, dtype=torch.float64) * 0.3
    x = torch.rand(5, 1, 28, 28, generator=g, dtype=torch.float64)
    got = EnsembleForward(spec, chunk_size=chunk)(U, x)
    want = member_loop(spec, U, x)
    assert got.shape == (7, 5, 10)
    assert (got - want).abs().max() < 1e-10


def test_float32_forward_close_to_float64():
    spec = PaperCNNSpec("relu")
    g = torch.Generator().manual_seed(1)
    U = torch.randn(4, spec.num_params, generator=g, dtype=torch.float64)
    x = torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64)
    ref = member_loop(spec, U, x)
    got = EnsembleForward(spec)(U.float(), x.float()).double()
    assert ((got - ref).abs().max() / ref.abs().max()) < 1e-5


def test_single_network_forward_equals_module():
    spec = PaperCNNSpec("tanh")
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(spec.num_params, generator=g, dtype=torch.float64)
    x = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64)
    assert (spec.forward(theta, x) - member_loop(spec, theta[None], x)[0]).abs().max() < 1e-10


@pytest.mark.parametrize("activation", ["logistic", "relu", "tanh"])
@pytest.mark.parametrize("pool_conv2", [False, True])
def test_gradient_through_the_flat_forward_equals_the_modules(activation, pool_conv2):
    """A method that differentiates spec.forward(theta, x) gets the nn.Module's gradient (the fast
    path's in-place activations are only used without autograd)."""
    spec = PaperCNNSpec(activation, pool_conv2)
    g = torch.Generator().manual_seed(3)
    theta = (torch.randn(spec.num_params, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    x = torch.rand(4, 1, 28, 28, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(spec.forward(theta, x).square().sum(), theta)
    net = spec.module().double()
    torch.nn.utils.vector_to_parameters(theta.detach(), net.parameters())
    want = torch.nn.utils.parameters_to_vector(torch.autograd.grad(net(x).square().sum(), list(net.parameters())))
    assert torch.allclose(grad, want, rtol=1e-10, atol=1e-12)


def test_generic_vmap_path_equals_member_loop():
    """The default ModelSpec.forward_chunk (vmap over functional_call) used by other models."""
    spec = PaperCNNSpec("logistic")
    g = torch.Generator().manual_seed(3)
    U = torch.randn(3, spec.num_params, generator=g, dtype=torch.float64)
    x = torch.rand(2, 1, 28, 28, generator=g, dtype=torch.float64)
    from enkf_repro.models import ModelSpec

    spec.reference = spec.reference.double()
    got = ModelSpec.forward_chunk(spec, U, x)
    assert (got - member_loop(spec, U, x)).abs().max() < 1e-10


def test_init_draws_normal_weights_with_sigma():
    spec = build_model(OmegaConf.create({"name": "paper_cnn", "activation": "relu", "pool_conv2": False}))
    init = OmegaConf.create({"scheme": "normal", "sigma": 0.1})
    U = spec.init(50, init, torch.Generator().manual_seed(0))
    assert U.shape == (50, 18050)
    assert abs(float(U.std()) - 0.1) < 0.002 and abs(float(U.mean())) < 0.002
    V = spec.init(50, init, torch.Generator().manual_seed(0))
    assert torch.equal(U, V)


def test_bf16_forward_close_to_fp32():
    """precision=bf16 (autocast) changes the forward's rounding only."""
    spec = PaperCNNSpec("logistic")
    g = torch.Generator().manual_seed(4)
    U = torch.randn(6, spec.num_params, generator=g) * 0.1
    x = torch.rand(8, 1, 28, 28, generator=g)
    ref = EnsembleForward(spec, precision="fp32")(U, x)
    got = EnsembleForward(spec, precision="bf16")(U, x)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() / ref.abs().max() < 3e-2


@pytest.mark.slow
def test_compiled_forward_equals_eager():
    spec = PaperCNNSpec("relu")
    g = torch.Generator().manual_seed(5)
    U = torch.randn(5, spec.num_params, generator=g) * 0.1
    x = torch.rand(4, 1, 28, 28, generator=g)
    ref = EnsembleForward(spec, chunk_size=5)(U, x)
    got = EnsembleForward(spec, chunk_size=5, compile=True)(U, x)
    assert (got - ref).abs().max() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("tf32", 5e-3), ("bf16", 3e-2)])
def test_cuda_forward_and_update_match_cpu(precision, tol):
    from enkf_repro.optim.enkf import enkf_update

    spec = PaperCNNSpec("tanh")
    g = torch.Generator().manual_seed(6)
    U = torch.randn(40, spec.num_params, generator=g) * 0.1
    x = torch.rand(16, 1, 28, 28, generator=g)
    Y = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    ref = EnsembleForward(spec)(U, x)
    got = EnsembleForward(spec, chunk_size=7, precision=precision, device="cuda")(U.cuda(), x.cuda()).cpu()
    assert (got - ref).abs().max() / ref.abs().max() < tol
    new_ref = enkf_update(U, ref, Y, 0.01)
    new_gpu = enkf_update(U.cuda(), ref.cuda(), Y.cuda(), 0.01).cpu()
    assert (new_gpu - new_ref).abs().max() / (new_ref - U).abs().max() < 1e-3

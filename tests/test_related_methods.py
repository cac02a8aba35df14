"""EKI / MEKI / (R), never-look-back and the thesis IEnK: known solutions and invariants."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from enkf_repro.models import build_model
from enkf_repro.models.ensemble import EnsembleForward
from enkf_repro.optim.base import make_method
from enkf_repro.optim.eki import (
    EKI,
    RecentBatches,
    SpreadSchedule,
    eki_loss_grad,
    eki_matrix,
    eki_step,
    eki_step_,
    nesterov_coefficient,
    randomize_,
)
from enkf_repro.optim.haber import haber_step
from enkf_repro.optim.ienk import ienk_coefficients, ienk_update_, layer_blocks, perturbed_members
from enkf_repro.runs.folder import RunFolder

F64 = torch.float64


def linear_problem(J=10, P=30, d=20, seed=0):
    """G(u) = A u with y = A u*, u* in the affine hull of the initial ensemble (reachable)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, P, generator=g, dtype=F64) / P ** 0.5
    U0 = torch.randn(J, P, generator=g, dtype=F64)
    c = torch.randn(J, generator=g, dtype=F64)
    u_star = (c - c.mean() + 1.0 / J) @ U0
    return A, U0, (A @ u_star).reshape(d, 1)


def outputs(U, A):
    return (U @ A.T).unsqueeze(-1)          # (J, d, 1): d "samples" of one output


def mean_misfit(U, A, y):
    return float(0.5 * ((A @ U.mean(0)).reshape(-1, 1) - y).pow(2).sum())


def ensemble_misfit(U, A, y):
    return float(0.5 * (outputs(U, A) - y).pow(2).sum((1, 2)).mean())


# -- EKI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("J,P,B,C", [(6, 15, 4, 3), (40, 25, 3, 2)])   # J <= d and J > d
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_eki_step_equals_the_formula_with_an_explicit_D(J, P, B, C, loss):
    g = torch.Generator().manual_seed(J)
    U = torch.randn(J, P, generator=g, dtype=F64)
    G = torch.rand(J, B, C, generator=g, dtype=F64)
    Y = torch.nn.functional.one_hot(torch.randint(0, C, (B,), generator=g), C).to(F64)
    _, grad = eki_loss_grad(G, Y, loss, 0.005)
    D = torch.zeros(J, J, dtype=F64)
    Gbar = G.mean(0)
    for j in range(J):
        for k in range(J):
            D[j, k] = ((G[k] - Gbar) * grad[j]).sum() / J
    assert (eki_matrix(G, grad) - D).abs().max() < 1e-12
    assert D.sum(1).abs().max() < 1e-12                      # rows sum to zero
    h = 2.0 / (torch.linalg.matrix_norm(D) + 0.5)
    got, info = eki_step_(U.clone(), G, Y, 2.0, 0.5, loss)
    assert abs(info["h"] - float(h)) < 1e-12
    assert (got - (U - h * D @ U)).abs().max() < 1e-10


def test_cross_entropy_gradient_is_minus_y_over_g_plus_delta():
    G = torch.tensor([[[0.2, 0.8], [0.6, 0.4]]], dtype=F64)
    Y = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
    psi, grad = eki_loss_grad(G, Y, "cross_entropy", 0.005)
    assert torch.allclose(grad[0], torch.tensor([[0.0, -1 / 0.805], [-1 / 0.605, 0.0]], dtype=F64))
    assert abs(float(psi[0]) + math.log(0.805) + math.log(0.605)) < 1e-12


def test_eki_misfit_decreases_monotonically_for_small_h0():
    A, U, y = linear_problem()
    start = mean_misfit(U, A, y)
    prev_mean, prev_ens = start, ensemble_misfit(U, A, y)
    for _ in range(300):
        U = eki_step(U, outputs(U, A), y, h0=0.1, eps=0.5, loss="mse")
        m, e = mean_misfit(U, A, y), ensemble_misfit(U, A, y)
        assert m <= prev_mean * (1 + 1e-12) and e <= prev_ens * (1 + 1e-12)
        prev_mean, prev_ens = m, e
    assert prev_mean < 0.1 * start


def iterations_to(tol, A, U0, y, momentum, h0=0.5, limit=3000):
    U, prev = U0.clone(), U0.clone()
    start = mean_misfit(U0, A, y)
    for n in range(limit):
        lam = nesterov_coefficient(n) if momentum else 0.0
        V = U + lam * (U - prev)
        prev, U = U, eki_step(V, outputs(V, A), y, h0=h0, eps=0.5, loss="mse")
        if mean_misfit(U, A, y) < tol * start:
            return n + 1
    return limit


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_nesterov_meki_needs_fewer_iterations_than_eki(tol):
    A, U0, y = linear_problem()
    plain = iterations_to(tol, A, U0, y, momentum=False)
    nesterov = iterations_to(tol, A, U0, y, momentum=True)
    assert plain < 3000 and nesterov < 0.5 * plain, (plain, nesterov)


def test_nesterov_coefficient():
    assert nesterov_coefficient(0) == 0 and nesterov_coefficient(7) == 0.7
    assert nesterov_coefficient(5, 0.9) == 0.9


def tiny_cfg(**opt):
    base = {"name": "eki", "ensemble_size": 8, "h0": 2.0, "eps": 0.5, "loss": "cross_entropy", "delta": 0.005,
            "momentum": "none", "momentum_coef": None, "randomize": False, "random_gamma0": 1.0,
            "random_tau": 100.0, "best_of": 16}
    base.update(opt)
    return OmegaConf.create({"optimizer": base, "init": {"scheme": "glorot", "sigma": 0.1}})


def tiny_batch(seed, B=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 28, 28, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (B,), generator=g), 10).float()
    return x, y


def dense(name="dnn1", hidden=()):
    return build_model(OmegaConf.create({"name": name, "hidden": list(hidden), "activation": "relu"}))


@pytest.mark.parametrize("momentum", ["none", "nesterov"])
def test_eki_members_stay_in_the_initial_span_without_randomisation(momentum):
    model = dense()
    cfg = tiny_cfg(momentum=momentum)
    eki = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"))
    eki.U = eki.U.double()
    U0 = eki.U.clone()
    for i in range(6):
        eki.step(*[t.double() for t in tiny_batch(i)])
    Q, _ = torch.linalg.qr(U0.T)
    assert (eki.U.T - Q @ (Q.T @ eki.U.T)).abs().max() < 1e-9 * eki.U.abs().max()
    assert not torch.allclose(eki.U, U0)


def test_randomisation_keeps_the_mean_and_sets_the_spread():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(4000, 3, generator=g, dtype=F64) + torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    mean = U.mean(0)
    noise = torch.randn(4000, 3, generator=g, dtype=F64) * torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    randomize_(U, noise, 0.2)
    assert (U.mean(0) - mean).abs().max() < 1e-12
    assert torch.allclose(U.std(0), torch.tensor([0.2, 0.1, 0.0], dtype=F64), atol=0.01)
    s = SpreadSchedule(1.0, 100.0)
    assert s(0) == 1.0 and s(300) == 0.5 and s(1000) < s(999)


@pytest.mark.parametrize("scheme", ["normal", "glorot"])
def test_prior_std_matches_the_init_draws(scheme):
    model = dense("dnn2", [32])
    init = OmegaConf.create({"scheme": scheme, "sigma": 0.3})
    U = model.init(400, init, torch.Generator().manual_seed(0))
    std = model.prior_std(init)
    for a, b in [(0, 32 * 784), (32 * 784, 32 * 785), (32 * 785, model.num_params - 10)]:
        want = float(std[a])
        assert (std[a:b] == want).all()
        assert abs(float(U[:, a:b].std()) - want) <= 0.02 * want + 1e-12


def test_eki_randomised_step_moves_the_mean_by_the_eki_step_only():
    """(R): the redraw changes the members but not the mean, and the spread follows gamma(n)."""
    model = dense()
    cfg = tiny_cfg(randomize=True, ensemble_size=400, random_gamma0=0.5, random_tau=1.0)
    eki = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"))
    x, y = tiny_batch(0)
    U = eki.U.clone()
    G = torch.softmax(EnsembleForward(model)(U, x), -1)
    want = eki_step(U.double(), G.double(), y.double(), 2.0, 0.5, "cross_entropy").mean(0)
    eki.step(x, y)
    assert (eki.U.double().mean(0) - want).abs().max() < 1e-5
    ratio = eki.U[:, :7840].std(0).mean() / (U[:, :7840].std(0).mean())
    assert abs(float(ratio) - 0.5 / math.sqrt(2.0)) < 0.02


def test_eki_state_dict_resumes_exactly():
    model = dense()
    cfg = tiny_cfg(momentum="nesterov", randomize=True)

    def make():
        gen = torch.Generator().manual_seed(3)
        return make_method(cfg, model, EnsembleForward(model), gen, torch.device("cpu")), gen

    a, ga = make()
    for i in range(3):
        a.step(*tiny_batch(i))
    state, gstate = a.state_dict(), ga.get_state()
    for i in range(3, 5):
        a.step(*tiny_batch(i))
    b, gb = make()
    b.load_state_dict(state)
    gb.set_state(gstate)
    for i in range(3, 5):
        b.step(*tiny_batch(i))
    assert torch.equal(a.U, b.U)
    assert torch.equal(a.eval_params()["best"], b.eval_params()["best"])


def test_best_member_is_the_lowest_training_loss_member():
    model = dense()
    eki = make_method(tiny_cfg(best_of=16), model, EnsembleForward(model), torch.Generator().manual_seed(0),
              torch.device("cpu"))
    x, y = tiny_batch(0, B=16)
    eki.recent.add(x, y)
    p = torch.softmax(EnsembleForward(model)(eki.U, x), -1)
    ce = -(y * torch.log(p + 0.005)).sum((1, 2))
    assert torch.equal(eki.eval_params()["best"], eki.U[int(ce.argmin())])


def test_recent_batches_keeps_the_last_n_samples_and_skips_repeats():
    r = RecentBatches(10)
    for i in range(5):
        x = torch.full((4, 1), float(i))
        r.add(x, x)
        r.add(x, x)          # the same batch presented again: not stored twice
    xs, _ = r.get()
    assert xs.shape == (10, 1) and xs[:, 0].tolist() == [2, 2, 3, 3, 3, 3, 4, 4, 4, 4]


# -- never look back ---------------------------------------------------------------------------
def test_haber_converges_to_the_minimiser_of_a_strongly_convex_quadratic():
    """F(theta) = A theta, 0.5 |A theta - y|^2 with A of full column rank (strongly convex) and
    inconsistent y: K < P random directions per step, still converges to the least-squares
    minimiser."""
    g = torch.Generator().manual_seed(0)
    P, K, d = 30, 8, 60
    A = torch.randn(d, P, generator=g, dtype=F64)
    y = torch.randn(d, generator=g, dtype=F64)
    x_star = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)
    theta = torch.randn(P, generator=g, dtype=F64)
    for _ in range(400):
        omega = 0.1 * torch.randn(K, P, generator=g, dtype=F64)
        theta = haber_step(theta, omega, A @ theta, (theta + omega) @ A.T, y, alpha=1.0, gamma=1e-10)
    assert torch.linalg.norm(theta - x_star) < 1e-3 * torch.linalg.norm(x_star)


def test_haber_step_lies_in_the_span_of_the_perturbations():
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(20, generator=g, dtype=F64)
    omega = torch.randn(4, 20, generator=g, dtype=F64)
    new = haber_step(theta, omega, torch.rand(3, 5, generator=g, dtype=F64),
                     torch.rand(4, 3, 5, generator=g, dtype=F64), torch.rand(3, 5, generator=g, dtype=F64), 0.7, 0.01)
    Q, _ = torch.linalg.qr(omega.T)
    delta = new - theta
    assert (delta - Q @ (Q.T @ delta)).abs().max() < 1e-12 and delta.abs().max() > 0


def test_haber_method_lowers_the_misfit_on_a_fixed_batch():
    model = dense()
    cfg = OmegaConf.create({"optimizer": {"name": "haber", "ensemble_size": 20, "sigma": 0.01, "alpha": 1.0,
                                          "gamma": 1e-3, "output": "softmax"},
                            "init": {"scheme": "glorot", "sigma": 0.1}})
    h = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"))
    x, y = tiny_batch(0, B=16)
    first = h.step(x, y)["train_misfit"]
    for _ in range(20):
        last = h.step(x, y)["train_misfit"]
    assert last < 0.5 * first


# -- thesis IEnK --------------------------------------------------------------------------------
def test_layer_blocks_of_the_mlp():
    model = dense("mlp", [128])
    (a1, b1, s1), (a2, b2, s2) = layer_blocks(model)
    assert (a1, b1, a2, b2) == (0, 128 * 785, 128 * 785, 101770) and model.num_params == 101770
    assert s1 == pytest.approx(math.sqrt(2 / (784 + 128))) and s2 == pytest.approx(math.sqrt(2 / 138))


def gradient_step_problem():
    """dnn2 with 2 hidden units, float64, one sample, and the K = P coordinate perturbations of size
    sigma = 1e-6: the setting in which an IEnK step is sigma^2 times a gradient step."""
    model = dense("dnn2", [2])
    g = torch.Generator().manual_seed(0)
    theta = model.init(1, OmegaConf.create({"scheme": "glorot", "sigma": 0.1}), g, dtype=F64)[0]
    theta[model.num_params - 10:] = 0.1 * torch.randn(10, generator=g, dtype=F64)
    x = torch.rand(1, 1, 28, 28, generator=g, dtype=F64)
    y = torch.nn.functional.one_hot(torch.tensor([3]), 10).to(F64)
    sigma = 1e-6
    noise = sigma * torch.eye(model.num_params, dtype=F64)
    return model, theta, x, y, sigma, noise


def test_ienk_update_is_a_scaled_gradient_step():
    """sum_k dW_k c_k = sigma^2 grad_W [-<y, log(p + delta)>] + O(sigma^3) when the K perturbations
    are sigma times the coordinate directions (K = P): the thesis's step is a derivative-free
    gradient step (float64, one-hidden-layer net, one sample)."""
    model, theta, x, y, sigma, noise = gradient_step_problem()
    blocks = layer_blocks(model)
    p = torch.softmax(EnsembleForward(model, chunk_size=4096)(perturbed_members(theta, noise, blocks), x), -1)
    c = ienk_coefficients(p[1:], p[0], y)
    step = ienk_update_(torch.zeros_like(theta), noise, c, blocks, lr=1.0)   # = -sum_k dW_k c_k
    assert_step_is_scaled_gradient(model, theta, x, y, step, sigma)


def assert_step_is_scaled_gradient(model, theta, x, y, step, sigma):
    """-step / sigma^2 equals the gradient of <y, -log(softmax + 0.005)> (the IEnK's loss) in theta."""
    net = model.module().double()
    torch.nn.utils.vector_to_parameters(theta.clone(), net.parameters())
    loss = -(y * torch.log(torch.softmax(net(x), -1) + 0.005)).sum()
    grad = torch.nn.utils.parameters_to_vector(torch.autograd.grad(loss, list(net.parameters())))
    assert torch.linalg.norm(-step / sigma ** 2 - grad) < 1e-4 * torch.linalg.norm(grad)


def test_ienk_perturbs_one_layer_per_member_and_updates_only_along_its_noise():
    model = dense("mlp", [16])
    blocks = layer_blocks(model)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(model.num_params, generator=g, dtype=F64)
    noise = torch.randn(3, model.num_params, generator=g, dtype=F64)
    M = perturbed_members(theta, noise, blocks)
    assert M.shape == (1 + 3 * 2, model.num_params) and torch.equal(M[0], theta)
    (a1, b1, _), (a2, b2, _) = blocks
    assert torch.equal(M[1:4, a2:b2], theta[a2:b2].expand(3, -1))
    assert torch.equal(M[1:4, a1:b1], theta[a1:b1] + noise[:, a1:b1])
    assert torch.equal(M[4:7, a1:b1], theta[a1:b1].expand(3, -1))
    c = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 0.0], dtype=F64)
    new = ienk_update_(theta.clone(), noise, c, blocks, lr=0.5)
    assert torch.allclose(new[a1:b1], theta[a1:b1] - 0.5 * noise[0, a1:b1])
    assert torch.allclose(new[a2:b2], theta[a2:b2] - 1.0 * noise[1, a2:b2])


@pytest.mark.parametrize("perturb", ["joint", "per_layer"])
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_ienk_method_learns_a_fixed_batch(mode, perturb):
    """(lr 0.02: at 0.05 the joint estimator, noisier than the per-layer one, diverges on some seeds.)"""
    model = dense("mlp", [16])
    cfg = OmegaConf.create({"optimizer": {"name": "ienk_simple", "ensemble_size": 10, "lr": 0.02,
                                          "delta": 0.005, "mode": mode, "perturb": perturb},
                            "init": {"scheme": "glorot", "sigma": 0.1}})
    m = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"))
    x, y = tiny_batch(0, B=8)
    first = m.step(x, y)["train_loss"]
    for _ in range(30):
        last = m.step(x, y)["train_loss"]
    assert last < 0.7 * first


# -- biases of the ensemble methods' prior ------------------------------------------------------
def init_cfg(scheme="glorot", sigma=0.3, bias_sigma=None):
    return OmegaConf.create({"scheme": scheme, "sigma": sigma, "bias_sigma": bias_sigma})


@pytest.mark.parametrize("scheme", ["normal", "glorot"])
def test_ensemble_prior_draws_biases_with_the_std_of_their_layer_weights(scheme):
    model = dense("dnn2", [32])
    init = init_cfg(scheme)
    w1, b1, w2, b2 = model.prior_stds(init, ensemble=True)
    if scheme == "normal":
        assert w1 == w2 == b1 == b2 == 0.3
    else:
        assert (b1, b2) == (w1, w2) == (math.sqrt(2 / (784 + 32)), math.sqrt(2 / (32 + 10)))
    assert model.prior_stds(init) == [w1, 0.0, w2, 0.0]                   # the standard init: zero biases
    assert model.prior_stds(init_cfg(scheme, bias_sigma=0.05), ensemble=True) == [w1, 0.05, w2, 0.05]
    assert model.prior_stds(init_cfg(scheme, bias_sigma=0.0), ensemble=True) == [w1, 0.0, w2, 0.0]
    U = model.init(400, init, torch.Generator().manual_seed(0), ensemble=True)
    std = model.prior_std(init, ensemble=True)
    a, b = 32 * 784, 32 * 785                                                # the hidden biases
    assert (std[a:b] == b1).all() and abs(float(U[:, a:b].std()) - b1) < 0.02 * b1


def test_bias_sigma_zero_keeps_the_old_draws():
    """bias_sigma = 0 draws no random numbers for biases: the ensemble is the one drawn before
    biases had a prior (the same generator stream)."""
    model = dense("dnn3", [16, 8])
    a = model.init(5, init_cfg(bias_sigma=0.0), torch.Generator().manual_seed(1), ensemble=True)
    b = model.init(5, init_cfg(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def bias_slices(model):
    out, offset = [], 0
    for name, shape in model.shapes.items():
        n = math.prod(shape)
        if name.endswith("bias"):
            out.append(slice(offset, offset + n))
        offset += n
    return out


@pytest.mark.parametrize("bias_sigma", [None, 0.0])
def test_eki_trains_the_biases_of_a_dense_model_unless_bias_sigma_is_zero(bias_sigma):
    model = dense("dnn2", [16])
    cfg = tiny_cfg()
    cfg.init.bias_sigma = bias_sigma
    eki = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"))
    U0 = eki.U.clone()
    for i in range(4):
        eki.step(*tiny_batch(i))
    for s in bias_slices(model):
        if bias_sigma == 0.0:                 # 0 in every member, and every update keeps them 0
            assert (U0[:, s] == 0).all() and (eki.U[:, s] == 0).all()
        else:
            mean_move = (eki.U[:, s].mean(0) - U0[:, s].mean(0)).abs().max()
            assert mean_move > 1e-4                                       # the mean network's biases learn
            assert (eki.U[:, s].std(0) > 1e-3).all()                      # members differ
    assert not torch.equal(eki.U, U0)


def test_ensemble_methods_draw_biases_and_the_others_start_from_zero():
    """Built from typed configs and one context: the ensemble's prior covers the biases, the
    single-network methods and backprop start from the standard init (zero biases)."""
    from enkf_repro.optim.backprop import Backprop, SGDConfig
    from enkf_repro.optim.base import MethodContext
    from enkf_repro.optim.enkf import EnKF, EnKFConfig
    from enkf_repro.optim.haber import Haber, HaberConfig
    from enkf_repro.optim.ienk import IEnKSimple, IEnKSimpleConfig

    model = dense("dnn2", [16])
    ctx = MethodContext(model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"),
                        init=OmegaConf.create({"scheme": "glorot", "sigma": 0.1, "bias_sigma": None}))
    enkf = EnKF(EnKFConfig(ensemble_size=6, repetitions=1), ctx)
    haber = Haber(HaberConfig(ensemble_size=4, gamma=1.0), ctx)
    ienk = IEnKSimple(IEnKSimpleConfig(ensemble_size=4), ctx)
    sgd = Backprop(SGDConfig(momentum=0.0), ctx)
    sgd_theta = torch.nn.utils.parameters_to_vector(sgd.net.parameters()).detach()
    for s in bias_slices(model):
        assert (enkf.U[:, s].std(0) > 0).all()
        for theta in (haber.theta, ienk.theta, sgd_theta):
            assert (theta[s] == 0).all()


# -- thesis IEnK: all layers perturbed jointly --------------------------------------------------
def ienk_cfg(K=3, lr=0.5, mode="sample", perturb="joint"):
    return OmegaConf.create({"optimizer": {"name": "ienk_simple", "ensemble_size": K, "lr": lr, "delta": 0.005,
                                           "mode": mode, "perturb": perturb},
                             "init": {"scheme": "glorot", "sigma": 0.1, "bias_sigma": None}})


def thesis_loop(W1, b1, W2, b2, x, y, K, lr, gen):
    """The thesis's per-sample update (codes/main.py with DenseLayer of codes/Layers.py) written
    out: for each sample, each layer draws K perturbations of its weight and bias with its Glorot
    std; network k uses every layer's k-th perturbation, the last network none; then
    fin = (p_k - p_0)^T (-y / (p_0 + 0.005)) and every layer does W -= lr * sum_k dW_k fin_k.
    The K x P standard normals are taken from ``gen`` in the flat parameter order (weights as
    (out, in), as nn.Linear stores them)."""
    s1 = math.sqrt(2 / (W1.shape[0] + W1.shape[1]))
    s2 = math.sqrt(2 / (W2.shape[0] + W2.shape[1]))
    sizes = [W1.numel(), b1.numel(), W2.numel(), b2.numel()]
    for s in range(x.shape[0]):
        xi = torch.randn(K, sum(sizes), generator=gen, dtype=F64)
        dW1, db1, dW2, db2 = xi.split(sizes, dim=1)
        dW1, db1 = s1 * dW1.reshape(K, *W1.shape), s1 * db1
        dW2, db2 = s2 * dW2.reshape(K, *W2.shape), s2 * db2
        inp = x[s].reshape(-1)
        outs = []
        for k in range(K + 1):
            if k < K:
                w1, c1, w2, c2 = W1 + dW1[k], b1 + db1[k], W2 + dW2[k], b2 + db2[k]
            else:
                w1, c1, w2, c2 = W1, b1, W2, b2
            hidden = torch.relu(w1 @ inp + c1)
            z = w2 @ hidden + c2
            outs.append(torch.exp(z) / torch.exp(z).sum())
        p0 = outs[K]
        ens_error = torch.stack([outs[k] - p0 for k in range(K)], 1)       # (10, K)
        fin = ens_error.T @ (-y[s] / (p0 + 0.005))                         # (K,)
        W1 = W1 - lr * sum(dW1[k] * fin[k] for k in range(K))
        b1 = b1 - lr * sum(db1[k] * fin[k] for k in range(K))
        W2 = W2 - lr * sum(dW2[k] * fin[k] for k in range(K))
        b2 = b2 - lr * sum(db2[k] * fin[k] for k in range(K))
    return torch.cat([W1.reshape(-1), b1, W2.reshape(-1), b2])


def test_ienk_joint_step_equals_the_thesis_loop():
    model = dense("mlp", [5])
    K = 3
    gen = torch.Generator().manual_seed(0)
    m = make_method(ienk_cfg(K), model, EnsembleForward(model), gen, torch.device("cpu"))
    m.theta = m.theta.double()
    m.std = torch.cat([torch.full((b - a,), std, dtype=F64) for a, b, std in layer_blocks(model)])
    m.theta[5 * 784: 5 * 785] = 0.1 * torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=F64)
    x, y = [t.double() for t in tiny_batch(0, B=3)]
    p = model.unflatten(m.theta.clone())
    state = gen.get_state()
    want = thesis_loop(p["net.fc1.weight"], p["net.fc1.bias"], p["net.fc2.weight"], p["net.fc2.bias"], x, y, K,
                       0.5, torch.Generator().set_state(state))
    m.step(x, y)
    assert (m.theta - want).abs().max() < 1e-12
    moved = (m.theta - torch.cat([t.reshape(-1) for t in p.values()])).abs()
    assert (moved[5 * 784: 5 * 785] > 0).all() and (moved[-10:] > 0).all()  # every layer and its biases move


@pytest.mark.parametrize("perturb,networks", [("joint", lambda K, L: K + 1), ("per_layer", lambda K, L: 1 + K * L)])
def test_ienk_networks_per_sample(perturb, networks):
    model = dense("dnn3", [6, 4])                                              # L = 3 layers
    calls = []
    fwd = EnsembleForward(model)

    def spy(M, x):
        calls.append((M.shape[0], x.shape[0]))
        return fwd(M, x)

    m = make_method(ienk_cfg(4, 0.001, perturb=perturb), model, spy, torch.Generator().manual_seed(0),
                   torch.device("cpu"))
    m.step(*tiny_batch(0, B=5))
    assert calls == [(networks(4, 3), 1)] * 5


def test_ienk_joint_update_is_a_scaled_gradient_step():
    """With the K = P coordinate directions of size sigma, the joint estimate is sigma^2 times the
    gradient (as for per_layer, test_ienk_update_is_a_scaled_gradient_step)."""
    from enkf_repro.optim.ienk import ienk_joint_update_, joint_members

    model, theta, x, y, sigma, noise = gradient_step_problem()
    p = torch.softmax(EnsembleForward(model, chunk_size=4096)(joint_members(theta, noise), x), -1)
    step = ienk_joint_update_(torch.zeros_like(theta), noise, ienk_coefficients(p[1:], p[0], y), lr=1.0)
    assert_step_is_scaled_gradient(model, theta, x, y, step, sigma)


# -- EKI(R): the public implementation's schedule -----------------------------------------------
def test_public_schedule_adds_h_quarter_scaled_prior_noise_after_each_step():
    from enkf_repro.optim.eki import public_noise_scale

    model = dense("dnn2", [8])
    cfg = tiny_cfg(randomize=True, random_schedule="public", ensemble_size=300)
    cfg.init.bias_sigma = None
    gen = torch.Generator().manual_seed(0)
    eki = make_method(cfg, model, EnsembleForward(model), gen, torch.device("cpu"))
    x, y = tiny_batch(0)
    U = eki.U.clone()
    G = torch.softmax(EnsembleForward(model)(U, x), -1)
    W, info = eki_step_(U.clone(), G, y, 2.0, 0.5, "cross_entropy")
    state = gen.get_state()
    eki.step(x, y)
    scale = (2.0 / (300 * info["d_norm"] + 0.5)) ** 0.25                   # h_t^(1/4), h_t = h0 / (J ||D|| + eps)
    assert scale == pytest.approx(public_noise_scale(2.0, 0.5, info["d_norm"], 300))
    assert eki.diagnostics()["random_noise_scale"] == pytest.approx(scale)
    assert "random_gamma" not in eki.diagnostics()
    xi = torch.randn(U.shape, generator=torch.Generator().set_state(state))
    prior = model.prior_std(cfg.init, ensemble=True)
    assert torch.allclose(eki.U, W + scale * xi * prior, atol=1e-6)
    noise = eki.U - W                                                       # per-parameter spread: scale x prior
    for s in [slice(0, 8 * 784), *bias_slices(model)]:
        want = scale * float(prior[s][0])
        assert abs(float(noise[:, s].std(0).mean()) - want) < 0.1 * want


@pytest.mark.parametrize("momentum", ["none", "nesterov"])
def test_public_schedule_redraws_around_the_mean_from_the_prior_at_epoch_end(momentum):
    model = dense("dnn2", [8])
    cfg = tiny_cfg(randomize=True, random_schedule="public", ensemble_size=400, momentum=momentum)
    cfg.init.bias_sigma = None
    eki = make_method(cfg, model, EnsembleForward(model), torch.Generator().manual_seed(0), torch.device("cpu"))
    for i in range(2):
        eki.step(*tiny_batch(i))
    eki.U.mul_(0.1)                                                         # a collapsed ensemble
    mean = eki.U.mean(0)
    eki.on_epoch_end()
    assert (eki.U.mean(0) - mean).abs().max() < 1e-6                       # the mean network is kept
    prior = model.prior_std(cfg.init, ensemble=True)
    for s in [slice(0, 8 * 784), slice(8 * 785, 8 * 785 + 80), *bias_slices(model)]:
        want = float(prior[s][0])
        assert abs(float(eki.U[:, s].std(0).mean()) - want) < 0.05 * want  # the full prior spread (gamma = 1)


def test_decay_schedule_ignores_epoch_ends():
    model = dense()
    eki = make_method(tiny_cfg(randomize=True), model, EnsembleForward(model), torch.Generator().manual_seed(0),
              torch.device("cpu"))
    U = eki.U.clone()
    eki.on_epoch_end()
    assert torch.equal(eki.U, U)


# -- through the training loop ------------------------------------------------------------------
def loop_run(root, out, *overrides):
    from conftest import compose_run
    from enkf_repro.runs.runner import plan, run_one

    ov = [*overrides, f"dataset.root={root}", "dataset.test_only=false", "dataset.test_size=null",
          "train.max_batches=3", "scale=smoke", "progress=false", f"out_dir={out}"]
    (spec,) = plan(compose_run(ov))
    assert run_one(spec)["status"] == "finished"
    return spec


def test_the_loop_calls_on_epoch_end_after_each_completed_epoch(synthetic_root, tmp_path, monkeypatch):
    from enkf_repro.optim.base import Method

    seen = []
    monkeypatch.setattr(EKI, "on_epoch_end", lambda self: seen.append(("eki", self.n)))
    monkeypatch.setattr(Method, "on_epoch_end", lambda self: seen.append(("other", None)))
    # 2.5 epochs of 3 batches: ends after epochs 1 and 2, none for the half epoch
    loop_run(synthetic_root, tmp_path / "a", "optimizer=eki", "model=dnn1", "optimizer.ensemble_size=4",
             "train.epochs=2.5", "train.eval_every=100")
    assert seen == [("eki", 3), ("eki", 6)]
    seen.clear()
    # the EnKF presents each batch r = 2 times: the epoch ends after the 2nd presentation of batch 3
    loop_run(synthetic_root, tmp_path / "b", "optimizer=enkf", "model=dnn1", "optimizer.ensemble_size=4",
             "optimizer.repetitions=2", "train.epochs=2", "train.eval_every=100")
    assert seen == [("other", None)] * 2


def test_default_randomised_eki_run_matches_the_schedule_before_the_epoch_hook(synthetic_root, tmp_path):
    """The default (R) schedule (decay) through the loop, with biases at 0 (init.bias_sigma=0, the
    prior before biases had one), gives exactly the numbers of the update as it was written before
    the epoch hook and the public schedule existed: eki_step_ then a centred redraw with gamma(n)
    after every step, recomputed here from the pure functions."""
    from enkf_repro.data.batches import Batches
    from enkf_repro.data.datasets import load_data

    spec = loop_run(synthetic_root, tmp_path, "optimizer=eki", "model=dnn2", "optimizer.ensemble_size=5",
                    "optimizer.randomize=true", "init.scheme=glorot", "init.bias_sigma=0", "train.epochs=2",
                    "train.eval_every=2")
    cfg = spec.cfg
    data = load_data(cfg.dataset, "cpu")
    model = build_model(cfg.model)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    forward = EnsembleForward.from_config(model, cfg.ensemble, "cpu")
    U = model.init(5, cfg.init, gen)                                      # biases 0, no draws for them
    prior = model.prior_std(cfg.init)
    spread = SpreadSchedule(1.0, 100.0)
    batches = Batches(data, cfg.train, int(cfg.seed))

    def evaluate():
        return model.evaluate(U.mean(0), data.test_x, data.test_y, int(cfg.train.eval_batch_size))

    want = {0: evaluate()}
    for k in range(batches.total):
        x, y = batches.get(k)
        eki_step_(U, torch.softmax(forward(U, x), -1), y, 2.0, 0.5, "cross_entropy", 0.005)
        randomize_(U, torch.randn(U.shape, generator=gen), spread(k + 1) * prior)
        if (k + 1) % 2 == 0 or k + 1 == batches.total:
            want[k + 1] = evaluate()
    df = RunFolder(spec.dir).rows()
    got = {int(i): (e, float(df[(df.iteration == i) & (df.metric == "test_loss")]["value"].iloc[0]))
           for i, e in df[df.metric == "test_error"][["iteration", "value"]].itertuples(index=False)}
    assert sorted(got) == [0, 2, 4, 6] and got == {k: (e, loss) for k, (e, loss) in want.items()}

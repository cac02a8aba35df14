"""The EnKF update against plain float64 reference formulas and known-solution problems."""

import warnings

import pytest
import torch

from enkf_repro.errors import DivergenceError
from enkf_repro.optim.enkf import enkf_update, enkf_update_reference, kalman_factors
from enkf_repro.optim.failure import redraw_members
from enkf_repro.optim.linalg import cholesky_jittered

pytestmark = pytest.mark.usefixtures("float64_default")   # references in float64 (conftest)


def literal_member_loop(U, G, Y, gamma):
    """The published code's scheme with an explicit loop over members as well (tiny sizes only):
    an independent check of the package's reference ``enkf_update_reference``."""
    U = U.clone()
    J, B, C = G.shape
    for s in range(B):
        g = G[:, s, :]
        gc = g - g.mean(0)
        c_ug = (U - U.mean(0)).T @ gc / J
        k = torch.linalg.inv(gc.T @ gc / J + gamma * torch.eye(C))
        for j in range(J):
            U[j] = U[j] + c_ug @ k @ (Y[s] - g[j])
    return U


def random_problem(J, P, B, C, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(J, P, generator=g) + 0.5
    G = scale * torch.randn(J, B, C, generator=g)
    Y = torch.nn.functional.one_hot(torch.randint(0, C, (B,), generator=g), C).double()
    return U, G, Y


@pytest.mark.parametrize("J,P,B,C", [(7, 11, 5, 3), (30, 50, 8, 10), (40, 13, 4, 10), (3, 5, 6, 2)])
@pytest.mark.parametrize("gamma", [0.01, 1.0])
def test_sequential_equals_the_literal_per_sample_update(J, P, B, C, gamma):
    U, G, Y = random_problem(J, P, B, C, seed=J + P)
    got = enkf_update(U, G, Y, gamma, mode="sequential")
    want = enkf_update_reference(U, G, Y, gamma, mode="sequential")
    assert (got - want).abs().max() < 1e-10 * max(1.0, want.abs().max())


def test_reference_equals_a_loop_over_members():
    U, G, Y = random_problem(6, 9, 4, 3, seed=1)
    want = literal_member_loop(U, G, Y, 0.1)
    assert (enkf_update_reference(U, G, Y, 0.1) - want).abs().max() < 1e-12 * max(1.0, want.abs().max())


@pytest.mark.parametrize("J,P,B,C", [(50, 20, 3, 4), (8, 20, 3, 4), (12, 7, 5, 10)])
def test_batch_equals_textbook_joint_formula(J, P, B, C):
    # covers both solves: d = B*C <= J (data space) and d > J (Woodbury, ensemble space)
    U, G, Y = random_problem(J, P, B, C, seed=3)
    got = enkf_update(U, G, Y, 0.05, mode="batch")
    want = enkf_update_reference(U, G, Y, 0.05, mode="batch")
    assert (got - want).abs().max() < 1e-10 * max(1.0, want.abs().max())


def test_one_sample_batch_modes_agree():
    U, G, Y = random_problem(20, 9, 1, 10, seed=5)
    a = enkf_update(U, G, Y, 0.01, mode="sequential")
    b = enkf_update(U, G, Y, 0.01, mode="batch")
    assert (a - b).abs().max() < 1e-10


def test_update_leaves_input_untouched_and_keeps_dtype():
    U, G, Y = random_problem(10, 6, 2, 3)
    U0 = U.clone()
    out = enkf_update(U.float(), G.float(), Y.float(), 0.1)
    assert out.dtype == torch.float32 and torch.equal(U, U0)


def test_float32_path_close_to_float64():
    U, G, Y = random_problem(200, 300, 16, 10, seed=9, scale=3.0)
    ref = enkf_update(U, G, Y, 0.01)
    got = enkf_update(U.float(), G.float(), Y.float(), 0.01).double()
    assert (got - ref).abs().max() / (ref - U).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["sequential", "batch"])
def test_linear_inverse_problem_converges_in_initial_span(mode):
    """G(u) = A u with y = A u*, u* in the affine hull of the initial ensemble (where the mean
    lives: U <- T U with T 1 = 1): iterating the update drives the mean's misfit below 1e-3 of
    its start, and every member stays in the linear span of the initial members."""
    g = torch.Generator().manual_seed(1)
    J, P, B, C = 12, 40, 4, 5
    A = torch.randn(B * C, P, generator=g) / P ** 0.5
    U0 = torch.randn(J, P, generator=g)
    c = torch.randn(J, generator=g)
    u_star = (c - c.mean() + 1.0 / J) @ U0          # coefficients sum to 1
    Y = (A @ u_star).reshape(B, C)
    U = U0.clone()

    def misfit(U):
        return torch.linalg.norm(A @ U.mean(0) - Y.reshape(-1))

    start = misfit(U)
    for _ in range(100):
        U = enkf_update(U, (U @ A.T).reshape(J, B, C), Y, 1e-3, mode=mode)
    assert misfit(U) < 1e-3 * start
    Q, _ = torch.linalg.qr(U0.T)                 # orthonormal basis of the initial span
    residual = U.T - Q @ (Q.T @ U.T)
    assert residual.abs().max() < 1e-9 * U.abs().max()


def test_linear_problem_reaches_least_squares_solution():
    """With J > P the span is everything: the mean converges to the least-squares solution of
    inconsistent data (Gamma = gamma I weights every residual alike)."""
    g = torch.Generator().manual_seed(2)
    J, P, d = 30, 6, 20
    A = torch.randn(d, P, generator=g)
    y = torch.randn(d, generator=g)          # inconsistent data: no exact solution
    u_ls = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)
    U = torch.randn(J, P, generator=g)
    for _ in range(20):
        U = enkf_update(U, (U @ A.T).reshape(J, d, 1), y.reshape(d, 1), 1e-3, mode="batch")
    assert torch.linalg.norm(U.mean(0) - u_ls) < 1e-3 * torch.linalg.norm(u_ls)


def test_mean_update_is_in_span_of_centred_ensemble():
    U, G, Y = random_problem(9, 30, 3, 4, seed=4)
    new = enkf_update(U, G, Y, 0.1)
    delta = (new - U).T                      # every column: a combination of centred members
    Uc = (U - U.mean(0)).T
    Q, _ = torch.linalg.qr(Uc)
    assert (delta - Q @ (Q.T @ delta)).abs().max() < 1e-10


def test_jittered_cholesky_warns_and_recovers():
    K = torch.ones(4, 4)                     # rank 1: plain Cholesky fails
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        L = cholesky_jittered(K)
    assert any("jitter" in str(x.message) for x in w)
    assert torch.isfinite(L).all() and (L @ L.T - K).abs().max() < 1e-6


def test_nonfinite_covariance_raises_divergence():
    U, G, Y = random_problem(5, 4, 2, 3)
    G[0, 0, 0] = float("nan")
    with pytest.raises(DivergenceError):
        kalman_factors(G, Y, 0.1)


def test_redraw_members_matches_good_members_statistics():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 0.0])
    bad = torch.zeros(4000, dtype=torch.bool)
    bad[:2000] = True
    good_mean, good_std = U[~bad].mean(0), U[~bad].std(0)
    U[bad] = float("nan")
    redraw_members(U, bad, g)
    assert torch.isfinite(U).all()
    assert (U[bad].mean(0) - good_mean).abs().max() < 0.1
    assert ((U[bad].std(0) / good_std) - 1).abs().max() < 0.1

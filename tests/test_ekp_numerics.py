"""Known-solution tests of the ensemble-Kalman numerics in enkf_repro.optim: step-size
schedulers, ensemble transform Kalman inversion (ETKI) and inflation.

Linear problems G(u) = A u with a full-rank A (d = 20 > P = 6) have closed-form answers:

- The Kovachki-Stuart EKI step u <- u - h D u with a fixed h is the explicit Euler scheme of the
  EKI flow. With Gamma = I and H = A^T A, the deviations evolve as (I - h C_n H), so the ensemble
  covariance decays like C_n ~ (2 h n H)^{-1} and the mean error like e_{n+1} ~ (1 - 1/(2n)) e_n,
  i.e. O(n^{-1/2}): quadrupling n halves the error.
- An ETKI step with Gamma / dt is an exact Kalman update of the ensemble's own mean and
  covariance, and such updates compose: after n fixed steps the mean is the posterior mean of
  the initial ensemble's Gaussian with noise Gamma / (n dt), whose error to the least-squares
  solution is O(1/n): quadrupling n quarters the error.
- Both keep every member in the initial affine span; with J - 1 < P the limit is the
  least-squares solution over that span.
- ETKI driven by the data-misfit controller to T = 1 gives the Bayesian posterior of the initial
  ensemble's Gaussian (the Tikhonov-regularised solution), whatever the steps were.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from enkf_repro.optim.eki import eki_frobenius, eki_loss_grad, eki_step_
from enkf_repro.optim.enkf import enkf_update
from enkf_repro.optim.etki import etki_correction, etki_update, etki_update_
from enkf_repro.optim.inflation import (
    additive_inflation_,
    inflation_variance_factor,
    multiplicative_factor,
    multiplicative_inflation_,
)
from enkf_repro.optim.linalg import apply_low_rank_
from enkf_repro.optim.schedulers import (
    DataMisfitController,
    FixedStep,
    KovachkiStuartStep,
    data_misfits,
    make_scheduler,
)

P, D = 6, 20


pytestmark = pytest.mark.usefixtures("float64_default")   # references in float64 (conftest)


def linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, P, generator=g) / math.sqrt(D)     # full rank, A^T A eigenvalues ~ 0.5 .. 1.8
    u_star = torch.randn(P, generator=g)
    return A, u_star, A @ u_star, g


def span_residual(V, U0):
    """Largest distance of a row of V from the affine span of the rows of U0, relative."""
    m0 = U0.mean(0)
    _, s, Vh = torch.linalg.svd(U0 - m0, full_matrices=False)
    basis = Vh[s > 1e-10 * s[0]]                        # orthonormal rows spanning the deviations
    R = V - m0
    return float((R - (R @ basis.T) @ basis).norm(dim=1).max() / R.norm(dim=1).max())


def span_least_squares(A, y, U0):
    """argmin |A u - y| over u in the affine span of the rows of U0."""
    m0 = U0.mean(0)
    B = (U0 - m0).T                                     # (P, J), rank J - 1
    c = torch.linalg.lstsq(A @ B, (y - A @ m0).unsqueeze(1), driver="gelsd").solution.squeeze(1)
    return m0 + B @ c


def ks_step_(U, A, y, scheduler):
    """One Kovachki-Stuart EKI step (Gamma = I, mse loss) with the step from ``scheduler``, built
    from eki.py's pieces exactly as eki_step_ does, so any scheduler can drive it."""
    J = U.shape[0]
    G = U @ A.T
    psi, grad = eki_loss_grad(G.unsqueeze(-1), y.unsqueeze(-1), "mse")
    Ag, Z = grad.reshape(J, -1), (G - G.mean(0)).reshape(J, -1)
    h = scheduler.step(misfits=psi, output_dim=G.shape[1], d_norm=eki_frobenius(Ag, Z))
    apply_low_rank_(U, Ag * (-h / J), Z)
    return h


def kalman(m, C, A, y, gamma_diag):
    """Posterior mean and covariance for prior N(m, C), y = A u + N(0, diag(gamma)): Kalman form."""
    S = A @ C @ A.T + torch.diag(gamma_diag)
    K = C @ A.T @ torch.linalg.inv(S)
    return m + K @ (y - A @ m), C - K @ A @ C


def ens_cov(U, ddof=0):
    Uc = U - U.mean(0)
    return Uc.T @ Uc / (U.shape[0] - ddof)


# -- EKI (Kovachki-Stuart) with a fixed step -------------------------------------------------------
@pytest.mark.parametrize("J", [30, 4])
def test_eki_fixed_step_converges_to_least_squares_like_inverse_sqrt_n(J):
    A, u_star, y, g = linear_problem()
    U0 = torch.randn(J, P, generator=g)
    target = u_star if J > P else span_least_squares(A, y, U0)
    U, sched = U0.clone(), FixedStep(0.5)
    errs = {}
    for n in range(1, 4001):
        ks_step_(U, A, y, sched)
        if n in (250, 1000, 4000):
            errs[n] = float((U.mean(0) - target).norm())
    e0 = float((U0.mean(0) - target).norm())
    assert errs[4000] < 0.1 * e0
    for a, b in ((250, 1000), (1000, 4000)):
        assert 0.4 < errs[b] / errs[a] < 0.6, errs                   # O(n^-1/2)
    assert span_residual(U, U0) < 1e-10
    assert sched.iteration == 4000 and sched.time == pytest.approx(2000.0)
    if J <= P:   # the span-restricted solution is not the truth: EKI cannot leave the span
        assert float((U.mean(0) - u_star).norm()) > 0.5


def test_kovachki_stuart_step_is_eki_py_formula():
    assert KovachkiStuartStep(2.0, 0.5).step(d_norm=1.5) == 1.0
    g = torch.Generator().manual_seed(3)
    U = torch.randn(8, 5, generator=g)
    G, Y = torch.randn(8, 4, 3, generator=g), torch.eye(3)[torch.tensor([0, 2, 1, 1])]
    _, info = eki_step_(U, G, Y, h0=1.7, eps=0.3)
    assert KovachkiStuartStep(1.7, 0.3).step(d_norm=info["d_norm"]) == info["h"]
    with pytest.raises(ValueError, match="d_norm"):
        KovachkiStuartStep().step()


# -- ETKI --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("J", [30, 4])
def test_etki_fixed_dt_is_tempered_posterior_and_converges_like_1_over_n(J):
    A, u_star, y, g = linear_problem(1)
    U0 = torch.randn(J, P, generator=g) + 0.5
    target = u_star if J > P else span_least_squares(A, y, U0)
    m0, C0 = U0.mean(0), ens_cov(U0)
    U, dt, errs = U0.clone(), 0.7, {}
    for n in range(1, 801):
        etki_update_(U, U @ A.T, y, 1.0, dt)
        if n in (50, 200, 800):
            errs[n] = float((U.mean(0) - target).norm())
            m_n, C_n = kalman(m0, C0, A, y, torch.full((D,), 1.0 / (n * dt)))
            assert torch.allclose(U.mean(0), m_n, rtol=0, atol=1e-10)
            assert torch.allclose(ens_cov(U), C_n, rtol=0, atol=1e-10)
    for a, b in ((50, 200), (200, 800)):
        assert 0.2 < errs[b] / errs[a] < 0.3, errs                     # O(1/n)
    assert errs[800] < 0.01 * float((m0 - target).norm())
    assert span_residual(U, U0) < 1e-10


def test_etki_with_data_misfit_controller_reaches_the_posterior_at_time_one():
    A, u_star, _, g = linear_problem(2)
    J = 40
    gamma = 0.02 + 0.08 * torch.rand(D, generator=g)                   # diagonal Gamma
    y = A @ u_star + gamma.sqrt() * torch.randn(D, generator=g)
    U0 = 0.3 + torch.randn(J, P, generator=g)                          # prior sample, J > P
    m0, C0 = U0.mean(0), ens_cov(U0)
    U, sched, steps = U0.clone(), make_scheduler("data_misfit"), []
    while not sched.finished:
        G = U @ A.T
        steps.append(sched.step(misfits=data_misfits(G, y, gamma), output_dim=D))
        etki_update_(U, G, y, gamma, steps[-1])
    assert len(steps) >= 3 and steps[0] < 0.5                           # adaptive: several steps
    assert sched.time == 1.0 and sum(steps) == pytest.approx(1.0, abs=1e-14)
    with pytest.raises(RuntimeError, match="finished"):
        sched.step(misfits=data_misfits(U @ A.T, y, gamma), output_dim=D)
    # Tikhonov-regularised solution / posterior of N(m0, C0) in precision form
    Gi = torch.diag(1.0 / gamma)
    prec = torch.linalg.inv(C0) + A.T @ Gi @ A
    C_post = torch.linalg.inv(prec)
    m_post = C_post @ (torch.linalg.solve(C0, m0) + A.T @ Gi @ y)
    assert torch.allclose(U.mean(0), m_post, rtol=0, atol=1e-10)
    assert torch.allclose(ens_cov(U), C_post, rtol=0, atol=1e-10)
    assert float((m_post - u_star).norm()) > 1e-3                       # regularised, not the LS solution


def naive_etki(U, G, y, gamma_diag, dt, ddof):
    """EnsembleKalmanProcesses' etki_update written literally in its column convention."""
    J = U.shape[0]
    u, g = U.T, G.reshape(J, -1).T                                      # (P, J), (d, J)
    X = (u - u.mean(1, keepdim=True)) / math.sqrt(J - ddof)
    Y = (g - g.mean(1, keepdim=True)) / math.sqrt(J - ddof)
    Gi = torch.diag(1.0 / gamma_diag.reshape(-1)) * dt
    Omega = torch.linalg.inv(torch.eye(J) + Y.T @ Gi @ Y)
    w = Omega @ Y.T @ Gi @ (y.reshape(-1) - g.mean(1))
    lam, V = torch.linalg.eigh(Omega)
    sqrt_omega = V @ torch.diag(lam.sqrt()) @ V.T
    u_new = u.mean(1, keepdim=True) + X @ (w.unsqueeze(1) + math.sqrt(J - ddof) * sqrt_omega)
    return u_new.T


@pytest.mark.parametrize("J,shape,P_,diag,dt,ddof", [
    (7, (5,), 9, False, 0.7, 1),        # d < J branch, EKP's 1/(J-1)
    (5, (12,), 3, True, 2.5, 0),        # d >= J branch, diagonal Gamma
    (6, (4, 3), 8, True, 1.0, 0),       # (J, B, C) outputs with a (B, C) Gamma, d > J
    (16, (3, 2), 4, True, 0.05, 1),     # (J, B, C), d < J
])
def test_etki_matches_naive_reference_and_covariance_formulas(J, shape, P_, diag, dt, ddof):
    g = torch.Generator().manual_seed(J)
    U = torch.randn(J, P_, generator=g) * 2 + 1
    G = torch.randn(J, *shape, generator=g) + torch.tanh(U[:, :1]).reshape(J, *[1] * len(shape))   # not linear
    y = torch.randn(*shape, generator=g)
    gamma = 0.1 + torch.rand(*shape, generator=g) if diag else 0.3
    gdiag = gamma if diag else torch.full(shape, gamma)
    new = etki_update(U, G, y, gamma, dt, ddof=ddof)
    assert torch.allclose(new, naive_etki(U, G, y, gdiag, dt, ddof), rtol=0, atol=1e-10)
    # explicit ensemble covariances: Kalman mean and covariance with Gamma / dt
    n = J - ddof
    Gf = G.reshape(J, -1)
    Uc, Gc = U - U.mean(0), Gf - Gf.mean(0)
    Cug, Cgg = Uc.T @ Gc / n, Gc.T @ Gc / n
    Sinv = torch.linalg.inv(Cgg + torch.diag(gdiag.reshape(-1) / dt))
    assert torch.allclose(new.mean(0), U.mean(0) + Cug @ Sinv @ (y.reshape(-1) - Gf.mean(0)), rtol=0, atol=1e-10)
    assert torch.allclose(ens_cov(new, ddof), Uc.T @ Uc / n - Cug @ Sinv @ Cug.T, rtol=0, atol=1e-10)
    assert span_residual(new, U) < 1e-10


def test_etki_mean_is_batch_enkf_mean_and_blocks_dtypes_agree():
    g = torch.Generator().manual_seed(11)
    J, B, C, P_ = 9, 4, 3, 50
    U = torch.randn(J, P_, generator=g)
    G = torch.randn(J, B, C, generator=g)
    Y = torch.eye(C)[torch.randint(0, C, (B,), generator=g)]
    new = etki_update(U, G, Y, 0.5)
    assert torch.allclose(new.mean(0), enkf_update(U, G, Y, 0.5, mode="batch").mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(etki_update_(U.clone(), G, Y, 0.5, block=7), new, rtol=0, atol=1e-13)
    new32 = etki_update(U.float(), G.float(), Y.float(), 0.5)
    assert new32.dtype == torch.float32 and torch.allclose(new32.double(), new, rtol=0, atol=1e-5)
    assert torch.equal(etki_update(U, G, Y, 0.5, dt=0.0), U)
    assert torch.allclose(etki_correction(G, Y, 0.5, dt=1e-12), torch.zeros(J, J), atol=1e-11)
    with pytest.raises(ValueError, match="gamma"):
        etki_update(U, G, Y, torch.ones(5))
    with pytest.raises(ValueError, match="dt"):
        etki_update(U, G, Y, 0.5, dt=-1.0)


# -- schedulers ------------------------------------------------------------------------------------
def dmc_example(scale):
    """Outputs whose misfits with y and Gamma = diag(0.5, 2) are scale * (2, 4, 6)."""
    y = torch.tensor([1.0, -1.0])
    R = torch.tensor([[1.0, 2.0], [2.0, 0.0], [2.0, 2.0 * math.sqrt(2.0)]]) * math.sqrt(scale)
    return y + R, y, torch.tensor([0.5, 2.0])


def test_data_misfit_controller_steps_by_hand():
    G, y, gamma = dmc_example(1.0)
    phi = data_misfits(G, y, gamma)
    assert torch.allclose(phi, torch.tensor([2.0, 4.0, 6.0]), rtol=0, atol=1e-14)
    # M = 2, mean 4, unbiased var 4: max(2 / 8, sqrt(2 / 8)) = 0.5 (a biased var would give 0.61)
    s = DataMisfitController()
    assert s.step(misfits=phi, output_dim=2) == pytest.approx(0.5, abs=1e-15)
    assert not s.finished and s.time == pytest.approx(0.5)
    # misfits (1, 2, 3): max(2 / 4, sqrt(2 / 2)) = 1, capped to T - t = 0.5
    phi2 = data_misfits(*dmc_example(0.5))
    assert s.raw_step(phi2, 2) == pytest.approx(1.0, abs=1e-15)
    assert s.step(misfits=phi2, output_dim=2) == pytest.approx(0.5, abs=1e-15)
    assert s.finished and s.time == 1.0 and s.iteration == 2
    with pytest.raises(RuntimeError):
        s.step(misfits=phi2, output_dim=2)
    # non-finite misfits (failed members) are left out
    t = DataMisfitController()
    with_failures = torch.tensor([2.0, float("nan"), 4.0, 6.0, float("inf")])
    assert t.step(misfits=with_failures, output_dim=2) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("mode,expected", [("continue_fixed", [0.5, 0.5, 0.5, 0.5]),
                                           ("continue", [0.5, 0.5, 1.0, 1.0])])
def test_data_misfit_controller_after_terminal_time(mode, expected):
    phi1, phi2 = data_misfits(*dmc_example(1.0)), data_misfits(*dmc_example(0.5))
    s = DataMisfitController(terminate_at=1.0, on_terminate=mode)
    got = [s.step(misfits=phi1, output_dim=2), s.step(misfits=phi2, output_dim=2),
           s.step(misfits=phi2, output_dim=2), s.step(misfits=phi2, output_dim=2)]
    assert got == pytest.approx(expected, abs=1e-15)
    assert not s.finished and s.time == pytest.approx(sum(expected))
    with pytest.raises(ValueError, match="on_terminate"):
        DataMisfitController(on_terminate="halt")


@pytest.mark.parametrize("name,kwargs", [("fixed", {"h": 0.3}), ("kovachki_stuart", {"h0": 1.5, "eps": 0.2}),
                                         ("data_misfit", {"terminate_at": 2.0, "on_terminate": "continue_fixed"})])
def test_scheduler_state_dict_round_trip(name, kwargs):
    g = torch.Generator().manual_seed(5)
    feeds = [{"misfits": torch.rand(6, generator=g) * 50, "output_dim": 4,
              "d_norm": float(torch.rand(1, generator=g))} for _ in range(8)]
    a = make_scheduler(name, **kwargs)
    for f in feeds[:3]:
        a.step(**f)
    state = json.loads(json.dumps(a.state_dict()))                     # plain, serialisable values
    b = make_scheduler(name, **kwargs)
    b.load_state_dict(state)
    assert b.state_dict() == a.state_dict()
    assert [a.step(**f) for f in feeds[3:]] == [b.step(**f) for f in feeds[3:]]
    assert (a.iteration, a.time, a.finished) == (b.iteration, b.time, b.finished) and a.iteration == 8
    other = "fixed" if name != "fixed" else "data_misfit"
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_scheduler(other).load_state_dict(state)


def test_make_scheduler_bad_name():
    with pytest.raises(ValueError) as err:
        make_scheduler("adam", h=1.0)
    msg = str(err.value)
    assert "\n" not in msg and "'adam'" in msg
    assert "'fixed', 'kovachki_stuart', 'data_misfit'" in msg
    assert isinstance(make_scheduler("fixed", h=0.1), FixedStep)


# -- inflation -------------------------------------------------------------------------------------
def test_multiplicative_inflation_keeps_mean_and_scales_spread():
    g = torch.Generator().manual_seed(7)
    U = 100.0 + torch.randn(10, 7, generator=g)
    m, dev = U.mean(0), U - U.mean(0)
    f = multiplicative_factor(0.5, 1.0)
    assert f == pytest.approx(math.sqrt(2.0))
    multiplicative_inflation_(U, f, block=3)
    assert torch.allclose(U.mean(0), m, rtol=0, atol=1e-12)
    assert torch.allclose(U - m, f * dev, rtol=0, atol=1e-12)
    assert torch.allclose(ens_cov(U), 2.0 * ens_cov(m + dev), rtol=1e-12, atol=0)   # C / (1 - s dt)
    with pytest.raises(ValueError, match="s \\* dt < 1"):
        multiplicative_factor(0.5, 2.0)


def test_additive_inflation_diagonal_variance_has_documented_covariance():
    g = torch.Generator().manual_seed(8)
    J, var = 20000, torch.tensor([0.5, 1.0, 2.0])
    U = torch.zeros(J, 3) + torch.tensor([1.0, -2.0, 3.0])
    assert inflation_variance_factor(0.25, 2.0) == pytest.approx(1.0)
    additive_inflation_(U, g, 0.25, 2.0, variance=var, block=2)        # a = 0.5 / 0.5 = 1
    noise = U - torch.tensor([1.0, -2.0, 3.0])
    cov = noise.T @ noise / J
    assert torch.allclose(cov.diagonal(), var, rtol=0.05, atol=0)
    corr = cov / torch.outer(var.sqrt(), var.sqrt())
    assert float((corr - torch.eye(3)).abs().max()) < 0.04
    assert float((noise.mean(0) / var.sqrt()).abs().max()) < 4 / math.sqrt(J)
    # keep_mean: the ensemble mean does not move
    V = torch.randn(50, 4, generator=g) + 10.0
    m = V.mean(0)
    additive_inflation_(V, g, 0.5, 1.0, variance=0.3, keep_mean=True)
    assert torch.allclose(V.mean(0), m, rtol=0, atol=1e-12) and not torch.allclose(V, V.mean(0))


def test_additive_inflation_with_the_ensembles_own_covariance():
    g = torch.Generator().manual_seed(9)
    J, reps = 10, 4000
    U = torch.randn(J, 3, generator=g) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]])
    C = ens_cov(U)                                                        # 1/J normalisation
    a = inflation_variance_factor(0.4, 1.0)
    acc = torch.zeros(3, 3)
    for _ in range(reps):
        noise = additive_inflation_(U.clone(), g, 0.4, 1.0) - U
        acc += noise.T @ noise
    emp = acc / (J * reps)
    # 1/(J-1) would be 11 % larger than the documented 1/J covariance
    assert torch.allclose(emp, a * C, rtol=0, atol=0.04 * float(a * C.diagonal().max()))
    assert torch.allclose(emp.diagonal(), a * C.diagonal(), rtol=0.04, atol=0)
    # stays in the affine span when J - 1 < P
    W = torch.randn(4, 10, generator=g)
    W0 = W.clone()
    additive_inflation_(W, g, 0.5, 1.0)
    assert span_residual(W, W0) < 1e-12 and not torch.allclose(W, W0)


def test_an_ensemble_space_transform_is_applied_without_forming_w_times_identity():
    """apply_low_rank_(U, T, None) applies the J x J matrix T itself: U + T (U - mean U), the same
    as passing the identity as Z, in every column block."""
    g = torch.Generator().manual_seed(5)
    U = torch.randn(9, 700, generator=g, dtype=torch.float64)
    T = torch.randn(9, 9, generator=g, dtype=torch.float64)
    want = U + T @ (U - U.mean(0))
    assert torch.allclose(apply_low_rank_(U.clone(), T, None, block=256), want, atol=1e-12)
    assert torch.allclose(apply_low_rank_(U.clone(), T, torch.eye(9, dtype=torch.float64), block=256), want,
                          atol=1e-12)

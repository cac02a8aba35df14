"""The step object ``EnsembleKalmanProcess`` (optim/process.py) and the observation noise
(optim/observation.py), against known solutions in float64.

Linear-Gaussian inverse problem: G(u) = A u (d = 12 > P = 4), data y = A u* + noise with a full,
correlated covariance Gamma. With Gamma = L L^T the methods see the whitened L^-1 A u and L^-1 y,
so

- one ETKI or EKI (Kalman form) step with Gamma / dt is the Kalman update of the ensemble's own
  mean m0 and covariance C0 (1/J): m = m0 + C0 A^T (A C0 A^T + Gamma / dt)^-1 (y - A m0); as
  dt -> oo that is the Gamma-weighted least-squares solution (A^T Gamma^-1 A)^-1 A^T Gamma^-1 y;
- ETKI driven by the data-misfit controller to T = 1 ends at the Gaussian posterior of (m0, C0):
  the mean above with dt = 1 and the covariance C0 - C0 A^T (A C0 A^T + Gamma)^-1 A C0;
- the EnKF's joint (``batch``) update moves the mean by the Kalman gain with Gamma;
- Kovachki & Stuart's D_jk = (1/J) <G_k - mean G, Gamma^-1 (G_j - y)> in the Euler form;
- haber's Gauss-Newton step weights the misfit by Gamma^-1.
The weighted solution is far from the unweighted one for this Gamma, so a method that ignored
Gamma would fail these checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from custom_nets import TwoLayer
from enkf_repro import DataMisfitController, EnsembleKalmanProcess, train
from enkf_repro.errors import ConfigError
from enkf_repro.optim.etki import etki_update
from enkf_repro.optim.observation import Noise

P, D = 4, 12


def linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, P, generator=g, dtype=torch.float64)
    M = torch.randn(D, D, generator=g, dtype=torch.float64)
    Gamma = M @ M.T / D + 0.05 * torch.eye(D, dtype=torch.float64)      # full, strongly correlated
    u_star = torch.randn(P, generator=g, dtype=torch.float64)
    y = A @ u_star + torch.linalg.cholesky(Gamma) @ torch.randn(D, generator=g, dtype=torch.float64)
    return A, Gamma, y


def weighted_ls(A, Gamma, y):
    Gi = torch.linalg.inv(Gamma)
    return torch.linalg.solve(A.T @ Gi @ A, A.T @ Gi @ y)


def kalman(m0, C0, A, Gamma, y):
    K = C0 @ A.T @ torch.linalg.inv(A @ C0 @ A.T + Gamma)
    return m0 + K @ (y - A @ m0), C0 - K @ A @ C0


def moments(U):
    m = U.mean(0)
    return m, (U - m).T @ (U - m) / U.shape[0]


def prior_process(method, J=30, **kw):
    return EnsembleKalmanProcess(prior=(torch.zeros(P, dtype=torch.float64), 1.0), method=method,
                                 ensemble_size=J, **kw)


def test_the_weighted_solution_differs_from_the_plain_one():
    A, Gamma, y = linear_problem()
    plain = torch.linalg.lstsq(A, y.unsqueeze(1)).solution[:, 0]
    assert (weighted_ls(A, Gamma, y) - plain).abs().max() > 0.1


@pytest.mark.parametrize("method,options", [
    ("etki", {"scheduler": "fixed", "dt": 1e6}),
    ("eki", {"scheduler": "fixed", "dt": 1e6}),                      # the Kalman form (update_form=auto)
])
def test_one_long_step_reaches_the_gamma_weighted_least_squares_solution(method, options):
    A, Gamma, y = linear_problem()
    proc = prior_process(method, noise=Gamma, **options)
    assert proc.method.config.gamma == 1.0                          # noise= replaces gamma * I
    U = proc.ask()
    proc.tell((U @ A.T).numpy(), y.numpy())                          # outputs (J, d), data (d,)
    assert torch.allclose(proc.mean, weighted_ls(A, Gamma, y), atol=1e-6)


def test_etki_with_the_data_misfit_controller_ends_at_the_posterior_of_its_gaussian():
    A, Gamma, y = linear_problem(1)
    proc = prior_process("etki", J=40, noise=Gamma, scheduler=DataMisfitController(terminate_at=1.0))
    m0, C0 = moments(proc.ensemble.clone())
    steps = 0
    while not proc.finished:
        proc.tell(proc.ask() @ A.T, y)
        steps += 1
    assert steps >= 2 and proc.scheduler.time == 1.0
    m, C = moments(proc.ensemble)
    m_post, C_post = kalman(m0, C0, A, Gamma, y)
    assert torch.allclose(m, m_post, atol=1e-9) and torch.allclose(C, C_post, atol=1e-9)


def test_enkf_batch_mean_moves_by_the_kalman_gain_with_gamma():
    A, Gamma, y = linear_problem(2)
    proc = prior_process("enkf", J=25, noise=Gamma, update_mode="batch", repetitions=1)
    m0, C0 = moments(proc.ensemble.clone())
    proc.tell(proc.ask() @ A.T, y)
    assert torch.allclose(proc.mean, kalman(m0, C0, A, Gamma, y)[0], atol=1e-10)


def test_eki_euler_step_uses_gamma_inverse_in_d():
    A, Gamma, y = linear_problem(3)
    h = 1e-3
    proc = prior_process("eki", J=10, noise=Gamma, scheduler="fixed", dt=h, update_form="euler")
    U0 = proc.ensemble.clone()
    G = U0 @ A.T
    Dm = (G - y) @ torch.linalg.inv(Gamma) @ (G - G.mean(0)).T / 10     # D_jk = (1/J) <G_k - mean, Gamma^-1 (G_j - y)>
    proc.tell(proc.ask() @ A.T, y)
    assert torch.allclose(proc.ensemble, U0 - h * Dm @ U0, atol=1e-12)


def test_haber_gauss_newton_step_weights_the_misfit_by_gamma():
    A, Gamma, y = linear_problem(4)
    proc = prior_process("haber", J=6, noise=Gamma, alpha=1.0, gamma=1e-3)   # gamma: haber's damping
    theta = proc.mean.clone()
    members = proc.ask()
    omega = members[1:] - theta
    proc.tell(members @ A.T, y)
    Gi = torch.linalg.inv(Gamma)
    Q = (A @ omega.T)                                                   # (d, K)
    step = omega.T @ torch.linalg.solve(Q.T @ Gi @ Q + 1e-3 * torch.eye(6, dtype=torch.float64),
                                        Q.T @ Gi @ (A @ theta - y))
    assert torch.allclose(proc.mean, theta - step, atol=1e-10)


def test_per_output_variances_whiten_as_etkis_own_diagonal_gamma():
    g = torch.Generator().manual_seed(5)
    U = torch.randn(8, 5, generator=g, dtype=torch.float64)
    G = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 4, generator=g, dtype=torch.float64)
    var = torch.tensor([0.1, 0.5, 2.0, 4.0], dtype=torch.float64)
    noise = Noise(var)
    got = etki_update(U, noise.whiten(G), noise.whiten(y), 1.0)
    want = etki_update(U, G, y, var.repeat(3))                          # diag(gamma) of the flattened outputs
    assert torch.allclose(got, want, atol=1e-12)
    full = Noise(torch.diag(var))
    assert torch.allclose(full.whiten(G), noise.whiten(G), atol=1e-14)


def test_noise_checks():
    with pytest.raises(ValueError, match="not positive definite"):
        Noise([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="not symmetric"):
        Noise([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="> 0"):
        Noise([1.0, -1.0])
    with pytest.raises(ValueError, match="3 outputs; the forward map gives 2"):
        Noise([1.0, 1.0, 1.0], dim=2)


# -- the step object --------------------------------------------------------------------------------
def batches(n=4, B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n * B, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n * B,), generator=g)
    return x, y


def test_train_steps_through_the_same_object_as_a_users_loop():
    """train() (runs/loop.py) and a hand-written loop over EnsembleKalmanProcess.step end with the
    same ensemble, bit for bit: one implementation."""
    x, y = batches()
    r = train(TwoLayer(4), (x, y), method="eki", ensemble_size=8, batch_size=16, max_batches=4, eval_every=100,
              seed=3, momentum="nesterov", progress=False, device="cpu", best_of=0)
    proc = EnsembleKalmanProcess(TwoLayer(4), "eki", ensemble_size=8, seed=3, momentum="nesterov", best_of=0)
    for k in range(4):
        proc.step(x[16 * k: 16 * (k + 1)], y[16 * k: 16 * (k + 1)])     # labels: one-hot inside
    assert torch.equal(r.ensemble, proc.ensemble)
    assert torch.equal(r.networks[""], proc.mean)


@pytest.mark.parametrize("method,options", [("eki", {"momentum": "nesterov"}), ("haber", {}), ("enkf", {}),
                                            ("etki", {"outputs": "softmax"}), ("ienk_simple", {"mode": "batch"})])
def test_ask_tell_is_step(method, options):
    x, y = batches(2, 8)
    a = EnsembleKalmanProcess(TwoLayer(3), method, ensemble_size=5, seed=1, **options)
    b = EnsembleKalmanProcess(TwoLayer(3), method, ensemble_size=5, seed=1, **options)
    for k in range(2):
        xb, yb = x[8 * k: 8 * (k + 1)], y[8 * k: 8 * (k + 1)]
        a.step(xb, yb)
        U = b.ask()
        assert b.ask() is U                                               # asking again: the same rows
        b.tell(b.network_forward(U, xb), torch.nn.functional.one_hot(yb, 10))
    assert torch.equal(a.ensemble, b.ensemble) and a.steps == b.steps == 2


def test_state_dict_round_trip_continues_identically():
    x, y = batches(5, 8)
    a = EnsembleKalmanProcess(TwoLayer(3), "eki", ensemble_size=6, seed=2, randomize=True, momentum="nesterov")
    for k in range(3):
        a.step(x[8 * k: 8 * (k + 1)], y[8 * k: 8 * (k + 1)])
    state = a.state_dict()
    b = EnsembleKalmanProcess(TwoLayer(3), "eki", ensemble_size=6, seed=99, randomize=True, momentum="nesterov")
    b.load_state_dict(state)
    for k in range(3, 5):
        a.step(x[8 * k: 8 * (k + 1)], y[8 * k: 8 * (k + 1)])
        b.step(x[8 * k: 8 * (k + 1)], y[8 * k: 8 * (k + 1)])
    assert torch.equal(a.ensemble, b.ensemble) and b.steps == 5


def test_a_numpy_forward_map_with_ask_and_tell():
    t = np.linspace(0, 1, 20)

    def simulate(u):
        return u[0] * np.exp(-u[1] * t)

    y = simulate([2.0, 3.0])
    proc = EnsembleKalmanProcess(prior=(np.array([1.0, 1.0]), 1.0), method="eki", ensemble_size=40,
                                 noise=1e-4 * np.eye(20), scheduler="data_misfit")
    assert proc.task == "regression" and proc.ensemble.dtype == torch.float64
    while not proc.finished:
        U = proc.ask().numpy()
        proc.tell(np.stack([simulate(u) for u in U]), y)
    assert np.allclose(proc.mean.numpy(), [2.0, 3.0], atol=0.05)
    with pytest.raises(ConfigError, match="needs a forward map"):
        proc.step(np.zeros((1, 1)), y)


def test_scheduler_objects_ensembles_and_errors():
    s = DataMisfitController(terminate_at=0.5)
    proc = prior_process("etki", J=5, scheduler=s)
    assert proc.scheduler is s and proc.method.config.scheduler.value == "data_misfit"
    U = torch.randn(7, P, dtype=torch.float64)
    proc.ensemble = U
    assert torch.equal(proc.ensemble, U) and proc.ask().shape == (7, P)
    with pytest.raises(ConfigError, match=r"outputs=.*\(7, d\)"):
        proc.tell(torch.zeros(6, D), torch.zeros(D))
    with pytest.raises(ConfigError, match="tell\\(\\) before ask\\(\\)"):
        prior_process("etki", J=5).tell(torch.zeros(5, D), torch.zeros(D))
    with pytest.raises(ConfigError, match="a model .* or a prior"):
        EnsembleKalmanProcess(method="eki")
    with pytest.raises(ConfigError, match="ask\\(\\) / tell\\(\\).*backpropagation"):
        EnsembleKalmanProcess(TwoLayer(3), "sgd").ask()
    with pytest.raises(ConfigError, match="optimizer.gamma=0.5 is not allowed: 1 with a noise covariance"):
        prior_process("etki", noise=torch.eye(3), gamma=0.5)
    with pytest.raises(ConfigError, match="optimizer.loss='cross_entropy' is not allowed: mse with task=regression"):
        prior_process("eki", loss="cross_entropy")
    with pytest.raises(ConfigError, match="optimizer.outputs='softmax' is not allowed: logits with a noise covariance"):
        EnsembleKalmanProcess(TwoLayer(3), "etki", outputs="softmax", noise=torch.ones(10))
    with pytest.raises(ConfigError, match="h0=1 is not allowed: not an option of EnsembleKalmanProcess.*"
                                          "it is an option of method='eki', 'etki'"):
        prior_process("enkf", h0=1)
    assert "EnsembleKalmanProcess(etki, ensemble 7x4" in repr(proc)


def test_predictions_of_the_whole_ensemble():
    x, y = batches(1, 20)
    proc = EnsembleKalmanProcess(TwoLayer(3), "etki", ensemble_size=6, seed=0)
    p = proc.predict(x, y)
    logits = torch.stack([proc.network_forward(proc.ensemble[j: j + 1], x)[0] for j in range(6)]).double()
    probs = torch.softmax(logits, -1)
    assert torch.allclose(p.mean, probs.mean(0)) and torch.allclose(p.std, probs.std(0))
    assert torch.allclose(p.member_error, 100.0 * (logits.argmax(-1) != y).double().mean(1))
    assert p.nll == pytest.approx(float(-torch.log(probs.mean(0)[torch.arange(20), y]).mean()))
    assert 0.0 <= p.ece <= 100.0 and p.error == pytest.approx(100.0 * float((probs.mean(0).argmax(1) != y)
                                                                              .double().mean()))


def test_calibration_error_by_hand():
    from enkf_repro.optim.predictive import calibration_error

    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # bins of 0.1: 0.9 -> (0.8, 0.9] right, 0.8 -> (0.7, 0.8] wrong, 0.7 -> right, 0.6 -> right
    want = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4 * 100
    assert calibration_error(probs, labels, bins=10) == pytest.approx(want)
    assert math.isclose(calibration_error(torch.eye(3, dtype=torch.float64), torch.arange(3)), 0.0)

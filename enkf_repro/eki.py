"""Ensemble Kalman Inversion for training (``optimizer=eki``): Kovachki & Stuart (2019),
"Ensemble Kalman inversion: a derivative-free technique for machine learning tasks".

Notation (related-methods.md): ensemble U (J x P), outputs G (J x B x C) of the members on a
mini-batch, targets Y (B x C) one-hot, d = B * C, and the loss Psi(z, y) of a member is the SUM
over the batch of the per-sample loss (our reading: then ||D|| is O(1) or larger for B = 64 and
the adaptive step is really normalised, h_n ||D||_F = h0 ||D|| / (||D|| + eps) < h0; with a
batch MEAN, ||D|| << eps = 0.5 and h_n would be the constant h0 / eps). The discrete scheme
(K&S, the EKI iteration with adaptive step):

    D_jk = (1/J) < G(u_k) - mean G , grad_z Psi(G(u_j), y) >        (J x J, summed over b, c)
    u_{n+1} = u_n - h_n D(u_n) u_n,      h_n = h0 / (||D(u_n)||_F + eps)                  (1)

with grad_z Psi = G - y for ``loss=mse`` (G = logits, Gamma = I) and
grad_z Psi = -y / (G + delta) for ``loss=cross_entropy`` (G = softmax outputs, delta = 0.005,
h0 = 2, eps = 0.5 as in one public implementation). Every row of D sums to zero over k, so
D U = D (U - mean U): the update is the low-rank correction U <- U + W Z^T (U - mean U) with
W = -h A / J (A = grad_z Psi, J x d) and Z = centred G (J x d), applied by
:func:`enkf_repro.enkf.apply_low_rank_` with a J x J matrix or two GEMMs, never a P x P one.

Momentum (MEKI, K&S's Nesterov variant):  v_n = u_n + lambda_n (u_n - u_{n-1}),
lambda_n = n / (n + 3) (or a constant), and u_{n+1} = v_n - h(v_n) D(v_n) v_n.

Randomised "(R)": after each step the members are redrawn as u_j = mean(u) + gamma(n) xi_j with
xi_j drawn from the prior (the ``init`` distribution), centred over j so the mean is kept
exactly; gamma(n) = gamma0 / sqrt(1 + n / tau) decreases (our schedule: the seed gives no formula).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .enkf import apply_low_rank_
from .errors import DivergenceError
from .models import ModelSpec, _name


# -- pure functions ----------------------------------------------------------------------------
def eki_loss_grad(G: torch.Tensor, Y: torch.Tensor, loss: str = "mse",
                  delta: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member loss Psi (J,) and its gradient grad_z Psi (J, B, C) with respect to the outputs.

    Args:
        G: outputs (J, B, C): logits for ``mse``, softmax probabilities for ``cross_entropy``.
        Y: one-hot targets (B, C).
    Psi is the sum over the B samples: mse 0.5 |G - y|^2, cross_entropy -<y, log(G + delta)>
    (K&S's cross-entropy variant, delta keeps the gradient -y / (G + delta) finite).
    """
    Y = Y.to(G.dtype).unsqueeze(0)
    if loss == "mse":
        R = G - Y
        return 0.5 * (R * R).sum((1, 2)), R
    if loss == "cross_entropy":
        return -(Y * torch.log(G + delta)).sum((1, 2)), -Y / (G + delta)
    raise ValueError(f"loss={loss!r}: expected 'mse' or 'cross_entropy'")


def eki_matrix(G: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """D (J x J) of (1): D_jk = (1/J) <G_k - mean G, grad_j>. For tests and small J; the
    trainer never forms it when J > d."""
    J = G.shape[0]
    Z = (G - G.mean(0, keepdim=True)).reshape(J, -1)
    return grad.reshape(J, -1) @ Z.T / J


def eki_frobenius(A: torch.Tensor, Z: torch.Tensor) -> float:
    """||A Z^T||_F / J for A, Z (J x d), in the smaller of the two dimensions."""
    J, d = A.shape
    if J <= d:
        return float(torch.linalg.matrix_norm(A @ Z.T)) / J
    sq = ((A.T @ A) * (Z.T @ Z)).sum().clamp_min(0)     # trace(A^T A Z^T Z) = ||A Z^T||_F^2
    return math.sqrt(float(sq)) / J


def eki_step_(U: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, h0: float = 2.0, eps: float = 0.5,
              loss: str = "mse", delta: float = 0.005) -> tuple[torch.Tensor, dict[str, Any]]:
    """In place: one EKI step (1) on U (J, P); returns (U, info) with info = {"h": h_n,
    "d_norm": ||D||_F, "loss": Psi per member (J,)}. The factors are computed in float64."""
    if G.shape[0] != U.shape[0]:
        raise ValueError(f"outputs has {G.shape[0]} members, ensemble {U.shape[0]}")
    if Y.shape != G.shape[1:]:
        raise ValueError(f"targets {tuple(Y.shape)} must match outputs' (B, C) {tuple(G.shape[1:])}")
    J = G.shape[0]
    G64 = G.to(torch.float64)
    psi, grad = eki_loss_grad(G64, Y.to(torch.float64), loss, delta)
    A = grad.reshape(J, -1)
    Z = (G64 - G64.mean(0, keepdim=True)).reshape(J, -1)
    d_norm = eki_frobenius(A, Z)
    if not math.isfinite(d_norm):
        raise DivergenceError("EKI step: D(u) is not finite (diverged ensemble)")
    h = h0 / (d_norm + eps)
    apply_low_rank_(U, A * (-h / J), Z)            # U <- U - h D U  (D 1 = 0: centring is free)
    return U, {"h": h, "d_norm": d_norm, "loss": psi}


def eki_step(U: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, h0: float = 2.0, eps: float = 0.5,
             loss: str = "mse", delta: float = 0.005) -> torch.Tensor:
    """One EKI step (1); returns the new ensemble (J, P), ``U`` untouched. See :func:`eki_step_`."""
    return eki_step_(U.clone(), G, Y, h0, eps, loss, delta)[0]


def nesterov_coefficient(n: int, coef: float | None = None) -> float:
    """lambda_n of MEKI: n / (n + 3) (Nesterov, K&S) or the constant ``coef``."""
    return n / (n + 3.0) if coef is None else float(coef)


def glorot_std(shape) -> float:
    """Glorot-normal std of a linear (out, in) or conv (out, in, kh, kw) weight, as models.init."""
    fan_out, fan_in = shape[0], math.prod(shape[1:])
    rf = math.prod(shape[2:]) if len(shape) > 2 else 1
    return math.sqrt(2.0 / (fan_in + fan_out * rf))


def prior_std(model: ModelSpec, init_cfg, device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-parameter std (P,) of the init prior that :meth:`ModelSpec.init` draws from: weights
    N(0, sigma^2) (``normal``) or Glorot-normal (``glorot``), biases 0."""
    scheme = _name(init_cfg.scheme)
    parts = []
    for name, shape in model.shapes.items():
        std = 0.0 if name.endswith("bias") else (float(init_cfg.sigma) if scheme == "normal" else glorot_std(shape))
        parts.append(torch.full((math.prod(shape),), std, device=device, dtype=dtype))
    return torch.cat(parts)


def randomize_(U: torch.Tensor, noise: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """In place: u_j <- mean(u) + scale * (xi_j - mean(xi)), the (R) redraw, for U, noise (J, P)
    and scale a number or per-parameter (P,) (gamma(n) times the prior std). Centring the noise
    keeps the ensemble mean (the evaluated network) exactly. ``noise`` is used as work space."""
    mean = U.mean(0, keepdim=True)
    noise.sub_(noise.mean(0, keepdim=True))
    if isinstance(scale, torch.Tensor):
        return torch.addcmul(mean, noise, scale, out=U)
    return torch.add(mean, noise, alpha=float(scale), out=U)


class SpreadSchedule:
    """gamma(n) = gamma0 / sqrt(1 + n / tau): the decreasing spread of the (R) redraws."""

    def __init__(self, gamma0: float = 1.0, tau: float = 100.0):
        self.gamma0, self.tau = float(gamma0), float(tau)

    def __call__(self, n: int) -> float:
        return self.gamma0 / math.sqrt(1.0 + n / self.tau)


class RecentBatches:
    """The most recent distinct training batches, up to ``n`` samples: the set on which members
    are ranked to pick the best member (no extra data access, no peeking at the test set)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.n <= 0 or (self.xs and self.xs[-1].shape == x.shape and torch.equal(self.xs[-1], x)):
            return
        self.xs.append(x.detach().clone())
        self.ys.append(y.detach().clone())
        while len(self.xs) > 1 and sum(t.shape[0] for t in self.xs[1:]) >= self.n:
            self.xs.pop(0)
            self.ys.pop(0)

    def get(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.xs:
            return None
        return torch.cat(self.xs)[-self.n:], torch.cat(self.ys)[-self.n:]

    def state_dict(self) -> dict:
        return {"xs": self.xs, "ys": self.ys}

    def load_state_dict(self, state: dict, device) -> None:
        self.xs = [t.to(device) for t in state["xs"]]
        self.ys = [t.to(device) for t in state["ys"]]


def best_member(forward, U: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy",
                delta: float = 0.005) -> int:
    """Index of the member of U with the lowest loss Psi on (x, y): K&S's "best particle",
    ranked on training data."""
    G = forward(U, x)
    if loss == "cross_entropy":
        G = torch.softmax(G, -1)
    psi, _ = eki_loss_grad(G.to(torch.float64), y.to(torch.float64), loss, delta)
    psi = torch.where(torch.isfinite(psi), psi, torch.full_like(psi, float("inf")))
    return int(psi.argmin())


# -- the method ----------------------------------------------------------------------------------
class EKI:
    """``optimizer=eki``: (1) with optional Nesterov momentum (MEKI) and randomisation (R).

    Evaluated networks: the ensemble mean (metric ``test_error``) and the best member, the one
    with the lowest training loss on the most recent ``best_of`` training samples at evaluation
    time (``test_error_best``). Without randomisation every member stays in the affine span of
    the initial ensemble (biases that start at 0 in every member therefore stay 0).
    """

    def __init__(self, cfg, model: ModelSpec, forward, generator: torch.Generator, device: torch.device):
        opt = cfg.optimizer
        self.model, self.forward, self.generator = model, forward, generator
        self.h0, self.eps, self.delta = float(opt.h0), float(opt.eps), float(opt.delta)
        self.loss = _name(opt.loss)
        self.momentum = _name(opt.momentum) == "nesterov"
        self.coef = opt.momentum_coef
        self.randomize = bool(opt.randomize)
        self.spread = SpreadSchedule(opt.random_gamma0, opt.random_tau)
        self.U = model.init(int(opt.ensemble_size), cfg.init, generator, device)
        self.prior_std = prior_std(model, cfg.init, device) if self.randomize else None
        self.prev: torch.Tensor | None = None   # u_{n-1} (members, or the mean under (R))
        self.n = 0
        self.recent = RecentBatches(int(opt.best_of))
        self.last: dict[str, float] = {}

    def outputs(self, V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        G = self.forward(V, x)
        return torch.softmax(G, -1) if self.loss == "cross_entropy" else G

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.recent.add(x, y)
        lam = nesterov_coefficient(self.n, self.coef) if self.momentum else 0.0
        if self.momentum and self.randomize:
            # fresh noise every step: only the mean's displacement carries momentum
            mean = self.U.mean(0)
            if self.prev is not None and lam > 0:
                self.U.add_(lam * (mean - self.prev))
            self.prev = mean
            V = self.U
        elif self.momentum:
            if self.prev is None:
                self.prev = self.U.clone()
            # v_n = u_n + lam (u_n - u_{n-1}), built in u_{n-1}'s buffer
            V = self.prev.mul_(-lam).add_(self.U, alpha=1.0 + lam)
            self.prev = self.U
        else:
            V = self.U
        G = self.outputs(V, x)
        if not bool(torch.isfinite(G).all()):
            raise DivergenceError("EKI: non-finite network outputs (diverged ensemble)")
        V, info = eki_step_(V, G, y, self.h0, self.eps, self.loss, self.delta)
        self.U = V
        if self.randomize:
            noise = torch.randn(self.U.shape, generator=self.generator, device=self.U.device, dtype=self.U.dtype)
            randomize_(self.U, noise, self.spread(self.n + 1) * self.prior_std)   # xi_j ~ the init prior
        self.n += 1
        self.last = {"step_size": info["h"], "d_norm": info["d_norm"]}
        return {"train_loss": float(info["loss"].mean()) / x.shape[0]}   # per sample, mean over members

    def eval_params(self) -> dict[str, torch.Tensor]:
        out = {"": self.U.mean(0)}
        sel = self.recent.get()
        if sel is not None:
            out["best"] = self.U[best_member(self.forward, self.U, *sel, self.loss, self.delta)]
        return out

    def diagnostics(self) -> dict[str, float]:
        d = {"ensemble_spread": float(self.U.std(0).mean()), "ensemble_size": self.U.shape[0], **self.last}
        if self.momentum:
            d["momentum_lambda"] = nesterov_coefficient(self.n, self.coef)
        if self.randomize:
            d["random_gamma"] = self.spread(self.n)
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"U": self.U, "prev": self.prev, "n": self.n, "recent": self.recent.state_dict(), "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.U.device
        self.U = state["U"].to(dev)
        self.prev = None if state["prev"] is None else state["prev"].to(dev)
        self.n = int(state["n"])
        self.recent.load_state_dict(state["recent"], dev)
        self.last = dict(state["last"])

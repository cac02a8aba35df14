"""The observation noise Gamma of the ensemble Kalman methods beyond gamma * I: D variances or a
full D x D matrix, applied by whitening.

The updates of this package are written for Gamma = gamma * I (``optim/enkf.py``, ``eki.py``,
``etki.py``). A general symmetric positive definite Gamma = L L^T (L its Cholesky factor, computed
once) reduces to that case: with the whitened outputs and data

    G' = L^{-1} G(u),    y' = L^{-1} y,                                                    (1)

every quantity the updates use is the Gamma-weighted one with gamma = 1:
C_G'G' + I = L^{-1} (C_GG + Gamma) L^{-T}, C_uG' (C_G'G' + I)^{-1} (y' - G') =
C_uG (C_GG + Gamma)^{-1} (y - G) (the Kalman gain), <G'_k - mean G', G'_j - y'> =
<G_k - mean G, Gamma^{-1} (G_j - y)> (Kovachki & Stuart's D) and 1/2 |y' - G'|^2 =
1/2 |Gamma^{-1/2} (y - G)|^2 (the data misfit, so the reported ``train_misfit`` is the weighted
one). Gamma is the covariance of ONE sample's D outputs; a mini-batch of B samples has the
block-diagonal I_B (x) Gamma, so (1) acts on the last axis of the outputs (J, B, D) and the EnKF's
per-sample (``sequential``) assimilation keeps its structure. A forward map evaluated by the user
(``EnsembleKalmanProcess.tell`` with outputs (J, d)) is one sample of d outputs with a d x d Gamma.
"""

from __future__ import annotations

from typing import Any

import torch


class Noise:
    """Gamma of one sample's D outputs, as D variances (``diag``) or a D x D matrix (``full``),
    with :meth:`whiten` = L^{-1} on the last axis. Factorised once, in float64."""

    def __init__(self, covariance: Any, dim: int | None = None):
        """``covariance``: D positive variances (a sequence, array or tensor of shape (D,)) or a
        symmetric positive definite D x D matrix. ``dim``: the D it must have (checked)."""
        cov = torch.as_tensor(covariance, dtype=torch.float64).detach().cpu()
        if cov.dim() not in (1, 2) or (cov.dim() == 2 and cov.shape[0] != cov.shape[1]) or cov.numel() == 0:
            raise ValueError(f"noise covariance of shape {tuple(cov.shape)}: expected D variances (D,) or a "
                             "D x D matrix")
        if not bool(torch.isfinite(cov).all()):
            raise ValueError("noise covariance: not finite")
        self.dim = cov.shape[0]
        if dim is not None and self.dim != dim:
            raise ValueError(f"noise covariance for {self.dim} outputs; the forward map gives {dim} per sample")
        self.kind = "diag" if cov.dim() == 1 else "full"
        self.covariance = cov
        if self.kind == "diag":
            if not bool((cov > 0).all()):
                raise ValueError("noise variances must be > 0")
            self.std = cov.sqrt()
        else:
            if not torch.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * float(cov.abs().max())):
                raise ValueError("noise covariance matrix is not symmetric")
            L, info = torch.linalg.cholesky_ex(cov)
            if int(info) > 0:
                raise ValueError("noise covariance matrix is not positive definite")
            self.L = L
        self._on: dict[tuple, torch.Tensor] = {}

    def _factor(self, device: torch.device) -> torch.Tensor:
        key = (str(device),)
        if key not in self._on:
            self._on[key] = (self.std if self.kind == "diag" else self.L).to(device)
        return self._on[key]

    def whiten(self, t: torch.Tensor) -> torch.Tensor:
        """L^{-1} t on the last axis of ``t`` (..., D), in float64 (``diag``: t / std)."""
        if t.shape[-1] != self.dim:
            raise ValueError(f"outputs with {t.shape[-1]} values per sample; the noise covariance is "
                             f"{self.dim} x {self.dim}")
        f = self._factor(t.device)
        t64 = t.to(torch.float64)
        if self.kind == "diag":
            return t64 / f
        flat = t64.reshape(-1, self.dim).T                                  # (D, n)
        return torch.linalg.solve_triangular(f, flat, upper=False).T.reshape(t64.shape)

    def log_det(self) -> float:
        """log det Gamma (for Gaussian likelihoods)."""
        if self.kind == "diag":
            return float(torch.log(self.covariance).sum())
        return 2.0 * float(torch.log(torch.diagonal(self.L)).sum())

    def __repr__(self) -> str:
        return f"Noise({self.kind}, D={self.dim})"


def as_noise(covariance: Any, dim: int | None = None) -> Noise | None:
    """A :class:`Noise` from D variances or a D x D matrix (None stays None: gamma * I)."""
    if covariance is None or isinstance(covariance, Noise):
        return covariance
    return Noise(covariance, dim)


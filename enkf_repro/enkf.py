"""The EnKF update of the paper, as pure functions on tensors.

Notation (reference.md): ensemble U (J x P), model outputs G (J x B x C) of the members on a
mini-batch, one-hot targets Y (B x C), observation noise Gamma = gamma * I, d = B * C.
Covariances are normalised by 1/J. The update (Iglesias, Law & Stuart 2013, eq. for the
iterative ensemble Kalman method) is

    u_j <- u_j + C_uG (C_GG + Gamma)^-1 (y - G(u_j)).                                   (1)

``mode="batch"`` applies (1) once with the joint d-dimensional observation. ``mode="sequential"``
is the published code's scheme: the B samples are assimilated one at a time (a C-dimensional
observation with a C x C covariance each) while the outputs G of the single forward pass are
reused for all B steps. Because G is not recomputed, the B steps are the product

    U <- (I + a_B c_B^T) ... (I + a_1 c_1^T) U,   c_s = centred outputs of sample s (J x C),
    a_s = (y_s - G_s)(C_GG,s + Gamma)^-1 / J,                                           (2)

and that product equals I + W Z^T with W = [a_1 .. a_B] and Z = C (I - N)^-1, N the strictly
block-upper part of W^T C (blocks a_k^T c_s, k < s). Both modes therefore end in the same low-rank
correction U <- U + W Z^T (U - mean(U)), done with two large GEMMs (or a J x J matrix when J is
small) and never a P x P or P x d x J temporary.
"""

from __future__ import annotations

import warnings

import torch

from .errors import DivergenceError

_JITTER_TRIES = 8


def cholesky_jittered(K: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a (batch of) symmetric positive definite K.

    Falls back to K + eps * mean(diag) * I with eps = 1e-10, 1e-9, ... and a warning when the
    factorisation fails; raises DivergenceError when K is not finite or no jitter helps.
    """
    L, info = torch.linalg.cholesky_ex(K)
    if not bool((info > 0).any()):
        return L
    if not bool(torch.isfinite(K).all()):
        raise DivergenceError("EnKF update: the output covariance is not finite (diverged ensemble)")
    scale = K.diagonal(dim1=-2, dim2=-1).abs().mean(-1, keepdim=True).clamp_min(1e-300)
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    for k in range(_JITTER_TRIES):
        eps = 10.0 ** (k - 10)
        L, info = torch.linalg.cholesky_ex(K + (eps * scale).unsqueeze(-1) * eye)
        if not bool((info > 0).any()):
            warnings.warn(f"EnKF update: covariance not positive definite; added jitter {eps:g} * mean(diag)",
                          RuntimeWarning, stacklevel=3)
            return L
    raise DivergenceError("EnKF update: covariance stays singular even with jitter")


def kalman_factors(outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                   mode: str = "sequential") -> tuple[torch.Tensor, torch.Tensor]:
    """W, Z (J x d each) such that the EnKF update is U <- U + W Z^T (U - mean(U)).

    Computed in float64 (these are O(J d^2) operations, small next to the O(J d P) GEMMs).
    """
    J, B, C = outputs.shape
    d = B * C
    G = outputs.to(torch.float64)
    Y = targets.to(torch.float64).reshape(1, B, C)
    Gc = G - G.mean(0, keepdim=True)       # centred outputs
    R = Y - G                              # innovations y - G(u_j)
    eye_c = torch.eye(C, dtype=G.dtype, device=G.device)
    if mode == "sequential":
        K = torch.einsum("jbc,jbe->bce", Gc, Gc) / J + gamma * eye_c       # C_GG,s + Gamma (B, C, C)
        L = cholesky_jittered(K)
        A = torch.cholesky_solve(R.permute(1, 2, 0), L).permute(2, 0, 1)   # (y_s - G_s) K_s^-1, (J, B, C)
        W = A.reshape(J, d) / J
        Z0 = Gc.reshape(J, d)
        block = torch.arange(d, device=G.device) // C
        N = (W.T @ Z0) * (block[:, None] < block[None, :])                  # blocks a_k^T c_s, k < s
        T = torch.eye(d, dtype=G.dtype, device=G.device) - N
        Z = torch.linalg.solve_triangular(T, Z0, upper=True, left=False, unitriangular=True)  # Z T = Z0
        return W, Z
    if mode != "batch":
        raise ValueError(f"mode={mode!r}: expected 'sequential' or 'batch'")
    Z = Gc.reshape(J, d)
    R2 = R.reshape(J, d)
    if d <= J:   # solve in data space: (C_GG + Gamma) is d x d
        K = Z.T @ Z / J + gamma * torch.eye(d, dtype=G.dtype, device=G.device)
        W = torch.cholesky_solve(R2.T, cholesky_jittered(K)).T / J
    else:        # Woodbury, ensemble space: (Z^T Z / J + g I)^-1 = (I - Z^T (J g I + Z Z^T)^-1 Z) / g
        S = Z @ Z.T + (J * gamma) * torch.eye(J, dtype=G.dtype, device=G.device)
        V = torch.cholesky_solve(Z @ R2.T, cholesky_jittered(S))           # (J, J)
        W = (R2 - V.T @ Z) / (gamma * J)
    return W, Z


BLOCK_ELEMENTS = 1 << 24  # elements of U centred at a time (64 MiB in fp32)


def apply_low_rank_(U: torch.Tensor, W: torch.Tensor, Z: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """In place: U <- U + W Z^T (U - mean(U)), blocked over parameter columns.

    Z^T 1 = 0 in exact arithmetic, so centring U changes nothing but the rounding error (it
    keeps fp32 accurate when the ensemble has collapsed far from the origin). When J is small
    against d the J x J matrix W Z^T is formed instead of two J x d x P products. Blocks of
    about 2^24 elements keep the temporary (J x block) bounded whatever J is.
    """
    J, P = U.shape
    d = W.shape[1]
    if block is None:
        block = max(256, BLOCK_ELEMENTS // max(J, 1))
    W = W.to(U.dtype)
    Z = Z.to(U.dtype)
    T = W @ Z.T if J <= d else None
    for s in range(0, P, block):
        Ub = U[:, s: s + block]
        Uc = Ub - Ub.mean(0, keepdim=True)
        if T is not None:
            Ub.addmm_(T, Uc)
        else:
            Ub.addmm_(W, Z.T @ Uc)
    return U


def enkf_update(ensemble: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                mode: str = "sequential") -> torch.Tensor:
    """One EnKF iteration (1) on a mini-batch; returns the new ensemble.

    Args:
        ensemble: U, (J, P), float32 or float64; not modified.
        outputs: G(u_j) on the batch, (J, B, C) (logits for the paper's network).
        targets: y, (B, C), one-hot labels.
        gamma: observation noise, Gamma = gamma * I, gamma > 0.
        mode: ``"sequential"`` (published code, per-sample assimilation (2)) or ``"batch"``.
    Returns:
        (J, P) tensor of ``ensemble``'s dtype.
    """
    return enkf_update_(ensemble.clone(), outputs, targets, gamma, mode)


def enkf_update_(ensemble: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                 mode: str = "sequential") -> torch.Tensor:
    """In-place :func:`enkf_update` (the trainer's path: no second J x P buffer)."""
    if outputs.shape[0] != ensemble.shape[0]:
        raise ValueError(f"outputs has {outputs.shape[0]} members, ensemble {ensemble.shape[0]}")
    if targets.shape != outputs.shape[1:]:
        raise ValueError(f"targets {tuple(targets.shape)} must match outputs' (B, C) {tuple(outputs.shape[1:])}")
    W, Z = kalman_factors(outputs, targets, gamma, mode)
    return apply_low_rank_(ensemble, W, Z)


def redraw_members(U: torch.Tensor, bad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """In place: replace the rows ``bad`` of U by draws around the mean of the others with their
    spread, u = mean + sum_k z_k (u_k - mean) / sqrt(J_good - 1), z ~ N(0, I): the Gaussian with
    the good members' mean and covariance (stays in their span)."""
    good = ~bad
    Ug = U[good]
    Jg = Ug.shape[0]
    if Jg < 2:
        raise DivergenceError(f"only {Jg} of {U.shape[0]} ensemble members are finite; cannot redraw")
    mean = Ug.mean(0, keepdim=True)
    z = torch.randn(int(bad.sum()), Jg, generator=generator, device=U.device, dtype=U.dtype)
    U[bad] = mean + z @ (Ug - mean) / (Jg - 1) ** 0.5
    return U

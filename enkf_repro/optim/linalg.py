"""Linear algebra shared by the ensemble updates: a jittered Cholesky factorisation and the
low-rank correction U <- U + W Z^T (U - mean U) applied in column blocks."""

from __future__ import annotations

import warnings

import torch

from ..errors import DivergenceError

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


BLOCK_ELEMENTS = 1 << 24  # elements of U centred at a time (64 MiB in fp32)


def apply_low_rank_(U: torch.Tensor, W: torch.Tensor, Z: torch.Tensor | None,
                    block: int | None = None) -> torch.Tensor:
    """In place: U <- U + W Z^T (U - mean(U)), blocked over parameter columns; ``Z=None``: W is
    already the J x J matrix (ensemble-space transforms: U <- U + W (U - mean(U))).

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
    if Z is None:
        T = W
    else:
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

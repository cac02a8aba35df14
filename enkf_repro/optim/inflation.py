"""Ensemble inflation, in place, as EnsembleKalmanProcesses.jl defines it
(src/EnsembleKalmanProcess.jl, ``multiplicative_inflation!`` and ``additive_inflation!``;
docs "Inflation", after Huang et al. 2022, arXiv:2204.04386, eq. 41).

Both are tied to the step dt of the update and a factor s (EKP's ``s``; for mini-batches EKP
suggests s = batch size / data-set size), and need s dt < 1:

    multiplicative:  u_j <- m + (1 - s dt)^{-1/2} (u_j - m)     C <- C / (1 - s dt)
    additive:        u_j <- u_j + zeta_j,  zeta_j ~ N(0, s dt / (1 - s dt) Sigma)

m the ensemble mean (kept), C the ensemble covariance, Sigma a given covariance (EKP's default
is the prior covariance). Multiplicative inflation keeps every member in the affine span of the
ensemble; additive inflation with a given Sigma leaves it. U is (J, P) with members as rows;
both functions work on column blocks, so no J x P temporary beyond a block is made.
"""

from __future__ import annotations

import math

import torch

from .linalg import BLOCK_ELEMENTS, apply_low_rank_


def inflation_variance_factor(scale: float, dt: float = 1.0) -> float:
    """s dt / (1 - s dt): EKP's additive-inflation variance factor; ValueError unless 0 <= s dt < 1."""
    sdt = float(scale) * float(dt)
    if not (math.isfinite(sdt) and 0.0 <= sdt < 1.0):
        raise ValueError(f"inflation needs 0 <= s * dt < 1; got s={scale!r}, dt={dt!r} (s * dt = {sdt!r})")
    return sdt / (1.0 - sdt)


def multiplicative_factor(scale: float, dt: float = 1.0) -> float:
    """(1 - s dt)^{-1/2}: EKP's multiplicative-inflation factor for :func:`multiplicative_inflation_`
    (the covariance grows by 1 / (1 - s dt)); ValueError unless 0 <= s dt < 1."""
    return math.sqrt(1.0 + inflation_variance_factor(scale, dt))


def _block(J: int, block: int | None) -> int:
    return block if block is not None else max(256, BLOCK_ELEMENTS // max(J, 1))


def multiplicative_inflation_(U: torch.Tensor, factor: float, block: int | None = None) -> torch.Tensor:
    """In place: u_j <- m + factor (u_j - m), m = mean of the rows of U (J, P); returns U.

    The mean is kept (exactly in exact arithmetic, to rounding in floating point) and the
    deviations, hence the spread, are multiplied by ``factor`` (the covariance by factor^2).
    Use ``factor = multiplicative_factor(s, dt)`` for EKP's inflation. Works on column blocks.
    """
    factor = float(factor)
    if not (math.isfinite(factor) and factor >= 0):
        raise ValueError(f"factor={factor!r} must be finite and >= 0")
    J, P = U.shape
    b = _block(J, block)
    for s in range(0, P, b):
        Ub = U[:, s: s + b]
        m = Ub.mean(0, keepdim=True)
        Ub.sub_(m).mul_(factor).add_(m)
    return U


def additive_inflation_(U: torch.Tensor, generator: torch.Generator, scale: float, dt: float = 1.0,
                        variance: float | torch.Tensor | None = None, keep_mean: bool = False,
                        block: int | None = None) -> torch.Tensor:
    """In place: u_j <- u_j + zeta_j with zeta_j ~ N(0, a Sigma), a = s dt / (1 - s dt); returns U.

    Args:
        U: ensemble (J, P), members as rows.
        generator: the torch.Generator the noise is drawn from (on U's device).
        scale: s (EKP's ``s``), with 0 <= s dt < 1.
        dt: the step of the update just made (Delta t).
        variance: Sigma. A number or a (P,) tensor: Sigma = diag(variance), e.g. the prior
            variance per parameter (EKP's default Sigma is the prior covariance; only diagonal
            ones are offered here). None: Sigma = the ensemble's own covariance
            C = (1/J) sum_k (u_k - m)(u_k - m)^T (this package's 1/J normalisation), drawn as
            zeta_j = sqrt(a / J) sum_k z_jk (u_k - m), z ~ N(0, 1) (J x J); the ensemble then
            stays in its affine span and E[new covariance] ~ C / (1 - s dt) as for
            multiplicative inflation (EKP's docs, "if Sigma = C_n").
        keep_mean: subtract the members' mean of the noise, so the ensemble mean is kept (to
            rounding); the noise covariance is then (1 - 1/J) a Sigma. EKP does not do this
            (False, the default).
        block: columns per block (default about 2^24 elements per block).
    The noise of a diagonal Sigma is drawn block by block, so the draws depend on the block
    size; the same generator state, shape and block size give the same result.
    """
    a = inflation_variance_factor(scale, dt)
    J, P = U.shape
    if variance is None:
        Zm = torch.randn(J, J, generator=generator, device=U.device, dtype=torch.float64)
        if keep_mean:
            Zm.sub_(Zm.mean(0, keepdim=True))          # zeta sums to zero over members
        Zm.mul_(math.sqrt(a / J))
        eye = torch.eye(J, dtype=Zm.dtype, device=Zm.device)
        return apply_low_rank_(U, Zm, eye, block)      # U += Zm (U - m), blocked
    if isinstance(variance, torch.Tensor):
        v = variance.detach().to(device=U.device, dtype=U.dtype).reshape(-1)
        if v.numel() == 1:
            v = v.expand(P)
        elif v.numel() != P:
            raise ValueError(f"variance has {v.numel()} entries; expected 1 or P = {P}")
    else:
        v = torch.full((P,), float(variance), device=U.device, dtype=U.dtype)
    if not bool((torch.isfinite(v) & (v >= 0)).all()):
        raise ValueError("variance must be finite and >= 0")
    std = (v * a).sqrt()
    b = _block(J, block)
    for s in range(0, P, b):
        noise = torch.randn(J, min(b, P - s), generator=generator, device=U.device, dtype=U.dtype)
        if keep_mean:
            noise.sub_(noise.mean(0, keepdim=True))
        U[:, s: s + b].addcmul_(noise, std[s: s + b])
    return U

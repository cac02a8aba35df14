"""Algorithm 1 of the paper: adapt the ensemble size J, the repetitions r and the budget N.

Two rules (``optimizer.adaptive.rule``, docs/paper.md "Algorithm 1"). Every ``tau`` iterations,
with t_n the test error (%) at this decision point and t_{n-1} the one at the previous one:

``as_run`` (default; what produced Figure 10: "we were able to decrease the repetitions r by 1 in
every 500th iteration", "after 1500 iterations the number of ensembles is decreased by v = 1000",
no increase since the error never rose, the epoch over by iteration 2500; the published code's
logic, :func:`decide_as_run`)::

    if t_n < epsilon and t_n <= t_{n-1}:  r <- r - 1;  J <- J - v if J > b_l and t_{n-1} - t_n <= kappa
    if t_n < epsilon and t_n >  t_{n-1}:  r <- r + 1 if r < r_0;  J <- J + v if J < b_u and t_n - t_{n-1} > kappa
    N <- D_s / m * r     (r sets only the budget; the batch switch keeps the configured r_0)

``printed`` (the pseudo-code as printed, :func:`decide`; fed 6.11 -> 5.0 it grows J and r)::

    if t_n < epsilon and t_n < t_{n-1}:                                   (Algorithm 1, line 3)
        if J > b_l and t_{n-1} - t_n <= kappa:   J <- J - v,  r <- r - 1  (lines 4-5, "shrink")
        elif J < b_u and t_{n-1} - t_n > kappa:  J <- J + v,  r <- r + 1  (lines 6-7, "grow")
        N <- D_s / m * r                                                  (line 8)

The published code does not run as published and never resizes the ensemble (a change of J only
rescales its covariance divisor); here J changes for real. Choices the text leaves open (config
values in ``optimizer.adaptive``, :class:`AdaptiveConfig`):

* The sequence t_n: test errors at iterations n * tau. Under ``as_run`` the untrained ensemble's
  error at iteration 0 is t_0 (the published code compares every evaluation after the first), so
  r first drops at tau = 500 as in Figure 10. Under ``printed`` it is not (unless
  ``use_initial_error=true``): against a ~90 % initial error the first decision would always be
  "grow"; the first decision is then at 2 * tau.
* Bounds: J is clamped to [b_l, b_u] (J - v < b_l gives b_l) and r never drops below 1.
* Shrinking (``shrink``): ``keep_mean`` (default) drops the LAST members and shifts the kept ones
  so the ensemble mean, the network that is evaluated, is unchanged (to float rounding). Members
  are exchangeable (i.i.d. prior draws updated by a permutation-equivariant rule), so the tail is
  as good as a random subset and needs no random numbers; the shift leaves their covariance
  unchanged. ``random`` drops a uniformly random subset without the shift: the plain reading of
  "drop members", which moves the mean by sampling noise of order spread / sqrt(J).
* Growing: new members are drawn from the Gaussian with the current ensemble mean and covariance,
  restricted to the ensemble's span (:func:`~enkf_repro.optim.failure.gaussian_draws`), and the grown
  ensemble is shifted back onto the old mean. The paper does not say how it grows.
* ``printed``: r changes the presentations from the next mini-batch on (the current batch
  finishes its presentations), J at once.
* The budget N of ``printed`` (``budget``): ``epoch`` (default) keeps N's meaning "one pass over the D_s / m
  batches at r presentations each" when r changes mid-run: N = iterations done + presentations
  left of the current batch + batches left * r_new, so every batch is still seen and the run
  ends when the epoch does. ``literal`` sets N = D_s / m * r_new (times the epochs), the formula
  as printed: after a shrink the run stops before the epoch's last batches (at once if N is
  already behind), after a grow the batches run out before N.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch

from ..config.validate import check
from .failure import gaussian_draws

HOLD, SHRINK, GROW = 0, -1, 1


class Rule(str, Enum):
    as_run = "as_run"    # what the paper ran (its text, Figure 10 and the published code's logic)
    printed = "printed"  # the pseudo-code as printed


class ShrinkMode(str, Enum):
    keep_mean = "keep_mean"  # drop the last members, shift the rest onto the old mean
    random = "random"        # drop a uniformly random subset (the mean moves by sampling noise)


class BudgetMode(str, Enum):
    epoch = "epoch"      # N = iterations done + what is left of the epoch at the new r
    literal = "literal"  # N = D_s / m * r with the new r, as printed in Algorithm 1


@dataclass
class AdaptiveConfig:
    """``optimizer.adaptive``: Algorithm 1 of the paper (adaptive J, r and iteration budget)."""

    enabled: bool = False
    # as_run (default): the rule that produced Figure 10 (the published code's logic); printed:
    # the pseudo-code as printed, which changes J and r together and grows both on a large gain.
    rule: Rule = Rule.as_run
    tau: int = 500           # iterations between decisions (the evaluation cadence)
    epsilon: float = 10.0    # test-error threshold in percent
    kappa: float = 1.0       # improvement threshold in percentage points
    v: int = 1000            # members added or removed per decision
    b_l: int = 1000          # lower bound on J
    b_u: int = 10000         # upper bound on J (the published config uses 9000)
    shrink: ShrinkMode = ShrinkMode.keep_mean  # which members are dropped
    # rule=printed only: what N = D_s / m * r means when r changes mid-run (as_run: N = D_s / m * r)
    budget: BudgetMode = BudgetMode.epoch
    # use the iteration-0 (untrained) error as t_0; null: yes under as_run (the published code
    # compares every evaluation after the first, so r drops at the first decision, tau), no under
    # printed (against a ~90 % initial error its first decision would always grow J and r)
    use_initial_error: Optional[bool] = None


def check_adaptive(a, cfg) -> None:
    """Ranges of ``optimizer.adaptive`` (when enabled)."""
    check(a.tau >= 1, "optimizer.adaptive.tau", a.tau, "an integer >= 1")
    check(a.v >= 1, "optimizer.adaptive.v", a.v, "an integer >= 1")
    check(2 <= a.b_l <= a.b_u, "optimizer.adaptive.b_l", a.b_l, f"an integer with 2 <= b_l <= b_u = {a.b_u}")
    check(a.epsilon > 0, "optimizer.adaptive.epsilon", a.epsilon, "a test error in percent > 0")
    check(a.kappa >= 0, "optimizer.adaptive.kappa", a.kappa, "a number of percentage points >= 0")
    if cfg.train.eval_every is not None:
        check(a.tau % cfg.train.eval_every == 0, "optimizer.adaptive.tau", a.tau,
              f"a multiple of train.eval_every = {cfg.train.eval_every} (decisions use evaluations)")


@dataclass(frozen=True)
class Decision:
    action: int           # HOLD, SHRINK or GROW
    ensemble_size: int    # J after the decision
    repetitions: int      # r after the decision


def decide(t_n: float, t_prev: float | None, J: int, r: int, *, epsilon: float, kappa: float, v: int,
           b_l: int, b_u: int) -> Decision:
    """One decision of Algorithm 1 (lines 3-7).

    Args:
        t_n, t_prev: test errors in percent at this and at the previous decision point
            (t_prev None: no previous point yet, hold).
        J, r: current ensemble size and repetitions per batch.
        epsilon: error threshold (%); kappa: improvement threshold (percentage points);
        v: members added or removed; b_l, b_u: bounds on J.
    Returns:
        the action and the new (J, r); J stays in [b_l, b_u] when it changes, r >= 1.
    """
    if t_prev is None or not (t_n < epsilon and t_n < t_prev):
        return Decision(HOLD, J, r)
    gain = t_prev - t_n  # > 0 here
    if J > b_l and gain <= kappa:
        return Decision(SHRINK, max(J - v, b_l), max(r - 1, 1))
    if J < b_u and gain > kappa:
        return Decision(GROW, min(J + v, b_u), r + 1)
    return Decision(HOLD, J, r)


def decide_as_run(t_n: float, t_prev: float | None, J: int, r: int, *, epsilon: float, kappa: float, v: int,
                  b_l: int, b_u: int, r_max: int) -> Decision:
    """One decision of Algorithm 1 as the paper ran it (the published code's logic, in errors:
    accuracy a_n = 100 - t_n, its threshold 100 - epsilon).

    Below epsilon and not worse than t_prev: r -= 1 (never below 1), and J -= v (not below b_l)
    when the gain is at most kappa. Below epsilon and worse: r += 1 (not above r_max, the
    configured r) and J += v (not above b_u) when the loss exceeds kappa. Otherwise hold. Unlike
    :func:`decide`, J and r change independently and a large gain never grows them: this is what
    Figure 10 shows (r down by 1 every 500 iterations, J down by 1000 after 1500).
    """
    if t_prev is None or not t_n < epsilon:
        return Decision(HOLD, J, r)
    if t_n <= t_prev:
        J_new = max(J - v, b_l) if J > b_l and t_prev - t_n <= kappa else J
        r_new = max(r - 1, 1)
    else:
        J_new = min(J + v, b_u) if J < b_u and t_n - t_prev > kappa else J
        r_new = min(r + 1, r_max) if r < r_max else r
    action = SHRINK if (J_new < J or r_new < r) else GROW if (J_new > J or r_new > r) else HOLD
    return Decision(action, J_new, r_new)


def iteration_budget(mode: str, *, iteration: int, batch: int, rep: int, r_current: int, r_new: int,
                     total_batches: int) -> int:
    """The iteration budget N after r changes to ``r_new`` (Algorithm 1, line 8).

    Args:
        mode: ``"epoch"``: iterations done + (r_current - rep) presentations left of the current
            batch + (total_batches - batch - 1) * r_new; equals D_s / m * r when r never changed.
            ``"literal"``: total_batches * r_new (D_s / m * r per epoch), never less than
            ``iteration`` (the run then ends at once).
        iteration: iterations done; batch: index of the current batch; rep: its presentations
            done (may equal r_current when it is complete); total_batches: batches of the run
            (D_s / m per epoch, times the epochs).
    """
    if mode == "literal":
        return max(total_batches * r_new, iteration)
    if mode != "epoch":
        raise ValueError(f"budget mode {mode!r}: expected 'epoch' or 'literal'")
    left_here = max(r_current - rep, 0)
    return iteration + left_here + max(total_batches - batch - 1, 0) * r_new


def _shift_mean_(U: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """In place: U <- U - mean(U) + mean (means in float64, so the result is exact to U's rounding)."""
    U += (mean - U.double().mean(0)).to(U.dtype)
    return U


def shrink_ensemble(U: torch.Tensor, J_new: int, mode: str = "keep_mean",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop members of U (J, P) to get (J_new, P), 2 <= J_new <= J; returns a new tensor.

    ``keep_mean``: keep the first J_new members (members are exchangeable) and shift them so the
    mean equals U's mean. ``random``: keep a uniformly random subset drawn with ``generator``
    (original order kept), no shift.
    """
    J = U.shape[0]
    if not 2 <= J_new <= J:
        raise ValueError(f"cannot shrink an ensemble of {J} members to {J_new}")
    if mode == "keep_mean":
        mean = U.double().mean(0)
        return _shift_mean_(U[:J_new].clone(), mean)
    if mode == "random":
        keep = torch.randperm(J, generator=generator, device=U.device)[:J_new].sort().values
        return U[keep].clone()
    raise ValueError(f"shrink mode {mode!r}: expected 'keep_mean' or 'random'")


def grow_ensemble(U: torch.Tensor, J_new: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Append J_new - J members to U (J, P), J >= 2; returns a new (J_new, P) tensor.

    New members u = mean + sum_k z_k (u_k - mean) / sqrt(J - 1), z ~ N(0, I_J) drawn with
    ``generator``: the Gaussian with the ensemble's mean and covariance, within its span. The
    grown ensemble is then shifted so its mean equals the old mean (to float rounding); old
    members keep their rows and move by that common shift only.
    """
    J = U.shape[0]
    if J_new < J or J < 2:
        raise ValueError(f"cannot grow an ensemble of {J} members to {J_new}")
    mean = U.double().mean(0)
    return _shift_mean_(torch.cat([U, gaussian_draws(U, J_new - J, generator)]), mean)


def resize_ensemble(U: torch.Tensor, J_new: int, generator: torch.Generator | None = None,
                    shrink: str = "keep_mean") -> torch.Tensor:
    """U (J, P) -> (J_new, P): :func:`shrink_ensemble` or :func:`grow_ensemble`; U itself when
    J_new == J."""
    J = U.shape[0]
    if J_new == J:
        return U
    if J_new < J:
        return shrink_ensemble(U, J_new, shrink, generator)
    return grow_ensemble(U, J_new, generator)


class AdaptiveSchedule:
    """Algorithm 1 as the training loop's schedule (``optimizer.adaptive.enabled=true``).

    ``on_eval`` is called by the loop at every evaluation; at multiples of ``tau`` (before the
    run's last iteration) it decides with :func:`decide`, resizes the method's ensemble
    (``method.resize``), sets ``state.r_next`` and recomputes ``state.budget``. It returns the
    CSV rows ``adaptive_ensemble_size`` (J from now on), ``adaptive_repetitions`` (r for the
    following batches), ``adaptive_budget`` (N) and ``adaptive_decision`` (-1 shrink, 0 hold,
    +1 grow) at every evaluation, including iteration 0.

    ``rule=as_run`` decides with :func:`decide_as_run` and, as the published code, lets r set only
    the budget N = D_s / m * r (the batches are still presented the configured number of times),
    so the run ends early as r drops. ``rule=printed`` decides with :func:`decide` and applies r to
    the presentations of the following batches, with the budget of ``budget``.

    Its own state is t_{n-1} (and the algorithm's r under as_run); J lives in the ensemble, r /
    r_next / budget in the loop state and the random numbers in the run's generator, all of which
    the loop checkpoints.
    """

    def __init__(self, acfg: AdaptiveConfig, batches, repetitions: int = 8):
        self.rule = acfg.rule.value
        self.r = self.r_max = int(repetitions)   # the algorithm's r under as_run
        self.tau = int(acfg.tau)
        self.params = dict(epsilon=float(acfg.epsilon), kappa=float(acfg.kappa), v=int(acfg.v),
                           b_l=int(acfg.b_l), b_u=int(acfg.b_u))
        self.shrink = acfg.shrink.value
        self.budget_mode = acfg.budget.value
        use = acfg.use_initial_error
        self.use_initial = (acfg.rule == Rule.as_run) if use is None else bool(use)
        self.total = int(batches.total)
        self.prev: float | None = None  # t_{n-1}

    def _finished(self, st) -> bool:
        return st.iteration >= st.budget or (st.batch + 1 >= self.total and st.rep >= st.r)

    def on_eval(self, iteration: int, error: float, state, method) -> list[dict]:
        action = HOLD
        r_cur = state.r_next or state.r
        if iteration == 0:
            if self.use_initial:
                self.prev = error
        elif iteration % self.tau == 0 and not self._finished(state) and self.rule == "as_run":
            d = decide_as_run(error, self.prev, method.ensemble_size, self.r, r_max=self.r_max, **self.params)
            action = d.action
            if d.ensemble_size != method.ensemble_size:
                method.resize(d.ensemble_size, self.shrink)
            if d.repetitions != self.r:
                self.r = d.repetitions
                state.budget = iteration_budget("literal", iteration=state.iteration, batch=state.batch,
                                                rep=state.rep, r_current=state.r, r_new=self.r,
                                                total_batches=self.total)
            self.prev = error
        elif iteration % self.tau == 0 and not self._finished(state):
            d = decide(error, self.prev, method.ensemble_size, r_cur, **self.params)
            action = d.action
            if d.ensemble_size != method.ensemble_size:
                method.resize(d.ensemble_size, self.shrink)
            if d.repetitions != r_cur:
                state.r_next = d.repetitions if d.repetitions != state.r else 0
                state.budget = iteration_budget(
                    self.budget_mode, iteration=state.iteration, batch=state.batch, rep=state.rep,
                    r_current=state.r, r_new=d.repetitions, total_batches=self.total)
                r_cur = d.repetitions
            self.prev = error
        if self.rule == "as_run":
            r_cur = self.r
        return [{"metric": "adaptive_ensemble_size", "value": method.ensemble_size},
                {"metric": "adaptive_repetitions", "value": r_cur},
                {"metric": "adaptive_budget", "value": state.budget},
                {"metric": "adaptive_decision", "value": action}]

    def state_dict(self) -> dict:
        return {"prev": self.prev, "r": self.r} if self.rule == "as_run" else {"prev": self.prev}

    def load_state_dict(self, state: dict) -> None:
        self.prev = state.get("prev")
        self.r = int(state.get("r", self.r))


class FixedSchedule:
    """No adaptation: J, r and the budget stay as configured."""

    def on_eval(self, iteration: int, error: float, state, method) -> list[dict]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

"""Algorithm 1 (adaptive.py): every decision, the budget, the ensemble resizing, and the schedule
inside the real training loop with scripted test errors (so each decision is known in advance)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_run
from enkf_repro.errors import ConfigError
from enkf_repro.models.base import ModelSpec
from enkf_repro.optim.adaptive import (
    GROW,
    HOLD,
    SHRINK,
    AdaptiveConfig,
    AdaptiveSchedule,
    Decision,
    decide,
    decide_as_run,
    grow_ensemble,
    iteration_budget,
    resize_ensemble,
    shrink_ensemble,
)
from enkf_repro.runs.folder import RunFolder, RunWriter
from enkf_repro.runs.loop import LoopState
from enkf_repro.runs.runner import RunSpec, run_one

PAPER = dict(epsilon=10.0, kappa=1.0, v=1000, b_l=1000, b_u=10000)


# -- decide(): Algorithm 1, lines 3-7 ---------------------------------------------------------
@pytest.mark.parametrize("t_n,t_prev,J,r,want", [
    (5.5, 6.0, 5000, 8, (SHRINK, 4000, 7)),      # below epsilon, small gain (0.5 <= kappa): shrink
    (5.0, 6.0, 5000, 8, (SHRINK, 4000, 7)),      # gain exactly kappa counts as small (<=)
    (4.0, 6.0, 5000, 8, (GROW, 6000, 9)),        # gain 2 > kappa: grow
    (9.99, 50.0, 5000, 8, (GROW, 6000, 9)),      # just below epsilon
    (10.0, 50.0, 5000, 8, (HOLD, 5000, 8)),      # t_n == epsilon is not below it
    (12.0, 13.0, 5000, 8, (HOLD, 5000, 8)),      # above epsilon
    (6.0, 6.0, 5000, 8, (HOLD, 5000, 8)),        # no improvement
    (6.5, 6.0, 5000, 8, (HOLD, 5000, 8)),        # worse
    (5.5, None, 5000, 8, (HOLD, 5000, 8)),       # no previous decision point
    (5.5, 6.0, 1000, 8, (HOLD, 1000, 8)),        # at the lower bound: no shrink
    (4.0, 6.0, 10000, 8, (HOLD, 10000, 8)),      # at the upper bound: no grow
    (5.5, 6.0, 1500, 8, (SHRINK, 1000, 7)),      # J - v below b_l: clamped to b_l
    (4.0, 6.0, 9500, 8, (GROW, 10000, 9)),       # J + v above b_u: clamped to b_u
    (5.5, 6.0, 5000, 1, (SHRINK, 4000, 1)),      # r never below 1 (J still shrinks)
])
def test_decide_every_branch(t_n, t_prev, J, r, want):
    d = decide(t_n, t_prev, J, r, **PAPER)
    assert (d.action, d.ensemble_size, d.repetitions) == want


def test_decide_kappa_zero_and_large_epsilon():
    assert decide(5.9, 6.0, 5000, 8, **{**PAPER, "kappa": 0.0}).action == GROW
    assert decide(40.0, 45.0, 5000, 8, **{**PAPER, "epsilon": 50.0, "kappa": 10.0}).action == SHRINK


# -- the iteration budget N --------------------------------------------------------------------
def test_budget_epoch_mode_counts_what_is_left_of_the_epoch():
    # 938 batches at r = 8; at iteration 1000 = batch 125, 0 reps done of it... here 125*8 = 1000
    # means batch 124 is complete (rep = 8): 813 batches left at r = 7
    assert iteration_budget("epoch", iteration=1000, batch=124, rep=8, r_current=8, r_new=7,
                            total_batches=938) == 1000 + 813 * 7
    # mid-batch (500 = 62 * 8 + 4): the current batch finishes its 4 remaining presentations at r = 8
    assert iteration_budget("epoch", iteration=500, batch=62, rep=4, r_current=8, r_new=7,
                            total_batches=938) == 500 + 4 + 875 * 7
    # unchanged r from the start: N = D_s / m * r
    assert iteration_budget("epoch", iteration=0, batch=0, rep=0, r_current=8, r_new=8,
                            total_batches=938) == 938 * 8


def test_budget_literal_mode_is_the_printed_formula():
    assert iteration_budget("literal", iteration=1000, batch=124, rep=8, r_current=8, r_new=7,
                            total_batches=938) == 938 * 7
    # N behind the iterations already done: the run ends now, never a budget in the past
    assert iteration_budget("literal", iteration=4000, batch=499, rep=8, r_current=8, r_new=2,
                            total_batches=938) == 4000


# -- resizing the ensemble -----------------------------------------------------------------------
def ensemble(J=40, P=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(J, P, generator=g) * 0.3 + torch.linspace(-2, 2, P)


def test_shrink_keep_mean_preserves_mean_and_covariance():
    U = ensemble()
    V = shrink_ensemble(U, 25, "keep_mean")
    assert V.shape == (25, 30)
    torch.testing.assert_close(V.double().mean(0), U.double().mean(0), atol=1e-6, rtol=0)
    shift = V - U[:25]                       # the first 25 members, all moved by one common vector
    assert (shift - shift[0]).abs().max() < 1e-6
    torch.testing.assert_close(torch.cov(V.T), torch.cov(U[:25].T), atol=1e-5, rtol=1e-5)


def test_shrink_random_is_a_seeded_subset_and_moves_the_mean():
    U = ensemble()
    a = shrink_ensemble(U, 20, "random", torch.Generator().manual_seed(3))
    b = shrink_ensemble(U, 20, "random", torch.Generator().manual_seed(3))
    c = shrink_ensemble(U, 20, "random", torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    rows = {tuple(u.tolist()) for u in U}
    assert all(tuple(u.tolist()) in rows for u in a)            # members kept as they were
    assert not torch.equal(a, U[:20])                             # not simply the first ones
    assert (a.mean(0) - U.mean(0)).abs().max() > 1e-3             # plain dropping moves the mean


def test_grow_keeps_mean_draws_in_span_with_the_ensemble_spread():
    U = ensemble(J=30, P=200)
    V = grow_ensemble(U, 2030, torch.Generator().manual_seed(1))
    assert V.shape == (2030, 200)
    torch.testing.assert_close(V.double().mean(0), U.double().mean(0), atol=1e-5, rtol=0)
    shift = V[:30] - U
    assert (shift - shift[0]).abs().max() < 1e-5                  # old members kept (common shift)
    # new members lie in mean + span(U - mean): the residual of a least-squares fit is zero
    A = (U - U.mean(0)).double()
    new = V[30:].double() - U.double().mean(0)
    coef = torch.linalg.lstsq(A.T, new.T).solution
    assert (A.T @ coef - new.T).abs().max() < 1e-4
    # and they have the ensemble's spread: the per-parameter variances agree within sampling noise
    ratio = V[30:].var(0) / U.var(0)
    assert 0.85 < float(ratio.mean()) < 1.15


def test_grow_is_deterministic_given_the_generator_and_resize_dispatches():
    U = ensemble()
    a = resize_ensemble(U, 50, torch.Generator().manual_seed(7))
    b = resize_ensemble(U, 50, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert resize_ensemble(U, 40, None) is U
    assert resize_ensemble(U, 10, None).shape == (10, 30)
    with pytest.raises(ValueError):
        shrink_ensemble(U, 1)
    with pytest.raises(ValueError):
        shrink_ensemble(U, 10, "worst")


# -- the schedule: a scripted sequence of test errors through the decision points ----------------
class FakeMethod:
    def __init__(self, J):
        self.ensemble_size = J
        self.calls = []

    def resize(self, J, shrink):
        self.calls.append((J, shrink))
        self.ensemble_size = J


class FakeBatches:
    def __init__(self, total=938):
        self.total = total  # D_s / m: 60000 / 64 rounded up


def acfg(**kw):
    """The typed ``optimizer.adaptive`` section (Enum members for the choices)."""
    base = dict(rule="printed", tau=500, shrink="keep_mean", budget="epoch", use_initial_error=False, **PAPER)
    base.update(kw)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AdaptiveConfig), base))


def drive(sched, errors, J=5000, r=8):
    """Feed (iteration, error) pairs to the schedule with a loop state that follows the
    iterations (r switching to r_next at batch boundaries), as train_ensemble does."""
    method = FakeMethod(J)
    st = LoopState(r=r, budget=sched.total * r)
    out = []
    for it, err in errors:
        while st.iteration < it:           # advance the loop state to iteration `it`
            st.iteration += 1
            st.rep += 1
            if st.rep >= st.r and st.iteration < it:
                st.batch, st.rep = st.batch + 1, 0
                if st.r_next:
                    st.r, st.r_next = st.r_next, 0
        rows = {row["metric"]: row["value"] for row in sched.on_eval(it, err, st, method)}
        out.append((it, rows["adaptive_decision"], rows["adaptive_ensemble_size"],
                    rows["adaptive_repetitions"], rows["adaptive_budget"]))
        if st.rep >= st.r:
            st.batch, st.rep = st.batch + 1, 0
            if st.r_next:
                st.r, st.r_next = st.r_next, 0
    return out, method


def test_schedule_sequence_shrink_hold_bounds_grow():
    errors = [(0, 90.0), (500, 6.11), (1000, 5.5), (1500, 5.0), (2000, 5.2), (2500, 4.9), (3000, 4.8),
              (3500, 4.7), (4000, 12.0), (4500, 4.0)]
    got, method = drive(AdaptiveSchedule(acfg(), FakeBatches()), errors)
    actions = [g[1] for g in got]
    assert actions == [HOLD,    # iteration 0: the untrained error is not t_0
                       HOLD,    # 500: first decision point, no t_{n-1} yet
                       SHRINK, SHRINK,   # 1000, 1500: gains 0.61, 0.5 <= kappa, below epsilon
                       HOLD,    # 2000: worse than before
                       SHRINK, SHRINK,   # 2500, 3000: small gains again; J reaches b_l = 1000
                       HOLD,    # 3500: J at b_l, no further shrink
                       HOLD,    # 4000: 12 % is above epsilon
                       GROW]    # 4500: 4.0 < 12 by 8 points > kappa
    assert [g[2] for g in got] == [5000, 5000, 4000, 3000, 3000, 2000, 1000, 1000, 1000, 2000]
    assert [g[3] for g in got] == [8, 8, 7, 6, 6, 5, 4, 4, 4, 5]
    assert method.calls == [(4000, "keep_mean"), (3000, "keep_mean"), (2000, "keep_mean"),
                            (1000, "keep_mean"), (2000, "keep_mean")]
    assert got[-1][4] > 4500  # the sequence stays inside the (shrinking) budget
    # budget: 1000 = batch 124 complete at r = 8; then every batch at the new r
    assert got[2][4] == 1000 + 813 * 7
    assert got[1][4] == 938 * 8  # unchanged before the first change


def test_schedule_uses_initial_error_when_asked():
    got, _ = drive(AdaptiveSchedule(acfg(use_initial_error=True), FakeBatches()), [(0, 90.0), (500, 6.11)])
    assert got[1][1:4] == (GROW, 6000, 9)   # 84 points better than the untrained ensemble


def test_schedule_r_never_below_one():
    errors = [(0, 90.0)] + [(500 * k, 9.0 - 0.1 * k) for k in range(1, 12)]
    got, _ = drive(AdaptiveSchedule(acfg(b_l=2, v=100), FakeBatches(3000)), errors)
    assert [g[3] for g in got] == [8, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1]
    assert [g[2] for g in got] == [5000, 5000, 4900, 4800, 4700, 4600, 4500, 4400, 4300, 4200, 4100, 4000]


def test_schedule_literal_budget_can_end_the_run():
    errors = [(0, 90.0)] + [(500 * k, 9.0 - 0.1 * k) for k in range(1, 8)]
    got, _ = drive(AdaptiveSchedule(acfg(b_l=2, v=100, budget="literal"), FakeBatches()), errors)
    budgets = [g[4] for g in got]
    assert budgets[:3] == [938 * 8, 938 * 8, 938 * 7]   # literal N = D_s / m * r
    assert budgets[5] == 938 * 4                        # 3752 >= 2500 iterations done
    assert budgets[6] == 3000                           # 938 * 3 = 2814 is behind: stop now
    assert got[7][1] == HOLD and budgets[7] == 3000     # after the end: no more decisions


def test_schedule_state_roundtrip():
    a = AdaptiveSchedule(acfg(), FakeBatches())
    drive(a, [(0, 90.0), (500, 6.0)])
    b = AdaptiveSchedule(acfg(), FakeBatches())
    b.load_state_dict(a.state_dict())
    assert b.prev == 6.0


# -- in the real training loop (tiny EnKF on synthetic data, scripted test errors) ----------------
def tiny_spec(root, out, extra=()):
    overrides = [f"dataset.root={root}", f"out_dir={out}", "scale=smoke", "progress=false",
                 "optimizer.ensemble_size=12", "optimizer.repetitions=3", "train.max_batches=8",
                 "train.eval_every=3", "optimizer.adaptive.enabled=true", "optimizer.adaptive.tau=3",
                 "optimizer.adaptive.v=4", "optimizer.adaptive.b_l=4", "optimizer.adaptive.b_u=16",
                 "checkpoint_every=2", "optimizer.adaptive.rule=printed", *extra]
    cfg = compose_run(overrides)
    return RunSpec("none", None, "adaptive", 0, cfg, tuple(overrides))


@pytest.fixture
def scripted_errors(monkeypatch):
    """Replace the test-error computation by a script: the k-th evaluation returns errors[k]."""
    def install(errors):
        calls = iter(errors)
        monkeypatch.setattr(ModelSpec, "evaluate", lambda *a, **k: (next(calls), 0.0))

    return install


SCRIPT = [90.0, 8.0, 7.5, 7.2, 3.0, 3.1, 3.05, 3.0, 2.9, 2.8]  # evaluations at 0, 3, 6, ...


def test_loop_applies_decisions(synthetic_root, tmp_path, scripted_errors):
    scripted_errors(SCRIPT)
    spec = tiny_spec(synthetic_root, tmp_path)
    assert run_one(spec)["status"] == "finished"
    df = RunFolder(spec.dir).rows()
    wide = df.pivot_table(index="iteration", columns="metric", values="value")
    # 3: first point; 6: 7.5 vs 8 shrink J 12->8, r 3->2; 9: 7.2 vs 7.5 shrink J->4, r->1;
    # 12: 3.0 vs 7.2 grow J->8, r->2; 15: worse, hold; 18: 3.05 < 3.1 shrink J->4, r->1 ...
    assert wide.index.tolist() == [0, 3, 6, 9, 12, 15, 16]
    assert wide["adaptive_decision"].tolist() == [0, 0, -1, -1, 1, 0, 0]
    assert wide["adaptive_ensemble_size"].tolist() == [12, 12, 8, 4, 8, 8, 8]
    assert wide["adaptive_repetitions"].tolist() == [3, 3, 2, 1, 2, 2, 2]
    # N: 6 + 6 batches * 2; at 9 (mid-batch) 9 + 1 + 4 * 1; at 12: 12 + 2 batches * 2
    assert wide["adaptive_budget"].tolist() == [24, 24, 18, 14, 16, 16, 16]
    # the EnKF really ran with the new sizes: the J logged at an evaluation is the one before it
    assert wide["ensemble_size"].tolist() == [12, 12, 12, 8, 4, 8, 8]
    # every batch presented once at the r in force for it: the run ends when the batches do,
    # after 16 iterations instead of the fixed run's 8 * 3 = 24
    last = df.iloc[-1]
    assert pd.read_json(spec.dir / "done.json", typ="series")["batches"] == 8
    assert last["metric"] == "adaptive_decision"


def test_loop_resume_after_interrupt_equals_uninterrupted(synthetic_root, tmp_path, scripted_errors,
                                                          monkeypatch):
    scripted_errors(SCRIPT)
    ref = tiny_spec(synthetic_root, tmp_path / "a")
    run_one(ref)
    # interrupted after iteration 10 (after two shrinks, r_next pending), then resumed
    scripted_errors(SCRIPT)
    spec = tiny_spec(synthetic_root, tmp_path / "b")
    original = RunWriter.stop_if_requested
    state = {"n": 0}

    def stop_at_10(self, fn):
        state["n"] += 1
        if state["n"] == 10:
            self.stop_requested = True
        return original(self, fn)

    monkeypatch.setattr(RunWriter, "stop_if_requested", stop_at_10)
    from enkf_repro.errors import Interrupted

    with pytest.raises(Interrupted):
        run_one(spec)
    monkeypatch.setattr(RunWriter, "stop_if_requested", original)
    ckpt = torch.load(spec.dir / "checkpoint.pt", weights_only=False)["state"]
    assert ckpt["method"]["U"].shape[0] == 4                     # the shrunk ensemble is saved
    assert ckpt["loop"]["iteration"] == 10 and ckpt["loop"]["r"] == 1
    assert ckpt["schedule"] == {"prev": 7.2}                      # t_{n-1}
    done = RunFolder(spec.dir).rows()
    n_evals = int((done["metric"] == "adaptive_decision").sum())   # evaluations before the stop
    scripted_errors(SCRIPT[n_evals:])
    assert run_one(spec)["status"] == "finished"
    a = RunFolder(ref.dir).rows().drop(columns="elapsed_s")
    b = RunFolder(spec.dir).rows().drop(columns="elapsed_s")
    pd.testing.assert_frame_equal(a, b)


def test_config_checks(synthetic_root, tmp_path):
    with pytest.raises(ConfigError, match="optimizer.adaptive.tau"):
        tiny_spec(synthetic_root, tmp_path, ["optimizer.adaptive.tau=4"])
    with pytest.raises(ConfigError, match="optimizer.adaptive.epsilon"):
        tiny_spec(synthetic_root, tmp_path, ["optimizer.adaptive.epsilon=0"])
    with pytest.raises(ConfigError, match="optimizer.adaptive.b_l"):
        tiny_spec(synthetic_root, tmp_path, ["optimizer.adaptive.b_l=20"])



# -- the rule the paper ran (rule=as_run) ----------------------------------------------------------
def test_printed_and_as_run_rules_on_the_papers_first_gain():
    """6.11 -> 5.0 (a 1.11-point gain, > kappa): the printed pseudo-code GROWS J and r; the rule
    the paper ran lowers r and keeps J (the gain is too large to drop members)."""
    assert decide(5.0, 6.11, 5000, 8, **PAPER) == Decision(GROW, 6000, 9)
    assert decide_as_run(5.0, 6.11, 5000, 8, r_max=8, **PAPER) == Decision(SHRINK, 5000, 7)


def test_as_run_decision_sequence():
    seq = [(5.0, 6.11), (4.5, 5.0), (4.5, 4.5), (4.7, 4.5), (7.0, 4.7), (12.0, 7.0), (3.0, 12.0)]
    J, r, out = 5000, 8, []
    for t, prev in seq:
        d = decide_as_run(t, prev, J, r, r_max=8, **PAPER)
        J, r = d.ensemble_size, d.repetitions
        out.append(tuple(vars(d).values()))
    assert out == [(SHRINK, 5000, 7),   # large gain: r down, J kept
                   (SHRINK, 4000, 6),   # gain 0.5 <= kappa: J and r down
                   (SHRINK, 3000, 5),   # no change counts as "not worse"
                   (GROW, 3000, 6),     # 0.2 points worse (<= kappa): r up, J kept
                   (GROW, 4000, 7),     # 2.3 points worse: J and r up
                   (HOLD, 4000, 7),     # above epsilon: hold
                   (SHRINK, 4000, 6)]   # back below epsilon and better by 9 points: r down, J kept


def test_as_run_rule_ends_the_run_before_the_fixed_one(synthetic_root, tmp_path, scripted_errors):
    """Under the rule the paper ran, t_0 is the untrained error and r sets the budget
    N = D_s / m * r while every batch keeps its r_0 = 3 presentations: r drops at the first
    decision (3), J once a gain is small (6), and the run ends after 8 iterations instead of the
    fixed run's 8 batches x 3 = 24."""
    scripted_errors([90.0, 8.0, 7.5, 7.2, 7.0])
    spec = tiny_spec(synthetic_root, tmp_path, ["optimizer.adaptive.rule=as_run",
                                                "optimizer.adaptive.use_initial_error=null"])
    assert run_one(spec)["status"] == "finished"
    df = RunFolder(spec.dir).rows()
    wide = df.pivot_table(index="iteration", columns="metric", values="value")
    assert wide.index.tolist() == [0, 3, 6, 8]
    assert wide["adaptive_repetitions"].tolist() == [3, 2, 1, 1]      # 90 -> 8: r down, J kept
    assert wide["adaptive_ensemble_size"].tolist() == [12, 12, 8, 8]  # 8 -> 7.5: both down
    assert wide["adaptive_budget"].tolist() == [24, 16, 8, 8]
    done = pd.read_json(spec.dir / "done.json", typ="series")
    assert done["iterations"] == 8 and done["batches"] == 2     # r_0 = 3 presentations per batch


def test_as_run_schedule_gives_figure_10s_shape():
    """The paper's errors at 500-iteration points: r drops by 1 at every decision from 500 on, J
    only once a gain is at most kappa (1500), and N = 938 r ends the epoch near 2800 iterations."""
    errors = [(0, 90.0), (500, 6.11), (1000, 5.0), (1500, 4.5), (2000, 4.2), (2500, 4.0)]
    got, _ = drive(AdaptiveSchedule(acfg(rule="as_run", use_initial_error=None), FakeBatches(), 8), errors)
    assert [g[3] for g in got] == [8, 7, 6, 5, 4, 3]
    assert [g[2] for g in got] == [5000, 5000, 5000, 4000, 3000, 2000]
    assert [g[4] for g in got] == [938 * 8, 938 * 7, 938 * 6, 938 * 5, 938 * 4, 938 * 3]

"""A time budget for long work: ``time_budget=8m`` on ``run`` or ``reproduce``.

When the budget is spent the running run checkpoints at its next iteration and stops, no further
run starts, and the command ends normally (exit 0) saying how many runs are left; rerunning it
continues where it stopped. Under SLURM (``SLURM_JOB_END_TIME`` set by the job) the job's end,
less :data:`SLURM_MARGIN_S` for the checkpoint, is the deadline when no budget is given, so a job
that hits its time limit stops the same way and a requeued or resubmitted job continues.
"""

from __future__ import annotations

import os
import time

from ..config.validate import parse_duration
from ..errors import Interrupted

SLURM_MARGIN_S = 120.0
_deadline: float | None = None   # time.time() at which the budget is spent


class BudgetSpent(Interrupted):
    """The time budget ran out; the run checkpointed. Not a failure: rerun to continue."""

    exit_code = 0


def now() -> float:
    return time.time()


def start(time_budget) -> bool:
    """Start the clock for ``time_budget`` (or the SLURM job's end); a deadline already running
    is kept. True when this call set the deadline (its caller then ends it with :func:`clear`)."""
    global _deadline
    if _deadline is not None:
        return False
    if time_budget not in (None, ""):
        _deadline = now() + parse_duration(time_budget, "time_budget")
    elif os.environ.get("SLURM_JOB_END_TIME", "").isdigit():
        _deadline = float(os.environ["SLURM_JOB_END_TIME"]) - SLURM_MARGIN_S
    return _deadline is not None


def clear() -> None:
    global _deadline
    _deadline = None


def expired() -> bool:
    return _deadline is not None and now() >= _deadline


def left() -> float | None:
    return None if _deadline is None else max(0.0, _deadline - now())

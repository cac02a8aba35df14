"""Training loop shared by the ensemble methods (EnKF and the related derivative-free methods).

The loop (reference.md): mini-batches of ``train.batch_size`` in a fixed order (``train.shuffle``
reshuffles each epoch with a seed-derived permutation), each presented ``r`` times
(``optimizer.repetitions``; r EnKF iterations per batch, the forward pass recomputed each time,
so outputs and labels always belong to the same batch), and the test error of the ensemble-mean
network every ``train.eval_every`` iterations. A method is a small object with
``step(x, y_onehot) -> dict`` and ``eval_params() -> {suffix: theta}``; the loop owns data order,
evaluation, logging, checkpoints and Algorithm 1's hook (``schedule``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from .data import Data, load_data
from .enkf import enkf_update_, redraw_members
from .ensemble import EnsembleForward, resolve_device
from .errors import DivergenceError
from .models import ModelSpec, _name, build_model
from .rundir import RunDir, progress_bar


class EnsembleMethod(Protocol):
    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]: ...
    def eval_params(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EnKF:
    """``optimizer=enkf``: the paper's EnKF (enkf.py) on an ensemble drawn from the init prior.

    Non-finite members (NaN/Inf outputs, e.g. after an overflow) follow ``optimizer.nonfinite``:
    ``redraw`` (default) leaves them out of the statistics, updates the others, then redraws them
    from the Gaussian with the updated members' mean and covariance, counting them in the
    ``nonfinite_members`` metric; ``fail`` stops the run. Fewer than 2 finite members stop it too.
    """

    def __init__(self, cfg, model: ModelSpec, forward: EnsembleForward, generator: torch.Generator,
                 device: torch.device):
        opt = cfg.optimizer
        self.gamma = float(opt.gamma)
        self.mode = _name(opt.update_mode)
        self.policy = _name(opt.nonfinite)
        self.forward = forward
        self.generator = generator
        self.U = model.init(int(opt.ensemble_size), cfg.init, generator, device)
        self.nonfinite_total = 0

    @property
    def ensemble_size(self) -> int:
        return self.U.shape[0]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        G = self.forward(self.U, x)
        bad = ~torch.isfinite(G).flatten(1).all(1) | ~torch.isfinite(self.U).all(1)
        nbad = int(bad.sum())
        if nbad == 0:
            misfit = 0.5 * float(((G - y) ** 2).sum((1, 2)).mean()) / x.shape[0]
            enkf_update_(self.U, G, y, self.gamma, self.mode)
            return {"train_misfit": misfit}
        if self.policy == "fail":
            raise DivergenceError(f"{nbad} of {self.ensemble_size} members have non-finite outputs "
                                  f"(optimizer.nonfinite=fail)")
        good = ~bad
        if int(good.sum()) < 2:
            raise DivergenceError(f"{nbad} of {self.ensemble_size} members have non-finite outputs; "
                                  f"the ensemble diverged")
        Ug = enkf_update_(self.U[good], G[good], y, self.gamma, self.mode)
        self.U[good] = Ug
        redraw_members(self.U, bad, self.generator)
        self.nonfinite_total += nbad
        misfit = 0.5 * float(((G[good] - y) ** 2).sum((1, 2)).mean()) / x.shape[0]
        return {"train_misfit": misfit, "nonfinite_step": nbad}

    def eval_params(self) -> dict[str, torch.Tensor]:
        return {"": self.U.mean(0)}

    def resize(self, ensemble_size: int, shrink: str = "keep_mean") -> None:
        """Change J (Algorithm 1): drop or add members with the run's generator (adaptive.py)."""
        from .adaptive import resize_ensemble

        self.U = resize_ensemble(self.U, int(ensemble_size), self.generator, shrink)

    def diagnostics(self) -> dict[str, float]:
        return {"ensemble_spread": float(self.U.std(0).mean()), "nonfinite_members": self.nonfinite_total,
                "ensemble_size": self.ensemble_size}

    def state_dict(self) -> dict[str, Any]:
        return {"U": self.U, "nonfinite_total": self.nonfinite_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.U = state["U"].to(self.U.device)
        self.nonfinite_total = int(state["nonfinite_total"])


# optimizer name -> constructor(cfg, model, forward, generator, device)
METHODS: dict[str, Callable[..., EnsembleMethod]] = {"enkf": EnKF}

# The seeds' related methods (related-methods.md): EKI / MEKI / (R), never-look-back, thesis IEnK.
from .eki import EKI  # noqa: E402
from .haber import Haber  # noqa: E402
from .ienk import IEnKSimple  # noqa: E402

METHODS.update({"eki": EKI, "haber": Haber, "ienk_simple": IEnKSimple})


@torch.no_grad()
def test_error(model: ModelSpec, theta: torch.Tensor, data: Data, batch_size: int = 2000) -> float:
    """Test error in percent of the network with parameters theta on the (device-resident) test set."""
    wrong = 0
    for s in range(0, data.test_x.shape[0], batch_size):
        logits = model.forward(theta.float(), data.test_x[s: s + batch_size])
        wrong += int((logits.argmax(1) != data.test_y[s: s + batch_size]).sum())
    return 100.0 * wrong / data.test_x.shape[0]


@dataclass
class LoopState:
    iteration: int = 0   # EnKF iterations done
    batch: int = 0       # index in the run's stream of batches (over epochs)
    rep: int = 0         # presentations of the current batch done
    r: int = 1           # presentations per batch (Algorithm 1 may change it between batches)
    budget: int = 0      # total iterations (Algorithm 1 may change it)
    r_next: int = 0      # r for the batches after the current one (0: unchanged)


class Batches:
    """The run's stream of mini-batches: ``epochs`` passes over the first ``max_batches`` batches,
    in order, or in a per-epoch permutation derived from (seed, epoch) when shuffling, so a resumed
    run sees exactly the batches an uninterrupted one would."""

    def __init__(self, data: Data, tcfg, seed: int, shuffle_default: bool = False):
        self.data = data
        self.B = int(tcfg.batch_size)
        n = data.train_x.shape[0]
        if self.B > n:
            from .errors import ConfigError

            raise ConfigError("train.batch_size", self.B, f"at most the training set size {n}")
        per_epoch = math.ceil(n / self.B)
        if tcfg.max_batches is not None:
            per_epoch = min(per_epoch, int(tcfg.max_batches))
        self.per_epoch = per_epoch
        self.n_used = min(n, per_epoch * self.B)
        self.total = max(1, math.ceil(float(tcfg.epochs) * per_epoch))
        self.shuffle = shuffle_default if tcfg.shuffle is None else bool(tcfg.shuffle)
        self.seed = int(seed)
        self._perm_epoch, self._perm = -1, None
        self.C = data.num_classes

    def get(self, k: int, onehot: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch k of the stream: images and one-hot targets (or integer labels)."""
        epoch, i = divmod(k, self.per_epoch)
        idx = slice(i * self.B, min((i + 1) * self.B, self.n_used))
        if self.shuffle:
            if self._perm_epoch != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(self.n_used, generator=g).to(self.data.train_x.device)
                self._perm_epoch = epoch
            sel = self._perm[idx]
            x, y = self.data.train_x[sel], self.data.train_y[sel]
        else:
            x, y = self.data.train_x[idx], self.data.train_y[idx]
        return x, (F.one_hot(y, self.C).to(x.dtype) if onehot else y)

    def epoch_of(self, batch_progress: float) -> float:
        """Fraction of epochs done when ``batch_progress`` batches have been fully presented."""
        return batch_progress / self.per_epoch


class FixedSchedule:
    """No adaptation: J, r and the budget stay as configured (Algorithm 1 lives in adaptive.py)."""

    def on_eval(self, iteration: int, error: float, state: LoopState, method) -> list[dict]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_schedule(cfg, batches: Batches):
    opt = cfg.optimizer
    if "adaptive" in opt and opt.adaptive.enabled:
        from .adaptive import AdaptiveSchedule

        return AdaptiveSchedule(opt.adaptive, batches)
    return FixedSchedule()


def train_ensemble(run, rd: RunDir) -> dict[str, Any]:
    """Run one ensemble-method training run described by ``run`` (a RunSpec) into ``rd``."""
    cfg = run.cfg
    device = resolve_device(cfg.device)
    data = load_data(cfg.dataset, device)
    model = build_model(cfg.model)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    forward = EnsembleForward.from_config(model, cfg.ensemble, device)
    name = cfg.optimizer.name
    make_method = METHODS[name]
    if cfg.get("distributed", False):  # this rank's rows of one ensemble over several processes
        from .distributed import distributed_method

        make_method = distributed_method(name)
    method = make_method(cfg, model, forward, generator, device)
    batches = Batches(data, cfg.train, int(cfg.seed))
    r = int(cfg.optimizer.get("repetitions", 1))
    st = LoopState(r=r, budget=batches.total * r)
    schedule = make_schedule(cfg, batches)
    eval_every = int(cfg.train.eval_every)
    eval_bs = int(cfg.train.eval_batch_size)

    if rd.resume_state is not None:
        s = rd.resume_state
        method.load_state_dict(s["method"])
        generator.set_state(s["generator"])
        st = LoopState(**s["loop"])
        schedule.load_state_dict(s["schedule"])

    def state():
        return {"method": method.state_dict(), "generator": generator.get_state(), "loop": asdict(st),
                "schedule": schedule.state_dict()}

    def evaluate(last_step: dict[str, float]) -> None:
        epoch = batches.epoch_of(st.batch + st.rep / st.r)
        rows = []
        for suffix, theta in method.eval_params().items():
            err = test_error(model, theta, data, eval_bs)
            if not math.isfinite(err):
                raise DivergenceError("test error is not finite")
            rows.append({"metric": "test_error" + (f"_{suffix}" if suffix else ""), "value": err})
        diag = dict(last_step)
        diag.pop("nonfinite_step", None)
        diag.update(method.diagnostics() if hasattr(method, "diagnostics") else {})
        rows += [{"metric": k, "value": v} for k, v in diag.items()]
        main_err = rows[0]["value"]
        rows += schedule.on_eval(st.iteration, main_err, st, method)
        rd.log({"iteration": st.iteration, "epoch": epoch, "elapsed_s": round(rd.elapsed(), 3), **row}
               for row in rows)

    if st.iteration == 0 and rd.resume_state is None:
        evaluate({})
    bar = progress_bar(st.budget, st.iteration, run.label, bool(cfg.progress))
    last: dict[str, float] = {}
    try:
        with rd.signals():
            while st.iteration < st.budget and st.batch < batches.total:
                x, y = batches.get(st.batch)
                while st.rep < st.r and st.iteration < st.budget:
                    last = method.step(x, y)
                    st.iteration += 1
                    st.rep += 1
                    if "nonfinite_step" in last:
                        rd.log([{"iteration": st.iteration, "epoch": batches.epoch_of(st.batch + st.rep / st.r),
                                 "metric": "nonfinite_step", "value": last["nonfinite_step"],
                                 "elapsed_s": round(rd.elapsed(), 3)}])
                    at_end = st.iteration >= st.budget or (st.batch + 1 >= batches.total and st.rep >= st.r)
                    if st.iteration % eval_every == 0 or at_end:
                        evaluate(last)
                        bar.total = st.budget
                    if st.rep >= st.r:
                        st.batch, st.rep = st.batch + 1, 0
                        if st.r_next:
                            st.r, st.r_next = st.r_next, 0
                    bar.update(1)
                    if rd.due(st.iteration):
                        rd.checkpoint(state())
                    rd.stop_if_requested(state)
                    if st.rep == 0:
                        break
    finally:
        bar.close()
    return {"iterations": st.iteration, "batches": st.batch, "device": str(device)}

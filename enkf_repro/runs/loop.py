"""The one training loop, for every method (ensemble methods, single-network ones, backprop).

The loop (the paper's protocol, docs/paper.md): mini-batches of ``train.batch_size`` from the
run's batch stream (a fixed order for the ensemble methods, a per-epoch reshuffle for backprop,
``train.shuffle`` to choose), each presented ``method.repetitions`` times (the EnKF's r; the
forward pass is recomputed each time, so outputs and labels always belong to the same batch),
``method.on_epoch_end()`` after the step that completes an epoch, and every ``train.eval_every``
iterations and at the end an evaluation of each network the method names (the ensemble mean, a
best member, the trained network): test error and loss on the device-resident test set, plus
the method's diagnostics. The loop owns the data order, the evaluation, the CSV rows, the
checkpoints (method state, generator, data position, Algorithm 1's state) and resuming; a method
only steps. A method that says it is ``finished`` (the data-misfit controller at its terminal
time) ends the run cleanly: the loop evaluates at that iteration and stops before its budget,
and the summary (done.json) says why. At the end the evaluated networks' flat parameters are
written to ``params.pt`` (``{"params": {suffix: theta}, "iteration": n}``), the trained networks.

``train_run`` builds the data and the model from the config, or takes them ready-made (``data``,
``model``): tensors and an ``nn.Module`` given to :func:`enkf_repro.train`, whose identity the
config carries as fingerprints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config.schema import name_of
from ..data.batches import Batches
from ..data.datasets import Data, load_data, subset_test
from ..errors import ConfigError, DivergenceError
from ..models.base import ModelSpec
from ..models.ensemble import EnsembleForward, resolve_device
from ..models.registry import build_model
from ..optim.base import make_method
from ..optim.distributed_enkf import DistributedEnKF
from .comm import Comm, LocalComm
from .cost import describe
from .folder import RunFolder, RunWriter
from .progress import progress


@dataclass
class LoopState:
    iteration: int = 0   # method steps done
    batch: int = 0       # index in the run's stream of batches (over epochs)
    rep: int = 0         # presentations of the current batch done
    r: int = 1           # presentations per batch (Algorithm 1 may change it between batches)
    budget: int = 0      # total iterations (Algorithm 1 may change it)
    r_next: int = 0      # r for the batches after the current one (0: unchanged)


def build_method(cfg, model, device: torch.device, generator: torch.Generator, comm: Comm | None = None):
    """The method object of ``cfg.optimizer``, built from its typed config and context
    (``optim.base.make_method``); its rows of the ensemble under ``distributed=true``."""
    forward = EnsembleForward.from_config(model, cfg.ensemble, device)
    if cfg.distributed:
        return make_method(cfg, model, forward, generator, device, DistributedEnKF, comm=comm)
    return make_method(cfg, model, forward, generator, device)


def _scalar(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def final_state_of(out_dir, run_id: str) -> dict[str, Any]:
    """What the finished run ``run_id`` under ``out_dir`` exported of its method's final state
    (``optimizer.state_from``: a backprop run starting from another run's optimizer state)."""
    folder = RunFolder.finished_with_id(out_dir, run_id)
    if folder is None or not folder.has_params():
        raise ConfigError("optimizer.state_from", run_id, f"the id of a finished run under {out_dir} (the run whose "
                          "final optimizer state this one starts from; run it first)")
    return dict(folder.params().get("state") or {})


def check_outputs(model: ModelSpec, data: Data) -> None:
    """One line when a (custom) network does not map images to one logit per class."""
    x = data.train_x[:2]
    try:
        with torch.no_grad():
            out = model.forward(torch.zeros(model.num_params, device=x.device), x)
    except Exception as e:   # a module that cannot run on these images
        raise ConfigError.line(f"model {model.name}: its forward fails on images of shape {tuple(x.shape)}: "
                               f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                               ) from None
    want = (x.shape[0], data.num_classes)
    if tuple(out.shape) != want:
        raise ConfigError.line(f"model {model.name}: outputs of shape {tuple(out.shape)} for {x.shape[0]} images "
                               f"of shape {tuple(x.shape[1:])}; expected {want}, one logit per class "
                               f"({data.num_classes} classes)")


def train_run(cfg, rd: RunWriter, label: str = "", comm: Comm | None = None, *, data: Data | None = None,
              model: ModelSpec | None = None) -> dict[str, Any]:
    """Train the run ``cfg`` into the run folder ``rd`` (resuming from its checkpoint if any);
    ``data`` and ``model`` replace what ``cfg.dataset`` and ``cfg.model`` would load or build."""
    comm = comm if comm is not None else LocalComm()
    device = resolve_device(cfg.device)
    if comm.world > 1 and device.type == "cuda":
        device = comm.device
    data = load_data(cfg.dataset, device) if data is None else subset_test(data, cfg.dataset).to(device)
    model = build_model(cfg.model) if model is None else model
    if name_of(cfg.model.name) == "custom":
        check_outputs(model, data)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    method = build_method(cfg, model, device, generator, comm)
    shuffle_default = bool(getattr(method, "shuffle_default", False))
    batches = Batches(data, cfg.train, int(cfg.seed), shuffle_default=shuffle_default)
    method.attach(batches)
    st = LoopState(r=method.repetitions, budget=batches.total * method.repetitions)
    schedule = method.schedule(batches)
    eval_every = int(cfg.train.eval_every or batches.per_epoch * method.repetitions)   # null: once per epoch
    eval_bs = int(cfg.train.eval_batch_size)

    if rd.resume_state is not None:
        s = rd.resume_state
        method.load_state_dict(s["method"])
        generator.set_state(s["generator"])
        st = LoopState(**s["loop"])
        schedule.load_state_dict(s["schedule"])
    elif cfg.optimizer.get("state_from"):
        method.import_state(final_state_of(cfg.out_dir, str(cfg.optimizer.state_from)))

    def state() -> dict[str, Any]:
        return {"method": method.state_dict(), "generator": generator.get_state(), "loop": asdict(st),
                "schedule": schedule.state_dict()}

    def progress_at() -> float:
        return st.batch + st.rep / st.r

    def log(rows) -> None:
        head = {"iteration": st.iteration, "epoch": batches.epoch_of(progress_at()),
                "pass": batches.pass_of(progress_at()), "elapsed_s": round(rd.elapsed(), 3)}
        rd.log({**head, **row} for row in rows)

    evaluated: dict[str, Any] = {}   # the networks of the last evaluation and its iteration

    def evaluate(last_step: dict[str, Any]) -> None:
        rows = []
        evaluated.update(iteration=st.iteration, params=method.eval_params())
        for suffix, theta in evaluated["params"].items():
            err, loss = model.evaluate(theta, data.test_x, data.test_y, eval_bs)
            if not math.isfinite(err):
                raise DivergenceError("test error is not finite")
            tail = f"_{suffix}" if suffix else ""
            rows += [{"metric": "test_error" + tail, "value": err}, {"metric": "test_loss" + tail, "value": loss}]
        diag = {k: _scalar(v) for k, v in last_step.items() if k != "nonfinite_step"}
        diag.update(method.diagnostics())
        rows += [{"metric": k, "value": v} for k, v in diag.items()]
        rows += schedule.on_eval(st.iteration, rows[0]["value"], st, method)
        log(rows)

    if st.iteration == 0 and rd.resume_state is None:
        evaluate({})
    bar = progress(st.budget, st.iteration, label, bool(cfg.progress) and comm.rank == 0)
    last: dict[str, Any] = {}
    try:
        with rd.signals():
            while st.iteration < st.budget and st.batch < batches.total and not method.finished:
                x, y = batches.get(st.batch)
                while st.rep < st.r and st.iteration < st.budget:
                    last = method.step(x, y)
                    st.iteration += 1
                    st.rep += 1
                    if st.rep >= st.r and (st.batch + 1) % batches.per_epoch == 0:
                        method.on_epoch_end()       # this step completed an epoch
                    if last.get("nonfinite_step"):
                        log([{"metric": "nonfinite_step", "value": last["nonfinite_step"]}])
                    finished = method.finished
                    at_end = (finished or st.iteration >= st.budget
                              or (st.batch + 1 >= batches.total and st.rep >= st.r))
                    if st.iteration % eval_every == 0 or at_end:
                        evaluate(last)
                        bar.total = st.budget
                    extra = method.rows(st.iteration, batches.epoch_of(progress_at()))
                    if extra:
                        rd.log({"elapsed_s": round(rd.elapsed(), 3), **row} for row in extra)
                    if st.rep >= st.r:
                        st.batch, st.rep = st.batch + 1, 0
                        if st.r_next:
                            st.r, st.r_next = st.r_next, 0
                    bar.update(1)
                    if finished:
                        break
                    if rd.due(st.iteration):
                        rd.checkpoint(state())
                    rd.stop_if_requested(state)
                    if st.rep == 0:
                        break
        # the networks just evaluated (EKI's best member costs a forward of the ensemble to find)
        params = evaluated["params"] if evaluated.get("iteration") == st.iteration else method.eval_params()
        rd.save_params(params, st.iteration, method.export_state())
    finally:
        bar.close()
        method.close()
    summary = {"iterations": st.iteration, "batches": st.batch, "device": str(device),
               "machine": f"{describe(device)}, torch {torch.__version__}", "method": name_of(cfg.optimizer.name)}
    if method.finished:
        summary["stopped_early"] = method.finish_reason
    return summary

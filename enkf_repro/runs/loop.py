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

The method is stepped through :class:`~enkf_repro.optim.process.EnsembleKalmanProcess`, the step
object library users drive themselves (``proc.step(x, y)``: the targets whitened by a noise
covariance, ``noise=``); the loop keeps everything around it. ``task=regression``: the targets
are real values (no one-hot), ``test_error`` is the RMSE of the evaluated network's observables
and ``test_loss`` their mean squared error. At the last evaluation of a classification run of an
ensemble method the whole ensemble is scored too (``ensemble_nll``, ``ensemble_ece`` in %,
``optim/predictive.py``), and the final ensemble is kept in ``ensemble.pt`` (``keep_ensemble``).
``ensemble_from`` starts the ensemble from a saved one. ``threads`` sets torch's CPU threads for
the run; ``logger`` streams the rows and each step's scalars to live loggers (``runs/loggers.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.schema import name_of
from ..data.batches import Batches
from ..data.datasets import Data, load_data, subset_test
from ..errors import ConfigError, DivergenceError
from ..models.base import ModelSpec
from ..models.ensemble import resolve_device
from ..models.registry import build_model
from ..optim.base import EnsembleMethod
from ..optim.distributed_enkf import DistributedEnKF
from ..optim.predictive import ensemble_class_scores, network_regression_scores
from ..optim.process import EnsembleKalmanProcess
from .comm import Comm, LocalComm
from .cost import describe
from .folder import ENSEMBLE, RunFolder, RunWriter, save_atomic
from .loggers import Loggers, RunInfo, open_loggers
from .progress import progress

KEEP_ENSEMBLE_BYTES = 256 << 20   # keep_ensemble=null keeps an ensemble up to this size


@dataclass
class LoopState:
    iteration: int = 0   # method steps done
    batch: int = 0       # index in the run's stream of batches (over epochs)
    rep: int = 0         # presentations of the current batch done
    r: int = 1           # presentations per batch (Algorithm 1 may change it between batches)
    budget: int = 0      # total iterations (Algorithm 1 may change it)
    r_next: int = 0      # r for the batches after the current one (0: unchanged)


def build_process(cfg, model, device: torch.device, generator: torch.Generator,
                  comm: Comm | None = None) -> EnsembleKalmanProcess:
    """The step object of ``cfg.optimizer`` (its method built from its typed config and context,
    ``optim.base.make_method``; its rows of the ensemble under ``distributed=true``)."""
    if cfg.distributed:
        return EnsembleKalmanProcess.from_config(cfg, model, device, generator, DistributedEnKF, comm=comm)
    return EnsembleKalmanProcess.from_config(cfg, model, device, generator)


def build_method(cfg, model, device: torch.device, generator: torch.Generator, comm: Comm | None = None):
    """The method object of ``cfg.optimizer`` (:func:`build_process`'s)."""
    return build_process(cfg, model, device, generator, comm).method


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_threads(cfg) -> int:
    """``threads``: the setting, else ``$OMP_NUM_THREADS`` when set, else :func:`available_cores`."""
    if cfg.get("threads") is not None:
        n = int(cfg.threads)
        if n < 1:
            raise ConfigError("threads", n, "an integer >= 1, or null for the cores available to this process")
        return n
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) >= 1 else available_cores()


def load_ensemble(out_dir, source: str) -> torch.Tensor:
    """The ensemble (J, P) that ``ensemble_from`` names: a run id under ``out_dir`` or the path of a
    run folder or of its ensemble.pt."""
    path = Path(os.path.expanduser(str(source)))
    if not path.exists():
        folder = RunFolder.finished_with_id(out_dir, str(source))
        path = folder.path if folder is not None else path
    if path.is_dir():
        path = path / ENSEMBLE
    if not path.is_file():
        raise ConfigError("ensemble_from", source, f"a finished run's id under {out_dir}, or the path of a run folder "
                          "holding an ensemble.pt or of the file (run an ensemble method with keep_ensemble)")
    try:
        U = torch.load(path, map_location="cpu", weights_only=True)["ensemble"]
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same error
        raise ConfigError("ensemble_from", source, f"a readable ensemble.pt ({type(e).__name__})") from None
    return U


def _scalar(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def final_state_of(out_dir, run_id: str) -> dict[str, Any]:
    """What the finished run ``run_id`` under ``out_dir`` exported of its method's final state
    (``optimizer.state_from``: a backprop run starting from another run's optimizer state)."""
    folder = RunFolder.finished_with_id(out_dir, run_id)
    if folder is None:
        raise ConfigError("optimizer.state_from", run_id, f"the id of a finished run under {out_dir} (the run whose "
                          "final optimizer state this one starts from; run it first)")
    if not folder.has_params():
        raise ConfigError.line(f"optimizer.state_from={run_id}: the run {folder.path} is finished but keeps no final "
                               "state (its params file is missing; committed results leave it out): train it again "
                               "with its command and restart=true, then rerun this one")
    return dict(folder.params().get("state") or {})


def check_outputs(model: ModelSpec, data: Data, regression: bool = False) -> None:
    """One line when a (custom) network does not map images to one logit per class (or, with
    ``regression``, to one value per target column)."""
    x = data.train_x[:2]
    try:
        with torch.no_grad():
            out = model.forward(torch.zeros(model.num_params, device=x.device), x)
    except Exception as e:   # a module that cannot run on these images
        raise ConfigError.line(f"model {model.name}: its forward fails on images of shape {tuple(x.shape)}: "
                               f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                               ) from None
    want = (x.shape[0], data.num_classes)
    if regression:
        want = (x.shape[0],) + tuple(data.train_y.shape[1:])
        if tuple(out.shape) != want:
            raise ConfigError.line(f"model {model.name}: outputs (observables) of shape {tuple(out.shape)} for "
                                   f"{x.shape[0]} inputs; expected {want}, one value per target column")
        return
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
    regression = name_of(cfg.get("task", "classification")) == "regression"
    if name_of(cfg.model.name) == "custom":
        check_outputs(model, data, regression)
    threads = torch.get_num_threads()
    torch.set_num_threads(run_threads(cfg))
    try:
        return _train(cfg, rd, label, comm, data, model, device, regression)
    finally:
        torch.set_num_threads(threads)


def _train(cfg, rd: RunWriter, label: str, comm: Comm, data: Data, model: ModelSpec, device: torch.device,
           regression: bool) -> dict[str, Any]:
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    proc = build_process(cfg, model, device, generator, comm)   # the step object users drive too
    method = proc.method
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
    else:
        if cfg.optimizer.get("state_from"):
            method.import_state(final_state_of(cfg.out_dir, str(cfg.optimizer.state_from)))
        if cfg.get("ensemble_from"):
            U = load_ensemble(cfg.out_dir, str(cfg.ensemble_from))
            J = cfg.optimizer.get("ensemble_size")
            if isinstance(method, EnsembleMethod) and U.shape[0] != J:
                raise ConfigError("ensemble_from", str(cfg.ensemble_from), f"an ensemble of optimizer.ensemble_size = "
                                  f"{J} members (it holds {U.shape[0]}: set optimizer.ensemble_size={U.shape[0]})")
            proc.ensemble = U

    def state() -> dict[str, Any]:
        return {"method": method.state_dict(), "generator": generator.get_state(), "loop": asdict(st),
                "schedule": schedule.state_dict()}

    def progress_at() -> float:
        return st.batch + st.rep / st.r

    keeps = isinstance(method, EnsembleMethod)   # a persistent ensemble: scored and kept at the end
    loggers = Loggers([])
    if comm.rank == 0:
        loggers = open_loggers(cfg, RunInfo(rd.path.name, rd.path, rd.folder.flat_config(), start=st.iteration))
    bar = progress(st.budget, st.iteration, label, bool(cfg.progress) and comm.rank == 0)

    def log(rows) -> None:
        head = {"iteration": st.iteration, "epoch": batches.epoch_of(progress_at()),
                "pass": batches.pass_of(progress_at()), "elapsed_s": round(rd.elapsed(), 3)}
        rows = list(rows)
        rd.log({**head, **row} for row in rows)
        if loggers:
            loggers.rows(st.iteration, rows)

    evaluated: dict[str, Any] = {}   # the networks of the last evaluation and its iteration

    def evaluate(last_step: dict[str, Any], final: bool = False) -> None:
        rows = []
        evaluated.update(iteration=st.iteration, params=method.eval_params())
        for suffix, theta in evaluated["params"].items():
            if regression:
                err, loss = network_regression_scores(model.forward, theta, data.test_x, data.test_y, eval_bs)
            else:
                err, loss = model.evaluate(theta, data.test_x, data.test_y, eval_bs)
            if not math.isfinite(err):
                raise DivergenceError("test error is not finite")
            tail = f"_{suffix}" if suffix else ""
            rows += [{"metric": "test_error" + tail, "value": err}, {"metric": "test_loss" + tail, "value": loss}]
        bar.note("test RMSE" if regression else "test error", rows[0]["value"], "" if regression else "%")
        if final and keeps and not regression:
            U = proc.ensemble                # the whole ensemble (gathered to rank 0 when distributed)
            if U is not None:
                scores = ensemble_class_scores(proc.network_forward, U, data.test_x, data.test_y)
                rows += [{"metric": k, "value": v} for k, v in scores.items()]
        diag = {k: _scalar(v) for k, v in last_step.items() if k != "nonfinite_step"}
        diag.update(method.diagnostics())
        rows += [{"metric": k, "value": v} for k, v in diag.items()]
        rows += schedule.on_eval(st.iteration, rows[0]["value"], st, method)
        log(rows)

    last: dict[str, Any] = {}
    try:
        if st.iteration == 0 and rd.resume_state is None:
            evaluate({})
        with rd.signals():
            while st.iteration < st.budget and st.batch < batches.total and not method.finished:
                x, y = batches.get(st.batch, onehot=not regression)
                while st.rep < st.r and st.iteration < st.budget:
                    last = proc.step(x, y)
                    st.iteration += 1
                    st.rep += 1
                    if st.rep >= st.r and (st.batch + 1) % batches.per_epoch == 0:
                        method.on_epoch_end()       # this step completed an epoch
                    if last.get("nonfinite_step"):
                        log([{"metric": "nonfinite_step", "value": last["nonfinite_step"]}])
                    misfit = last.get("train_misfit", last.get("train_loss"))
                    if misfit is not None:
                        bar.note("misfit" if "train_misfit" in last else "loss", misfit)
                    finished = method.finished
                    at_end = (finished or st.iteration >= st.budget
                              or (st.batch + 1 >= batches.total and st.rep >= st.r))
                    if st.iteration % eval_every == 0 or at_end:
                        evaluate(last, final=at_end)       # its rows carry this step's scalars
                        bar.total = st.budget
                    elif loggers:
                        loggers.log(st.iteration, last)
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
        if keeps:
            U = proc.ensemble
            keep = cfg.get("keep_ensemble")
            if U is not None and comm.rank == 0 and (keep or (keep is None and U.numel() * U.element_size()
                                                              <= KEEP_ENSEMBLE_BYTES)):
                save_atomic({"ensemble": U.detach().to("cpu").clone(), "iteration": st.iteration}, rd.path / ENSEMBLE)
    finally:
        bar.close()
        loggers.close()
        method.close()
    summary = {"iterations": st.iteration, "batches": st.batch, "device": str(device),
               "machine": f"{describe(device)}, torch {torch.__version__}", "method": name_of(cfg.optimizer.name)}
    if method.finished:
        summary["stopped_early"] = method.finish_reason
    return summary

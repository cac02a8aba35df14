"""Running one ensemble over several processes (``torchrun ... distributed=true``).

Launch (one process per GPU, or per CPU socket; the same across nodes with ``--nnodes``)::

    torchrun --nproc_per_node=N -m enkf_repro run figure=8 distributed=true

or let a submitit job's tasks be the ranks (SLURM: ``hydra/launcher=slurm
hydra.launcher.tasks_per_node=N``; one machine: ``hydra/launcher=submitit_local``).
Under torchrun every rank runs the figure's runs in the same order, each run over all ranks.

Checkpoints. At ``checkpoint_every`` (and on SIGINT/SIGTERM, agreed by all ranks) the rows are
gathered to rank 0, which writes the usual single ``checkpoint.pt`` holding the whole ensemble:
the same file a single process writes. A rerun with any number of ranks (1 included, with or
without ``distributed=true``) resumes from it: rank 0 reads it and broadcasts it. Only rank 0
touches the run folder (lock, config.yaml, metrics.csv, checkpoint.pt, done.json), so for
several nodes only rank 0's node needs ``out_dir``; every node needs the dataset.

Not supported with ``distributed=true``: methods other than ``optimizer=enkf``, and Algorithm 1
(``optimizer.adaptive.enabled``), which resizes the ensemble; both are refused at start-up.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from ..errors import ConfigError, EnkfReproError
from ..models.ensemble import resolve_device
from ..optim.distributed_enkf import DISTRIBUTED_METHODS
from .comm import Comm
from .folder import RunBusy

_COMM: Comm | None = None


def _in_submitit_job() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ


def _export_submitit_env() -> None:
    """In a job started by submitit (``hydra/launcher=slurm`` or ``submitit_local``, with
    ``tasks_per_node`` or ``nodes`` > 1 giving the ranks) and not under torchrun: set RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the job (submitit's helper)."""
    if "WORLD_SIZE" in os.environ or not _in_submitit_job():
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def launcher_world_size() -> int | None:
    """Number of processes of the launch (torchrun's WORLD_SIZE, or the tasks of a submitit job);
    None when the process was not started by such a launcher."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if _in_submitit_job():
        import submitit

        return int(submitit.JobEnvironment().num_tasks)
    return None


def setup(cfg) -> Comm:
    """Join the process group of the launch (once per process) and return its Comm. NCCL when
    the ensemble lives on CUDA (one GPU per local rank), gloo on CPU."""
    global _COMM
    if _COMM is not None:
        return _COMM
    _export_submitit_env()
    if launcher_world_size() is None:
        raise ConfigError("distributed", True, "a launch that sets RANK and WORLD_SIZE: `torchrun "
                          "--nproc_per_node=N -m enkf_repro run ... distributed=true`, a submitit job with "
                          "tasks_per_node=N (hydra/launcher=slurm), or distributed=false")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        n = torch.cuda.device_count()
        if local >= n:
            raise ConfigError("device", "cuda", f"one GPU per process: local rank {local} but {n} GPUs visible")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_shutdown)
    _COMM = Comm(device)
    return _COMM


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def validate_distributed(cfg) -> None:
    """Settings that cannot run over several processes (checked before any run starts)."""
    opt = cfg.optimizer
    if opt.name not in DISTRIBUTED_METHODS:
        raise ConfigError("optimizer", opt.name, f"{' or '.join(DISTRIBUTED_METHODS)} with distributed=true "
                          f"(or distributed=false)")
    if "adaptive" in opt and opt.adaptive.enabled:
        raise ConfigError("optimizer.adaptive.enabled", True, "false with distributed=true (Algorithm 1 "
                          "resizes the ensemble, which is not supported across ranks)")
    infl = opt.get("inflation")
    if infl is not None and (infl.multiplicative is not None or infl.additive is not None):
        raise ConfigError("optimizer.inflation", "on", "off (multiplicative=null, additive=null) with "
                          "distributed=true (inflation is applied by one process)")
    if opt.get("eval_last_member", False):
        raise ConfigError("optimizer.eval_last_member", True, "false with distributed=true (the last member "
                          "lives on the last rank; evaluate the ensemble mean)")
    world = launcher_world_size()
    if world is not None and opt.ensemble_size < world:
        raise ConfigError("optimizer.ensemble_size", opt.ensemble_size,
                          f"at least the number of processes ({world}) with distributed=true")


def without_ensemble(state: dict | None) -> dict | None:
    """A resume state for the other ranks: everything but the ensemble (broadcast separately)."""
    if state is None:
        return None
    out = dict(state)
    out["method"] = {**state["method"], "U": None}
    return out


def raise_shared(err: tuple[str, str, int] | None) -> None:
    """Raise, on every rank, the error rank 0 met opening the run folder (name, message, exit code)."""
    if err is None:
        return
    name, msg, code = err
    exc = RunBusy(msg) if name == "RunBusy" else EnkfReproError(msg)
    exc.exit_code = code
    raise exc

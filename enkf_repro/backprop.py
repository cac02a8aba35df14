"""Backprop baselines (``optimizer=sgd|adam``): cross-entropy, shuffled mini-batches.

Every run starts from a freshly initialised network (weights ~ N(0, init.sigma^2), as the
EnKF ensemble members) and a fresh optimizer: the published script let optimizer state carry
over between configurations, which this does not copy. The loop logs the test error every
``train.eval_every`` optimizer steps and at the end, checkpoints through the RunDir, and
resumes exactly (model, optimizer state, step, data order).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .data import load_data
from .ensemble import resolve_device
from .models import build_model
from .rundir import RunDir, progress_bar
from .train import Batches


def make_optimizer(ocfg, params) -> torch.optim.Optimizer:
    """A new optimizer for ``cfg.optimizer`` (never reused across runs)."""
    if ocfg.name == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.momentum, nesterov=ocfg.nesterov,
                               weight_decay=ocfg.weight_decay)
    if ocfg.name == "adam":
        return torch.optim.Adam(params, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2),
                                weight_decay=ocfg.weight_decay)
    raise ValueError(f"not a backprop optimizer: {ocfg.name}")


@torch.no_grad()
def evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(test error in %, mean cross-entropy) of ``net`` on (x, y)."""
    wrong, loss = 0, 0.0
    for s in range(0, x.shape[0], batch_size):
        logits = net(x[s: s + batch_size])
        wrong += int((logits.argmax(1) != y[s: s + batch_size]).sum())
        loss += float(F.cross_entropy(logits, y[s: s + batch_size], reduction="sum"))
    return 100.0 * wrong / x.shape[0], loss / x.shape[0]


def train_backprop(run, rd: RunDir) -> dict[str, Any]:
    cfg = run.cfg
    device = resolve_device(cfg.device)
    data = load_data(cfg.dataset, device)
    spec = build_model(cfg.model)
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    net = spec.module().to(device)
    torch.nn.utils.vector_to_parameters(spec.init(1, cfg.init, generator, device)[0], net.parameters())
    opt = make_optimizer(cfg.optimizer, net.parameters())
    batches = Batches(data, cfg.train, int(cfg.seed), shuffle_default=True)
    total = batches.total
    step = 0
    if rd.resume_state is not None:
        s = rd.resume_state
        net.load_state_dict(s["net"])
        opt.load_state_dict(s["opt"])
        generator.set_state(s["generator"])
        step = int(s["step"])
    eval_every = int(cfg.train.eval_every)
    eval_bs = int(cfg.train.eval_batch_size)

    def state():
        return {"net": net.state_dict(), "opt": opt.state_dict(), "generator": generator.get_state(), "step": step}

    def log_eval(train_loss: float | None) -> None:
        net.eval()
        err, loss = evaluate(net, data.test_x, data.test_y, eval_bs)
        net.train()
        rows = [{"metric": "test_error", "value": err}, {"metric": "test_loss", "value": loss}]
        if train_loss is not None:
            rows.append({"metric": "train_loss", "value": train_loss})
        rd.log({"iteration": step, "epoch": step / batches.per_epoch, "elapsed_s": round(rd.elapsed(), 3), **r}
               for r in rows)

    if step == 0 and rd.resume_state is None:
        log_eval(None)
    bar = progress_bar(total, step, run.label, bool(cfg.progress))
    net.train()
    try:
        with rd.signals():
            while step < total:
                x, y = batches.get(step, onehot=False)
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
                if step % eval_every == 0 or step == total:
                    log_eval(loss.item())
                if rd.due(step):
                    rd.checkpoint(state())
                rd.stop_if_requested(state)
    finally:
        bar.close()
    return {"steps": step, "device": str(device)}

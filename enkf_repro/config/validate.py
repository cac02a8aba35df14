"""Value ranges that types alone cannot express: one :class:`~enkf_repro.errors.ConfigError`
(one line naming the key, the value and what is allowed) for the first bad value.

The ranges of an optimizer's own keys are declared by its config class (``optim/<method>.py``, a
``MethodConfig``): the keys in its ``positive`` must be > 0, and its ``check(cfg)`` checks the
rest; both are applied here to the selected optimizer.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig

from ..errors import ConfigError
from .schema import method_config


def check(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise ConfigError(key, value, allowed) unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed)


def validate(cfg: DictConfig) -> None:
    """Check value ranges; raise ConfigError on the first bad one."""
    opt = method_config(cfg.optimizer)
    for key in opt.positive:
        value = getattr(opt, key)
        check(value > 0, f"optimizer.{key}", value, "a number > 0")
    opt.check(cfg)
    t = cfg.train
    check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    check(t.epochs > 0, "train.epochs", t.epochs, "a number > 0")
    check(t.max_batches is None or t.max_batches >= 1, "train.max_batches", t.max_batches,
          "an integer >= 1, or null for the whole training set")
    check(t.eval_every is None or t.eval_every >= 1, "train.eval_every", t.eval_every,
          "an integer >= 1, or null for once per epoch")
    check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "an integer >= 1")
    ts = cfg.dataset.test_size
    check(ts is None or ts >= 1, "dataset.test_size", ts, "an integer >= 1, or null for the whole test set")
    n = cfg.dataset.test_only_train_size
    check(n >= 1, "dataset.test_only_train_size", n,
          "an integer >= 1 (and below the number of images; the loader checks that)")
    check(cfg.init.sigma > 0, "init.sigma", cfg.init.sigma, "a number > 0")
    bs = cfg.init.bias_sigma
    check(bs is None or bs >= 0, "init.bias_sigma", bs, "a number >= 0, or null for the std of the layer's weights")
    cs = cfg.ensemble.chunk_size
    check(cs is None or cs >= 1, "ensemble.chunk_size", cs, "an integer >= 1, or null for automatic")
    up = str(getattr(cfg.ensemble.update_precision, "value", cfg.ensemble.update_precision))
    check(up in ("fp32", "tf32"), "ensemble.update_precision", up, "fp32 or tf32 (the update's GEMMs)")
    he = cfg.instrument.hist_every
    check(he is None or he >= 1, "instrument.hist_every", he, "an integer >= 1, or null for automatic")
    ie = list(cfg.instrument.iteration_epochs)
    check(all(e >= 0 for e in ie), "instrument.iteration_epochs", ie, "a list of epoch numbers >= 0 (0: the first)")
    check(cfg.checkpoint_every >= 1, "checkpoint_every", cfg.checkpoint_every, "an integer >= 1")
    if cfg.get("time_budget") not in (None, ""):
        parse_duration(cfg.time_budget)


def parse_duration(text, key: str = "time_budget") -> float:
    """Seconds of ``90``, ``90s``, ``8m``, ``2h``, ``1h30m``, ``1.5h``; ConfigError otherwise."""
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ConfigError(key, text, "a duration such as 90s, 8m, 2h or 1h30m")
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)

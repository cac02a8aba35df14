"""A run's identity: the settings that change the numbers it produces.

Two configs with the same :func:`config_hash` produce the same numbers (on the same device), so
a finished run is recognised from its config alone and a changed config never overwrites it. The
device, chunk size, output folder, progress display and the like are not part of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from enum import Enum
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from .nested import flatten
from .schema import METHOD_SECTIONS, OPTIMIZER_SCHEMAS, MethodConfig

# Keys that do not change the numbers a run produces: excluded from the run's identity.
NON_SEMANTIC = {"device", "out_dir", "restart", "checkpoint_every", "progress", "only", "figure", "scale",
                "distributed", "overrides", "time_budget", "keep_ensemble", "threads", "logger", "logger_dir"}
NON_SEMANTIC_NESTED = {"dataset": {"root", "download"},
                       "ensemble": {"chunk_size", "compile", "kernel"}}
# Settings added after runs were made, at the value that reproduces the earlier numbers exactly:
# left out of the identity while they hold that value, so earlier runs keep their ids (a finished
# run is still recognised). Dropping a key only at one fixed value never makes two different
# configs equal. Per section: dataset / model keys here; an optimizer's are declared by its config
# class (``MethodConfig.neutral``).
NEUTRAL = {
    "dataset": {"fingerprint": None},
    "model": {"target": None, "kwargs": {}, "fingerprint": None},
}
# Top-level settings added later, at the value that reproduces the earlier runs.
NEUTRAL_TOP = {"task": "classification", "noise": None, "ensemble_from": None}


def _drop_neutral(node: dict, neutral: Mapping) -> dict:
    return {k: v for k, v in node.items() if not (k in neutral and v == neutral[k])}


def _plain(value: Any) -> Any:
    """A declared neutral value as the plain Python of a resolved config (a dataclass instance
    as the dict of its fields, Enum members as their values)."""
    if dataclasses.is_dataclass(value):
        return OmegaConf.to_container(OmegaConf.structured(value), enum_to_str=True)
    return value.value if isinstance(value, Enum) else value


def method_schema(optimizer: Any) -> type[MethodConfig] | None:
    """The registered config class of a plain optimizer section (None for a method this package
    does not have, e.g. a removed one: its configs are then taken as they are)."""
    if not OPTIMIZER_SCHEMAS:
        raise RuntimeError("no method is registered: import enkf_repro.optim before computing run identities")
    return OPTIMIZER_SCHEMAS.get(optimizer.get("name")) if isinstance(optimizer, Mapping) else None


def to_plain(cfg: DictConfig) -> dict:
    """Resolved config as plain Python (enums as their string values)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def semantic_config(cfg: DictConfig | Mapping) -> dict:
    """The part of ``cfg`` that changes a run's numbers, as plain Python."""
    plain = to_plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    out = _drop_neutral({k: v for k, v in plain.items() if k not in NON_SEMANTIC}, NEUTRAL_TOP)
    schema = method_schema(out.get("optimizer"))
    reads = schema.reads if schema is not None else ()
    for key in METHOD_SECTIONS:            # read only by some methods: part of those methods' identity
        if key not in reads:
            out.pop(key, None)
    for key, drop in NON_SEMANTIC_NESTED.items():
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k not in drop}
    for key, neutral in NEUTRAL.items():
        if isinstance(out.get(key), dict):
            out[key] = _drop_neutral(out[key], neutral)
    if schema is not None and schema.neutral:
        out["optimizer"] = _drop_neutral(out["optimizer"], {k: _plain(v) for k, v in schema.neutral.items()})
    return out


def config_hash(cfg: DictConfig | Mapping) -> str:
    """12 hex digits identifying the run's numbers-relevant configuration."""
    blob = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def changed_settings(cfg: DictConfig | Mapping, base: DictConfig | Mapping) -> dict:
    """{dotted key: value} of the settings of ``cfg`` that change its numbers and differ from
    ``base`` (the defaults of the same group choices): what a sweep varied, in the CSV and in
    the names of single runs. The seed is left out (it has its own column)."""
    a, b = flatten(semantic_config(cfg)), flatten(semantic_config(base))
    return {k: v for k, v in a.items() if k != "seed" and (k not in b or b[k] != v)}


SHORT = {"optimizer.ensemble_size": "J", "optimizer.repetitions": "r", "init.sigma": "sigma"}


def short_name(changes: Mapping) -> str:
    """``{"optimizer.gamma": 0.001, "optimizer.ensemble_size": 100}`` -> ``J100-gamma0.001``."""
    parts = []
    for key in sorted(changes, key=lambda k: (k not in SHORT, k)):
        v = changes[key]
        name = SHORT.get(key, key.rsplit(".", 1)[-1])
        if isinstance(v, bool):
            parts.append(name if v else f"no_{name}")
        elif isinstance(v, float):
            parts.append(f"{name}{v:g}")
        elif isinstance(v, (list, tuple)):
            parts.append(f"{name}{'x'.join(str(x) for x in v) or 'none'}")
        else:
            parts.append(f"{name}{v}")
    return "-".join(parts)

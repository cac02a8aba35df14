"""A run config from ``configs/`` and overrides, composed by Hydra's compose API:
``compose(["figure=fig8", "seed=3"])``.

The config tree is Hydra's (``configs/config.yaml`` with the groups ``dataset``, ``model``,
``optimizer``, ``scale`` and ``figure``; ``enkf-repro run`` is a Hydra app) and the structured
schemas are registered with Hydra's ConfigStore: the run config of ``config/schema.py``, each
method's config (``optimizer/<name>_schema``, registered by its module in ``optim/``) and each
figure's settings (``figure_settings/<config>``, registered by its module in ``experiments/``).
Each distinct list of overrides is composed once per process (Hydra takes about 0.1 s); callers
get their own copy. A figure's runs are its composed config with each variant's values merged
on (``runs/runner.py``), so a figure costs one composition per group choice of its variants.

Errors are one line naming the key or option, with the closest valid names ("did you mean ...").
"""

from __future__ import annotations

import contextlib
import copy
import functools
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .overrides import config_dir, did_you_mean, format_value, group_options, is_hydra_override, parse_overrides
from .schema import FIGURE_SETTINGS, OPTIMIZER_SCHEMAS, Config

GROUPS = ("dataset", "model", "optimizer", "scale", "figure")


_REGISTERED: set[tuple[str, str]] = set()


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore: each once per process (a schema registered
    later, by a module imported later, is added at the next call)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    entries = [("", "config_schema", Config)]
    entries += [("optimizer", f"{name}_schema", schema) for name, schema in OPTIMIZER_SCHEMAS.items()]
    entries += [("figure_settings", name, settings) for name, settings in FIGURE_SETTINGS.items()]
    for group, name, node in entries:
        if (group, name) not in _REGISTERED:
            cs.store(group=group or None, name=name, node=node)
            _REGISTERED.add((group, name))


@contextlib.contextmanager
def hydra_context():
    """Make ``hydra.compose`` usable (inside ``@hydra.main`` it already is)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config for ``overrides`` (group choices and values, Hydra's grammar; ``hydra.*``
    ones are the launcher's and left out), validated for types and names but not ranges
    (``validate``). ``cfg.overrides`` records them. Sweep syntax (``a=1,2``) is for
    ``enkf-repro run -m``; here it is an error."""
    return _compose(tuple(o for o in overrides if not is_hydra_override(o))).copy()   # copy(): nested nodes too


@functools.lru_cache(maxsize=256)
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    for ov, text in zip(parse_overrides(overrides), overrides):
        if ov.is_sweep_override():
            raise ConfigError(ov.key_or_group, text.split("=", 1)[1],
                              "one value here (sweeps need `enkf-repro run -m`)")
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException

    try:
        with hydra_context():
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise explain(e, overrides) from None
    cfg.overrides = list(overrides)
    return cfg


# -- one line out of Hydra's errors ----------------------------------------------------------------
def explain(e: BaseException, overrides: Sequence[str]) -> ConfigError:
    """The first override Hydra could not apply, as one ConfigError line: an unknown option of a
    group, an unknown key (with the keys of its section), a wrong type, a key that exists (``+``)."""
    parsed = parse_overrides(overrides)
    for i, (ov, text) in enumerate(zip(parsed, overrides)):
        key = ov.key_or_group
        value = text.split("=", 1)[1] if "=" in text else None
        if key in GROUPS and not ov.is_delete():
            options = group_options(key)
            if value not in (None, "null") and value not in options:
                shown = [o[3:] if key == "figure" and o[3:].isdigit() else o for o in options]
                return ConfigError(key, value, did_you_mean(value, options) + "one of " + ", ".join(shown))
            continue
        if ov.is_delete():
            continue
        value = ov.value()
        try:   # the config without this override and the ones after it: is the key there?
            before = _compose(tuple(overrides[:i]) + tuple(o for o, p in zip(overrides[i + 1:], parsed[i + 1:])
                                                           if p.key_or_group in GROUPS))
        except ConfigError:
            continue
        node: Any = before
        done: list[str] = []
        for part in key.split("."):
            if not isinstance(node, DictConfig):
                break
            if part not in node:
                if ov.is_add() or ov.is_force_add():
                    break
                keys = [str(k) for k in node.keys()]
                where = ".".join(done) or "the config"
                return ConfigError(key, value, f"{where} has no key {part!r}; {did_you_mean(part, keys)}its keys: "
                                   + ", ".join(keys[:40]))
            node = node._get_node(part)
            done.append(part)
        else:
            if ov.is_add():
                return ConfigError(key, value, f"a new key (+{key} adds one; {key} exists: use {key}=...)")
        if isinstance(node, DictConfig) and isinstance(value, dict) and not (ov.is_add() or ov.is_force_add()):
            new = [k for k in value if k not in node]
            if new:   # Hydra refuses new keys here (struct mode): say how to add them
                k = new[0]
                return ConfigError(key, value, f"a dict of existing keys; {key} has no key {k!r}: add keys with "
                                   f"+{key}.{k}={format_value(value[k])} (or replace the whole dict with ++{key}=...)")
        if _fails(before, text):
            return ConfigError(key, value, f"a valid value ({_reason(e)})")
    return ConfigError.line(hydra_error_line(e))


def _fails(cfg: DictConfig, override: str) -> bool:
    """Whether Hydra's composition of ``cfg`` plus ``override`` fails (checked on a copy)."""
    try:
        ov = parse_overrides([override])[0]
        trial = copy.deepcopy(cfg)
        OmegaConf.update(trial, ov.key_or_group, ov.value(), merge=True, force_add=ov.is_force_add())
    except (OmegaConfBaseException, ValueError, TypeError):
        return True
    return False


def _reason(e: BaseException) -> str:
    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, OmegaConfBaseException):
            return str(getattr(cur, "msg", "") or cur).strip().splitlines()[0]
        cur = cur.__cause__
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def hydra_error_line(e: BaseException) -> str:
    """One line out of a Hydra / OmegaConf error."""
    parts = []
    cur: BaseException | None = e
    while cur is not None and len(parts) < 3:
        if isinstance(cur, OmegaConfBaseException) and getattr(cur, "full_key", None):
            msg = str(getattr(cur, "msg", "") or cur).splitlines()[0]
            parts.append(f"{cur.full_key}: {msg}")
        else:
            line = str(cur).strip().splitlines()[0] if str(cur).strip() else type(cur).__name__
            parts.append(line)
        cur = cur.__cause__
    return "config error: " + " | ".join(dict.fromkeys(parts))

"""Compose a run config from ``configs/`` and overrides: ``compose(["figure=fig8", "seed=3"])``.

The config tree is Hydra's (``configs/config.yaml`` with the groups ``dataset``, ``model``,
``optimizer``, ``scale`` and ``figure``; ``enkf-repro run`` is a Hydra app), but composing through
Hydra's compose API costs about 80 ms per config, and a figure or a sweep composes dozens. This
module composes the same tree directly with OmegaConf, using only what our configs use:

* ``config.yaml``'s defaults list picks one option per group (``figure`` last);
* a group option file merges into its group's node (``optimizer/sgd.yaml`` into ``optimizer``,
  on top of the registered schema it names in its defaults, ``sgd_schema``), or into the root
  when its first line is ``# @package _global_`` (figure presets, the dense model presets);
* a figure preset's ``- override /<group>: <option>`` entries change the group choices, which
  command-line group overrides (``optimizer=adam``) change again, last;
* value overrides use Hydra's grammar: ``key=value``, ``+key=value`` (new key), ``++key=value``,
  ``~key`` (delete).

``tests/test_config.py`` composes every figure at every scale, and every run of each, both ways
(Hydra's compose API and this) and checks that they are equal. Errors are one line naming the key
or option, with the closest valid names ("did you mean ...").
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .schema import OPTIMIZER_SCHEMAS, Config

GROUPS = ("dataset", "model", "optimizer", "scale", "figure")


def config_dir() -> Path:
    """The folder of configs: packaged in a wheel, or ``configs/`` of a source checkout."""
    pkg = Path(__file__).resolve().parents[1]
    for candidate in (pkg / "configs", pkg.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no configs found next to {pkg} (expected configs/config.yaml)")


# -- reading the config tree -------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _yaml(path: str) -> tuple[str | None, tuple, DictConfig]:
    """(package header, defaults list, body without the defaults list) of one YAML file."""
    text = Path(path).read_text()
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    m = re.match(r"#\s*@package\s+(\S+)", first)
    body = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    defaults = ()
    if "defaults" in body:
        defaults = tuple(OmegaConf.to_container(body.defaults))
        del body["defaults"]
    return (m.group(1) if m else None), defaults, body


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files of ``configs/<group>/`` (fig2 before fig10)."""
    def key(name: str):
        m = re.match(r"^(\D*)(\d+)$", name)
        return (m.group(1), int(m.group(2))) if m else (name, -1)

    return sorted((p.stem for p in (config_dir() / group).glob("*.yaml")), key=key)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=2, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def _option_file(group: str, option: str) -> Path:
    path = config_dir() / group / f"{option}.yaml"
    if not path.is_file():
        options = group_options(group)
        if group == "figure":
            options = [o[3:] if o.startswith("fig") and o[3:].isdigit() else o for o in options]
        raise ConfigError(group, option, did_you_mean(option, options) + "one of " + ", ".join(options))
    return path


@functools.lru_cache(maxsize=1)
def default_choices() -> tuple[tuple[str, str | None], ...]:
    """The group choices of ``config.yaml``'s defaults list, in order."""
    _, defaults, _ = _yaml(str(config_dir() / "config.yaml"))
    out = []
    for entry in defaults:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            if group in GROUPS:   # "override hydra/...": Hydra's own groups
                out.append((group, option))
    return tuple(out)


def _optimizer_node(option: str) -> DictConfig:
    package, defaults, body = _yaml(str(_option_file("optimizer", option)))
    schemas = [d[: -len("_schema")] for d in defaults if isinstance(d, str) and d.endswith("_schema")]
    name = schemas[0] if schemas else option
    if name not in OPTIMIZER_SCHEMAS:
        raise ConfigError("optimizer", option, f"a registered method (configs/optimizer/{option}.yaml names "
                          f"{name}_schema; registered: {', '.join(sorted(OPTIMIZER_SCHEMAS)) or 'none'})")
    node = OmegaConf.structured(OPTIMIZER_SCHEMAS[name])
    return OmegaConf.merge(node, body)


@functools.lru_cache(maxsize=256)
def _base(choices: tuple[tuple[str, str | None], ...]) -> DictConfig:
    """The config of the given group choices, before value overrides (cached; callers copy)."""
    cfg = OmegaConf.structured(Config)
    _, _, self_body = _yaml(str(config_dir() / "config.yaml"))
    body = {k: v for k, v in OmegaConf.to_container(self_body).items() if k != "hydra"}
    cfg.merge_with(body)
    for group, option in choices:
        if option is None:
            continue
        if group == "optimizer":
            cfg.optimizer = _optimizer_node(option)
            continue
        package, _, node = _yaml(str(_option_file(group, option)))
        if package == "_global_":
            cfg.merge_with(node)
        else:
            cfg[group].merge_with(node)
    return cfg


# -- overrides ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_overrides(overrides: Sequence[str]) -> list:
    """Hydra's parse of override strings; a syntax error is one ConfigError line."""
    from hydra.errors import HydraException

    try:
        return _parser().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError.line(f"config error: {str(e).strip().splitlines()[0]}") from None


def override_key(override: str) -> str:
    """The key or group an override sets (``+optimizer.lr=1`` -> ``optimizer.lr``)."""
    return parse_overrides([override])[0].key_or_group


def _set(cfg: DictConfig, ov, text: str) -> None:
    key = ov.key_or_group
    if ov.is_delete():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            raise ConfigError(key, None, "a key that exists (~ deletes one)")
        with open_dict(node):
            del node[leaf]
        return
    value = ov.value()
    if ov.is_add() or ov.is_force_add():
        if ov.is_add() and OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING:
            raise ConfigError(key, value, f"a new key (+{key} adds one; {key} exists: use {key}=...)")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        return
    _check_key(cfg, key, value)
    node = OmegaConf.select(cfg, key)
    if isinstance(value, dict) and isinstance(node, DictConfig):
        new = [k for k in value if k not in node]
        if new:   # Hydra refuses new keys here (struct mode): say how to add them
            k = new[0]
            raise ConfigError(key, value, f"a dict of existing keys; {key} has no key {k!r}: add keys with "
                              f"+{key}.{k}={format_value(value[k])} (or replace the whole dict with ++{key}=...)")
    try:
        OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as e:
        raise ConfigError(key, value, _omegaconf_reason(e)) from None


_MISSING = object()


def _check_key(cfg: DictConfig, key: str, value: Any) -> None:
    """ConfigError naming the first unknown part of a dotted key, with the close valid keys."""
    node: Any = cfg
    done: list[str] = []
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return
        if part not in node:
            keys = [str(k) for k in node.keys()]
            where = ".".join(done) or "the config"
            raise ConfigError(key, value, f"{where} has no key {part!r}; {did_you_mean(part, keys)}its keys: "
                              + ", ".join(keys[:40]))
        node = node._get_node(part)
        done.append(part)


def _omegaconf_reason(e: OmegaConfBaseException) -> str:
    msg = str(getattr(e, "msg", "") or e).strip().splitlines()[0]
    return f"a valid value ({msg})"


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config for ``overrides`` (group choices and values, Hydra's grammar), validated
    for types and names but not ranges (``validate``). ``cfg.overrides`` records them. Sweep
    syntax (``a=1,2``) is for ``enkf-repro run -m``; here it is an error."""
    return copy.deepcopy(_compose(tuple(overrides)))


@functools.lru_cache(maxsize=512)
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    parsed = parse_overrides([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
    texts = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    choices = dict(default_choices())
    cli_groups: dict[str, str | None] = {}
    values = []
    for ov, text in zip(parsed, texts):
        if ov.is_sweep_override():
            raise ConfigError(ov.key_or_group, text.split("=", 1)[1],
                              "one value here (sweeps need `enkf-repro run -m`)")
        if ov.key_or_group in GROUPS and not ov.is_delete():
            option = ov.value()
            cli_groups[ov.key_or_group] = None if option in (None, "null") else str(option)
        else:
            values.append((ov, text))
    figure = cli_groups.get("figure", choices.get("figure"))
    if figure is not None:
        _, defaults, _ = _yaml(str(_option_file("figure", figure)))
        for entry in defaults:
            if isinstance(entry, dict):
                (k, v), = entry.items()
                m = re.match(r"override\s+/?(\w+)", k)
                if m and m.group(1) in choices:
                    choices[m.group(1)] = v
    choices.update(cli_groups)
    for group, option in choices.items():
        if option is not None:
            _option_file(group, option)   # one-line error for an unknown option
    cfg = copy.deepcopy(_base(tuple(choices.items())))
    for ov, text in values:
        _set(cfg, ov, text)
    cfg.overrides = list(overrides)
    return cfg


# -- override strings --------------------------------------------------------------------------
def format_value(v: Any) -> str:
    """A Python value as an override's right-hand side."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    s = str(getattr(v, "value", v))
    if isinstance(v, str) and any(c in s for c in " ,[]{}()='\"\\:"):
        return "'" + s.replace("'", "\\'") + "'"
    return s


def flatten_overrides(node: Any, prefix: str = "") -> list[str]:
    """Nested dict {train: {max_batches: 40}, optimizer: sgd} -> ["train.max_batches=40", "optimizer=sgd"]."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    out: list[str] = []
    for k, v in (node or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out += flatten_overrides(v, key)
        else:
            out.append(f"{key}={format_value(v)}")
    return out


def merge_overrides(base: Iterable[str], user: Iterable[str], drop: Iterable[str] = ()) -> list[str]:
    """``base`` then ``user``, dropping base overrides of keys the user sets (the user wins) and
    user overrides of the keys in ``drop``."""
    drop = set(drop)
    user = [u for u in user if override_key(u) not in drop]
    taken = {override_key(u) for u in user}
    return [b for b in base if override_key(b) not in taken] + user


HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                          "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def split_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides) of a command line."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            flags.append(a)
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is not None and ((a in HYDRA_FLAGS_WITH_VALUE and not nxt.startswith("-") and "=" not in nxt)
                                    or (a in ("--info", "-i") and nxt in INFO_VALUES)):
                flags.append(nxt)
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def figure_option(fig_id: str) -> str:
    """``8`` or ``fig8`` -> ``fig8``; ``eki_table`` -> ``eki_table``; unknown ids fail in one line."""
    v = str(fig_id).strip().strip("'\"")
    for name in (v, f"fig{v}"):
        if (config_dir() / "figure" / f"{name}.yaml").is_file():
            return name
    _option_file("figure", v)   # raises with the valid ids
    raise AssertionError("unreachable")


def normalize_figure_args(args: Sequence[str]) -> list[str]:
    """``figure=8`` -> ``figure=fig8``; ``figure=8,9`` -> ``figure=fig8,fig9`` (Hydra reads 8 as an
    integer, which a config group cannot take); unknown ids fail."""
    out = []
    for a in args:
        m = re.match(r"^(\+{0,2})figure=(.*)$", a)
        if m and not m.group(2).startswith(("choice(", "range(", "glob(")):
            names = [("null" if v.strip() in ("none", "null", "") else figure_option(v))
                     for v in m.group(2).split(",")]
            a = f"{m.group(1)}figure={','.join(names)}"
        out.append(a)
    return out


# -- Hydra ---------------------------------------------------------------------------------------
def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (for the Hydra app; idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        cs.store(group="optimizer", name=f"{name}_schema", node=schema)


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


def hydra_compose(overrides: Sequence[str]) -> DictConfig:
    """The same config through Hydra's compose API (the reference :func:`compose` is tested against)."""
    from hydra import compose as _hydra_compose

    with hydra_context():
        return _hydra_compose(config_name="config", overrides=list(overrides))


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

"""Options by name, as :func:`enkf_repro.train` and :class:`enkf_repro.EnsembleKalmanProcess` take
them: a config key written out (``"optimizer.h0"``), its tail after a dot where one key alone ends
so (``ensemble_size``, ``max_batches``, ``inflation.multiplicative``), or the key with its dots as
underscores (``init_sigma``). A name that is none of these is one ConfigError line: the close
names, the method that has the key when another one does (``h0`` is EKI's), and the options
grouped by section (the method's own, then the run's), nested blocks as ``adaptive.*``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .overrides import did_you_mean
from .schema import OPTIMIZER_SCHEMAS


def leaf_keys(cfg: DictConfig | Mapping, exclude: Iterable[str] = ()) -> list[str]:
    """Every dotted leaf key of ``cfg`` but those in ``exclude`` (a name ending with ``.``
    excludes the whole section)."""
    exclude = tuple(exclude)
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                walk(v, key)
            else:
                out.append(key)

    plain = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg
    walk(plain, "")
    return [k for k in out if not any(k == n.rstrip(".") or k.startswith(n) for n in exclude if n.endswith("."))
            and k not in exclude]


def flatten_options(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``{"inflation": {"multiplicative": 1.01}}`` -> ``[("inflation.multiplicative", 1.01)]``."""
    out: list[tuple[str, Any]] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            out += [(f"{k}.{kk}", vv) for kk, vv in flatten_options(v)]
        else:
            out.append((k, v))
    return out


def _field_names(schema: type, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for f in dataclasses.fields(schema):
        names.add(prefix + f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            names |= _field_names(type(default), prefix + f.name + ".")
    return names


def methods_with_key(key: str) -> list[str]:
    """The methods whose ``optimizer.*`` has ``key`` (``"h0"``, ``"optimizer.h0"``,
    ``"inflation.additive"``), or whose keys end with it."""
    key = key[len("optimizer."):] if key.startswith("optimizer.") else key
    out = []
    for name, schema in sorted(OPTIMIZER_SCHEMAS.items()):
        names = _field_names(schema) - {"name"}
        if key in names or any(n.endswith("." + key) for n in names):
            out.append(name)
    return out


def _display(key: str) -> str:
    """The name an option is shown under: ``optimizer.`` and ``train.`` dropped, a nested block
    as ``block.*`` (``adaptive.*``), the other sections dotted (``init.sigma``)."""
    for head in ("optimizer.", "train."):
        if key.startswith(head):
            rest = key[len(head):]
            return rest.split(".", 1)[0] + ".*" if "." in rest else rest
    return key


def options_text(keys: list[str], method: str) -> str:
    """The options of ``method`` grouped: its own, then the run's (each shown once)."""
    own = list(dict.fromkeys(_display(k) for k in keys if k.startswith("optimizer.")))
    run = list(dict.fromkeys(_display(k) for k in keys if not k.startswith("optimizer.")))
    return (f"options: {', '.join(own) or '(none)'} (method={method!r}'s); {', '.join(run)} (every run's); "
            "nested keys dotted, e.g. 'inflation.multiplicative', 'init.sigma' or init_sigma")


def resolve_option(name: str, keys: list[str], method: str, value: Any = None, where: str = "train") -> str:
    """The dotted config key that the option ``name`` of ``where`` (``train``, or the process)
    names (module docstring); one ConfigError line otherwise."""
    if name in keys:
        return name
    joined = [k for k in keys if k.replace(".", "_") == name]
    if len(joined) == 1:
        return joined[0]
    tail = [k for k in keys if k.endswith("." + name)]
    if len(tail) == 1:
        return tail[0]
    if len(tail) > 1:
        extra = " (init_sigma for init.sigma)" if name == "sigma" else ""
        raise ConfigError(name, value, f"ambiguous for method={method!r}: name one of "
                          + ", ".join(repr(t) for t in tail) + extra)
    shown = [_display(k).replace(".*", "") for k in keys]
    hint = did_you_mean(name, keys if "." in name else sorted(set(shown) | {k.rsplit(".", 1)[-1] for k in keys}))
    owners = [m for m in methods_with_key(name) if m != method]
    belongs = f"it is an option of method={', '.join(repr(o) for o in owners)}; " if owners else ""
    raise ConfigError(name, value, f"{hint}not an option of {where}(method={method!r}); {belongs}"
                      + options_text(keys, method))

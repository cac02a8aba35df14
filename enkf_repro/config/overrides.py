"""Override strings of the command line, read with Hydra's parser: their keys, values written
back as text, the flags of ``enkf-repro run``, and ``figure=8`` mapped to the config ``fig8``."""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ConfigError


def config_dir() -> Path:
    """The folder of configs: packaged in a wheel, or ``configs/`` of a source checkout."""
    pkg = Path(__file__).resolve().parents[1]
    for candidate in (pkg / "configs", pkg.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no configs found next to {pkg} (expected configs/config.yaml)")


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files of ``configs/<group>/`` (fig2 before fig10)."""
    def key(name: str):
        m = re.match(r"^(\D*)(\d+)$", name)
        return (m.group(1), int(m.group(2))) if m else (name, -1)

    return sorted((p.stem for p in (config_dir() / group).glob("*.yaml")), key=key)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=2, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


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


def is_hydra_override(override: str) -> bool:
    """An override of Hydra's own settings (``hydra.run.dir=...``, ``hydra/launcher=joblib``)."""
    return override.lstrip("+~").startswith("hydra")


def format_value(v: Any) -> str:
    """A Python value as an override's right-hand side."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{format_value(x)}" for k, x in v.items()) + "}"
    s = str(getattr(v, "value", v))
    if isinstance(v, str) and any(c in s for c in " ,[]{}()='\"\\:"):
        return "'" + s.replace("'", "\\'") + "'"
    return s


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
    options = [o[3:] if o.startswith("fig") and o[3:].isdigit() else o for o in group_options("figure")]
    raise ConfigError("figure", v, did_you_mean(v, options) + "one of " + ", ".join(options))


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

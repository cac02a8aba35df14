"""Nested mappings and their dotted keys: one flattening and its inverse for the whole package."""

from __future__ import annotations

from typing import Any, Mapping


def flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"gamma": 0.01}, "model": {"kwargs": {}}}`` -> ``{"optimizer.gamma": 0.01,
    "model.kwargs": {}}``: every leaf under its dotted key; an empty mapping is a leaf."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten`: ``{"train.max_batches": 4}`` -> ``{"train": {"max_batches": 4}}``
    (a key that is a mapping merges with the dotted keys below it)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = str(key).split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(nest(flatten(value)))
        else:
            node[leaf] = dict(value) if isinstance(value, Mapping) else value
    return out


def without(node: Mapping, keys: set[str], prefix: str = "") -> dict[str, Any]:
    """``node`` without the dotted ``keys`` (and what lies under them)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if key in keys:
            continue
        out[k] = without(v, keys, key) if isinstance(v, Mapping) else v
    return out

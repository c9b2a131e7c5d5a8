"""The generic layer: plain YAML data to typed, frozen dataclasses, with errors that name the key.

These checks hold once for every param, whatever its section: :func:`_check_tree` (every mapping
key is a string, no YAML alias contains itself) and :func:`_convert` (every value has its field's
annotated type: bool is not an int, a string is not a number, ints fit in 64 bits and floats are
finite, since no param gives NaN or inf a meaning). :func:`_build` makes a dataclass of a
mapping, refusing unknown keys; the ranges are each section's own ``validate``
(:mod:`ouroboros3d.config.sections`, :mod:`ouroboros3d.config.networks`). It knows no section,
so the sections and :class:`~ouroboros3d.config.params.Params` can use it without a cycle.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal

from .errors import _check, _short

__all__ = ["INT_RANGE", "to_plain"]

# every int param must fit in 64 bits (numpy, torch); the seed has its own, tighter range
INT_RANGE = (-(2**63), 2**63)


def _check_tree(value: Any, key: str = "", parents: tuple = ()) -> None:
    """The raw YAML tree, before anything reads it: every mapping key is a string (a name), and
    no YAML alias contains itself (a recursive structure). ``key`` is the dotted path so far."""
    if not isinstance(value, (dict, list)):
        return
    where = key or "params"
    _check(all(value is not p for p in parents), where, "a YAML alias that contains itself")
    parents = (*parents, value)
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_tree(item, f"{key}[{i}]", parents)
        return
    for k, item in value.items():
        _check(isinstance(k, str), where, f"key {_short(k)} is not a name (keys must be strings)")
        _check_tree(item, f"{key}.{k}" if key else k, parents)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` as the annotated type ``tp`` (a dataclass, Optional/union with None, Literal,
    tuple, dict, bool, int, float, str), or a ParamsError naming ``key`` and the value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"must be a mapping, got {_short(value)}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            _check(type(None) in args, key, "must not be null")
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        _check(value in typing.get_args(tp), key, f"must be one of {typing.get_args(tp)}, got {_short(value)}")
        return value
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {_short(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), key, f"must have {len(args)} entries, got {list(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False)))
    if tp is dict:  # free-form (variants): its values are checked where they are used
        _check(isinstance(value, dict), key, f"must be a mapping, got {_short(value)}")
        return to_plain(value)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {_short(value)}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {_short(value)}")
        low, high = INT_RANGE
        _check(low <= value < high, key, f"must fit in 64 bits, got {_short(value)}")
        return int(value)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(ok, key, f"must be a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        _check(math.isfinite(number), key, f"must be a finite number, got {_short(value)}")
        return number
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {_short(value)}")
        return str(value)
    raise TypeError(f"unsupported params type {tp} at {key}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, values: dict, prefix: str) -> Any:
    """``cls`` of the mapping ``values`` found at the dotted key ``prefix``: unknown keys refused,
    every value converted to its field's type. Ranges are not checked here but by ``validate``."""
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    where = f"{prefix}." if prefix else ""
    _check(not unknown, prefix or "params.yaml", f"unknown key(s) {[where + u for u in unknown]}")
    kwargs = {k: _convert(hints[k], v, where + k) for k, v in values.items()}
    return cls(**kwargs)


def _deep_merge(base: dict, override: dict) -> dict:
    """``override`` over a copy of ``base``: mappings merged key by key, anything else replaced (presets, variants)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_plain(value: Any) -> Any:
    """``value`` as plain YAML data: its mappings as dicts, its tuples and lists as lists (the
    leaves as they are). What params.yaml would hold: the resolved params, a free-form block."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value

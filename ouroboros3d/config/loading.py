"""Reading params: params.yaml (its preset applied), a checkpoint's params.json, the resolved params.

:func:`load_params` reads a UTF-8 YAML file and :func:`params_from_dict` its mapping: the top
level, ``presets`` and the preset blocks must be mappings; the block ``presets[preset]`` is
deep-merged over the top-level sections, and the result built (:mod:`ouroboros3d.config.conversion`)
and validated (:meth:`Params.validate <ouroboros3d.config.params.Params.validate>`). The presets
that are not selected are built too, for their types; their ranges are checked once selected.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ruamel.yaml import YAMLError

from .conversion import _build, _check_tree, _deep_merge, to_plain
from .errors import ParamsError, _check, _short
from .params import Params

__all__ = [
    "RESOLVED_PARAMS",
    "load_params",
    "params_from_dict",
    "params_from_resolved",
    "read_yaml",
    "resolved_params",
]

# params.yaml with its preset applied (the resolve_params stage): what every other stage's
# params deps name, so a stage re-runs when a value it reads changes, whichever block set it
RESOLVED_PARAMS = "results/resolved_params.yaml"


def params_from_dict(raw: dict) -> Params:
    """Resolve the preset, build and validate :class:`Params` from a params.yaml mapping."""
    _check(raw is None or isinstance(raw, dict), "params", f"must be a mapping of sections, got a {type(raw).__name__}")
    _check_tree(raw)
    raw = dict(raw or {})
    presets = raw.pop("presets", None)
    _check(presets is None or isinstance(presets, dict), "presets", f"must be a mapping, got {_short(presets)}")
    presets = presets or {}
    for name, block in presets.items():
        _check(
            block is None or isinstance(block, dict),
            f"presets.{name}",
            f"must be a mapping of sections, got {_short(block)}",
        )
    preset = raw.get("preset", "cpu-small")
    _check(isinstance(preset, str), "preset", f"must be a string, got {_short(preset)}")
    _check(preset in presets or preset == "cpu-small", "preset", f"unknown preset {preset!r}; have {sorted(presets)}")
    merged = _deep_merge(raw, presets.get(preset) or {})
    params = _build(Params, merged, "")
    params.validate()
    for name, block in presets.items():
        if name != preset and block:  # the others: types and finiteness now, ranges once selected
            _build(Params, block, f"presets.{name}")
    return params


def read_yaml(text: str) -> Any:
    """Plain Python data from YAML 1.2, the version DVC writes when ``dvc exp run -S`` edits
    params.yaml (YAML 1.1 loaders read its unquoted ``no`` as False)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def load_params(path: str | Path = "params.yaml", preset: str | None = None) -> Params:
    """Read and validate a params file (with ``preset`` in place of its own, if given);
    errors name the file and the offending key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path} is not a params file: not UTF-8 text (byte {e.start})") from None
    try:
        raw = read_yaml(text)
    except YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ParamsError(f"{path} is not valid YAML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if preset is not None and (raw is None or isinstance(raw, dict)):
        raw = dict(raw or {}) | {"preset": preset}
    try:
        return params_from_dict(raw)
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None


def params_from_resolved(raw: dict) -> Params:
    """Rebuild and validate :class:`Params` from ``dataclasses.asdict(params)`` (a checkpoint's params.json).

    That mapping is already preset-resolved and has no ``presets`` block, so the preset is
    not merged again (``params_from_dict`` would reject a non-default preset it cannot find).
    """
    _check(isinstance(raw, dict), "params.json", f"must be a mapping, got {type(raw).__name__}")
    _check_tree(raw)
    # a trained model is one model: the ablation variants of the params it came from are not its
    # own, and a checkpoint must keep loading when the rules for variants change
    params = _build(Params, dict(raw) | {"variants": {}, "train_variants": ()}, "")
    params.validate()
    return params


def resolved_params(params: Params) -> dict:
    """``params`` (preset applied, defaults filled in) as plain YAML data: the resolve_params
    stage's output, whose keys the other stages depend on. It has no ``presets`` block: a preset
    that is not active is not something any stage reads."""
    return to_plain(dataclasses.asdict(params))

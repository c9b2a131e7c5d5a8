"""A trained model on disk for inference: a folder with ``model.safetensors`` and ``params.json``.

What the train stage writes to ``models/<variant>/``. :func:`load_checkpoint` rebuilds the
model the params describe and loads its weights; every failure (missing files, params of
another version, a truncated file, an unavailable device) is a one-line
:class:`~ouroboros3d.errors.GenerationError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Params, ParamsError, params_from_resolved
from .errors import GenerationError, one_line
from .io import load_weights
from .model import Ouroboros3D

__all__ = [
    "DEFAULT_CHECKPOINT",
    "PARAMS_FILE",
    "WEIGHTS_FILE",
    "Checkpoint",
    "load_checkpoint",
    "read_checkpoint_params",
]

DEFAULT_CHECKPOINT = "models/main"
WEIGHTS_FILE = "model.safetensors"
PARAMS_FILE = "params.json"


@dataclass
class Checkpoint:
    """A model built from a checkpoint's params.json with its weights loaded, in eval mode."""

    model: Ouroboros3D
    params: Params
    weights_path: Path
    device: str


def _resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        weights, params_file = path, path.parent / PARAMS_FILE
    else:
        weights, params_file = path / WEIGHTS_FILE, path / PARAMS_FILE
    hint = "train one with `dvc repro`, or pass --checkpoint: a folder with model.safetensors and params.json"
    if not weights.is_file():
        raise GenerationError(f"checkpoint not found: {weights} ({hint})")
    if not params_file.is_file():
        raise GenerationError(f"checkpoint {weights} has no {PARAMS_FILE} beside it ({hint})")
    return weights, params_file


def _check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise GenerationError(f"unknown device {device!r}; use cpu or cuda") from None
    return device


def read_checkpoint_params(checkpoint: str | Path = DEFAULT_CHECKPOINT) -> tuple[Path, Params]:
    """The weights file of a checkpoint and the :class:`Params` rebuilt from the params.json beside it."""
    weights, params_file = _resolve_checkpoint(checkpoint)
    try:
        return weights, params_from_resolved(json.loads(params_file.read_text()))
    except json.JSONDecodeError as e:
        raise GenerationError(f"{params_file} is not valid JSON: {one_line(e)}") from None
    except ParamsError as e:
        raise GenerationError(f"{params_file}: {one_line(e)}") from None


def load_checkpoint(checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu") -> Checkpoint:
    """Build the model a checkpoint's params.json describes and load its weights.

    ``checkpoint`` is a folder holding ``model.safetensors`` and ``params.json`` (what the
    train stage writes to ``models/<variant>/``) or the ``.safetensors`` file itself.
    """
    from .build import build_model

    device = _check_device(device)
    weights, params = read_checkpoint_params(checkpoint)
    params_file = weights.parent / PARAMS_FILE
    try:
        model = build_model(params)
    except Exception as e:  # a missing VAE/SVD folder, an unknown preset...
        raise GenerationError(f"cannot build the model of {params_file}: {one_line(e)}") from None
    try:
        load_weights(model, weights)
    except ValueError as e:
        raise GenerationError(one_line(e)) from None
    except Exception as e:  # a truncated or foreign file
        raise GenerationError(f"cannot read weights {weights}: {one_line(e)}") from None
    return Checkpoint(model.to(device).eval(), params, weights, device)

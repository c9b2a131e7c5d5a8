"""A trained model on disk for inference: the folder :class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline` saves.

What the train stage writes to ``models/<variant>/`` (layout in :mod:`ouroboros3d.inference.pipeline`):
``model_index.json``, ``params.json``, the model card ``README.md`` and one diffusers
subfolder per component. :func:`read_checkpoint_params` reads the params alone (cheap: the
CLI checks a checkpoint before loading it); :func:`load_checkpoint` is
:meth:`Ouroboros3DPipeline.from_pretrained <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.from_pretrained>`.
Every failure (a missing folder or file, params of another version, bad JSON, weights that
do not fit, an unavailable device) is a one-line :class:`~ouroboros3d.errors.GenerationError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import Params, ParamsError, params_from_resolved
from ..errors import GenerationError, one_line

if TYPE_CHECKING:
    from .pipeline import Ouroboros3DPipeline

__all__ = [
    "CARD_FILE",
    "DEFAULT_CHECKPOINT",
    "INDEX_FILE",
    "PARAMS_FILE",
    "check_device",
    "load_checkpoint",
    "read_checkpoint_params",
    "read_json",
]

DEFAULT_CHECKPOINT = "models/main"
INDEX_FILE = "model_index.json"  # diffusers' pipeline index: which class each component folder holds
PARAMS_FILE = "params.json"  # the resolved params the model was trained with
CARD_FILE = "README.md"  # the model card
HINT = (
    "train one with `dvc repro`, or pass --checkpoint: a folder saved by Ouroboros3DPipeline.save_pretrained "
    "(model_index.json, params.json, denoiser/ and reconstructor/ with config.json and "
    "diffusion_pytorch_model.safetensors)"
)


def read_json(path: Path) -> Any:
    """A JSON file's content; a missing file or bad JSON is a one-line GenerationError."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GenerationError(f"checkpoint file not found: {path} ({HINT})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenerationError(f"{path} is not valid JSON: {one_line(e)}") from None


def _model_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise GenerationError(f"checkpoint not found: {folder} is not a folder ({HINT})")
    if not (folder / INDEX_FILE).is_file():
        if (folder / "model.safetensors").is_file():
            raise GenerationError(
                f"checkpoint not found: {folder} holds a model saved in the old single-file layout "
                f"(model.safetensors), which this version does not read; re-run its train stage ({HINT})"
            )
        raise GenerationError(f"checkpoint not found: {folder} has no {INDEX_FILE} ({HINT})")
    if not (folder / PARAMS_FILE).is_file():
        raise GenerationError(f"checkpoint {folder} has no {PARAMS_FILE} ({HINT})")
    return folder


def read_checkpoint_params(checkpoint: str | Path = DEFAULT_CHECKPOINT) -> tuple[Path, Params]:
    """The model folder and the :class:`Params` rebuilt from its params.json (no weights read)."""
    folder = _model_folder(checkpoint)
    params_file = folder / PARAMS_FILE
    try:
        return folder, params_from_resolved(read_json(params_file))
    except ParamsError as e:
        raise GenerationError(f"{params_file}: {one_line(e)}") from None


def check_device(device: str | torch.device) -> str:
    """``device`` as a string, or a GenerationError when it is unknown or unavailable."""
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise GenerationError(f"unknown device {device!r}; use cpu or cuda") from None
    return device


def load_checkpoint(checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu") -> Ouroboros3DPipeline:
    """The model folder ``checkpoint`` loaded on ``device`` in eval mode:
    :meth:`Ouroboros3DPipeline.from_pretrained <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.from_pretrained>`.

    The result's ``model`` is the :class:`~ouroboros3d.model.Ouroboros3D` and ``params`` its params.
    """
    from .pipeline import Ouroboros3DPipeline

    return Ouroboros3DPipeline.from_pretrained(checkpoint, device=device)

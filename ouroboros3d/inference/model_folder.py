"""A trained model on disk: the folder :class:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline` saves,
read and checked.

What the train stage writes to ``models/<variant>/`` (layout in :mod:`ouroboros3d.inference.pipeline`):
``model_index.json``, ``params.json``, the model card ``README.md`` and one diffusers
subfolder per component (:data:`COMPONENTS`). :func:`read_checkpoint_params` reads the params alone
(cheap: the command checks a checkpoint before loading it); the rest are the steps of
:meth:`Ouroboros3DPipeline.from_pretrained <ouroboros3d.inference.pipeline.Ouroboros3DPipeline.from_pretrained>`.
Every failure (a missing folder or file, params of another version, bad JSON, weights that
do not fit or are not finite, an unavailable device) is a one-line :class:`~ouroboros3d.errors.GenerationError`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from ..build import config_differences, denoiser_kwargs, reconstructor_kwargs
from ..config import Params, ParamsError, params_from_resolved
from ..errors import GenerationError, one_line
from ..files import CONFIG_NAME, WEIGHTS_NAME, check_finite
from ..models.denoiser import MultiViewDenoiser
from ..models.reconstructor import Reconstructor

__all__ = [
    "CARD_FILE",
    "COMPONENTS",
    "DEFAULT_CHECKPOINT",
    "INDEX_FILE",
    "PARAMS_FILE",
    "PIPELINE_CLASS",
    "check_device",
    "check_frozen_finite",
    "check_model_folder",
    "load_component",
    "load_vae",
    "read_checkpoint_params",
    "read_json",
]

DEFAULT_CHECKPOINT = "models/main"
INDEX_FILE = "model_index.json"  # diffusers' pipeline index: which class each component folder holds
PARAMS_FILE = "params.json"  # the resolved params the model was trained with
CARD_FILE = "README.md"  # the model card
PIPELINE_CLASS = "Ouroboros3DPipeline"  # the index's _class_name
# the components always saved, by folder name
COMPONENTS: dict[str, type] = {"denoiser": MultiViewDenoiser, "reconstructor": Reconstructor}
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


# --- the parts, checked as they load ---------------------------------------------------------


def check_frozen_finite(folder: Path, parts: dict[str, Any], vae) -> None:
    """The parts loaded from elsewhere (SVD's VAE, the CLIP image encoder) hold finite weights too;
    the saved weights were checked as they were read (:meth:`~ouroboros3d.files.PretrainedMixin.from_pretrained`)."""
    frozen = [
        (f"{name}.{sub} (loaded from {path})", parts[name].get_submodule(sub))
        for name in parts
        for sub, path in parts[name].frozen_parts().items()
    ]
    if vae is not None:
        frozen.append((f"vae (loaded from {folder / PARAMS_FILE}'s model.vae_path)", vae))
    for where, module in frozen:
        try:
            check_finite(module.state_dict(), where)
        except ValueError as e:
            raise GenerationError(f"cannot load {folder}: {one_line(e)}") from None


def check_model_folder(folder: Path, params: Params) -> None:
    """GenerationError unless the folder's index names this pipeline and its components, every
    component's files are there, and each config.json describes the model params.json describes."""
    _check_index(folder, read_json(folder / INDEX_FILE))
    _check_configs(folder, params)


def _check_index(folder: Path, index: Any) -> None:
    path = folder / INDEX_FILE
    if not isinstance(index, dict) or index.get("_class_name") != PIPELINE_CLASS:
        found = index.get("_class_name") if isinstance(index, dict) else type(index).__name__
        raise GenerationError(f"{path} is not an {PIPELINE_CLASS} index (found {found!r})")
    for name, part in COMPONENTS.items():
        expected = [part.__module__, part.__name__]
        if index.get(name) != expected:
            raise GenerationError(f"{path}: {name} must be {expected}, found {index.get(name)!r}")
    vae = index.get("vae", [None, None])
    if vae != [None, None]:
        raise GenerationError(
            f"{path}: vae {vae!r}: this version saves no VAE (SVD's is frozen, loaded from model.vae_path)"
        )
    for name in COMPONENTS:
        for file in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name / file).is_file():
                raise GenerationError(f"checkpoint {folder} is incomplete: {folder / name / file} is missing ({HINT})")


def _check_configs(folder: Path, params: Params) -> None:
    """Each component's config.json describes the model params.json describes."""
    kwargs = {"denoiser": denoiser_kwargs(params), "reconstructor": reconstructor_kwargs(params)}
    expected = {name: _defaults(COMPONENTS[name]) | kwargs[name] for name in COMPONENTS}
    for name in COMPONENTS:
        path = folder / name / CONFIG_NAME
        saved = read_json(path)
        if not isinstance(saved, dict):
            raise GenerationError(f"{path} must be a JSON object, got {type(saved).__name__}")
        saved = {k: v for k, v in saved.items() if not k.startswith("_")}
        diffs = config_differences(saved, expected[name], where=f"in {PARAMS_FILE}")
        if diffs:
            raise GenerationError(f"{path} does not match this model's {PARAMS_FILE}: {'; '.join(diffs[:3])}")


def _defaults(part: type) -> dict[str, Any]:
    """The default arguments of a component's ``__init__``: what its config holds for those the
    params do not set (``@register_to_config`` fills them in the same way)."""
    parameters = inspect.signature(part.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def load_vae(folder: Path, params: Params):
    """SVD's VAE (frozen, so referenced rather than saved) from ``model.vae_path``; None in pixel space."""
    if params.model.latent == "pixel":
        return None
    from ..models.autoencoder import VAEAutoencoder

    try:
        return VAEAutoencoder.from_folder(params.model.vae_path).vae
    except Exception as e:  # a missing SVD folder, an unreadable file
        raise GenerationError(f"cannot load the VAE of {folder}: {one_line(e)}") from None


def load_component(folder: Path, name: str):
    """Component ``name`` of the model folder (its subfolder, loaded strictly: weights that fit, finite)."""
    try:
        return COMPONENTS[name].from_pretrained(folder / name)
    except ValueError as e:  # weights that do not fit, or not finite (the message names the keys)
        raise GenerationError(one_line(e)) from None
    except Exception as e:  # an unreadable file, a missing CLIP folder
        raise GenerationError(f"cannot load {folder / name}: {one_line(e)}") from None

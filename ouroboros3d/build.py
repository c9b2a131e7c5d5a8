"""Build the model a params file describes, initialise it from pretrained parts, and
fingerprint what shapes its training.

One initialisation path serves every preset (:func:`initialise`): F and G each start from a
local folder, either a model this project trained (what
:meth:`~ouroboros3d.inference.pipeline.Ouroboros3DPipeline.save_pretrained` writes: ``params.json`` and
per-component ``denoiser/``, ``reconstructor/`` subfolders, e.g. the pretraining stages'
``models/pretrain/denoiser``) or, for F, a diffusers UNet folder
(SVD's ``unet``, the paper preset). Fine-tuning starts exactly from those weights; parts the
pretrained model lacks (feedback networks) keep their zero-output initialisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .config import FEEDBACK_MAPS, Params, to_plain
from .errors import UserError
from .files import check_state, file_sha256
from .model import Ouroboros3D
from .models.architecture import attention_flags

__all__ = [
    "InitError",
    "assemble_model",
    "build_model",
    "build_reconstructor",
    "config_differences",
    "denoiser_kwargs",
    "initialise",
    "reconstructor_kwargs",
    "training_fingerprint",
]


def denoiser_kwargs(params: Params) -> dict[str, Any]:
    """F's architecture, the keyword arguments of :class:`~ouroboros3d.models.denoiser.MultiViewDenoiser`:
    ``model.denoiser`` with what follows from the rest of the params (the latent space, the
    resolution, the ablation switches)."""
    maps = tuple(m for m in FEEDBACK_MAPS if m in params.feedback_maps) if params.feedback else ()
    vae = params.model.latent == "vae"
    downscale = 8 if vae else 1
    return dataclasses.asdict(params.model.denoiser) | dict(
        latent_channels=4 if vae else 3,
        sample_size=params.data.resolution // downscale,
        # feedback maps come at image resolution: unshuffle them down to the first UNet level
        feedback_unshuffle=downscale,
        feedback_maps=maps,
    )


def build_model(params: Params) -> Ouroboros3D:
    """The model the params describe, freshly initialised (global RNG: the autoencoder, then F, then G)."""
    from .models.autoencoder import PixelAutoencoder, VAEAutoencoder
    from .models.denoiser import MultiViewDenoiser

    autoencoder = (
        PixelAutoencoder() if params.model.latent == "pixel" else VAEAutoencoder.from_folder(params.model.vae_path)
    )
    net = MultiViewDenoiser(**denoiser_kwargs(params))
    return assemble_model(params, autoencoder, net, build_reconstructor(params))


def assemble_model(params: Params, autoencoder, denoiser_net, reconstructor) -> Ouroboros3D:
    """:class:`Ouroboros3D` of given parts (built or loaded) with the rest of the params."""
    return Ouroboros3D(
        autoencoder,
        denoiser_net,
        reconstructor,
        recon_views=params.model.recon_views,
        ccm_norm=params.ccm.normalization,
        joint=params.joint,
        residual=params.model.residual,
        sigma_data=params.model.sigma_data,
    )


def build_reconstructor(params: Params):
    """G as ``model.reconstructor`` sizes it; timestep-conditioned when trained jointly."""
    from .models.reconstructor import Reconstructor

    return Reconstructor(**reconstructor_kwargs(params))


def reconstructor_kwargs(params: Params) -> dict[str, Any]:
    """G's architecture, the keyword arguments of :class:`~ouroboros3d.models.reconstructor.Reconstructor`:
    ``model.reconstructor`` with what follows from the rest of the params (the output activations'
    ranges keep G's defaults)."""
    r = params.model.reconstructor
    # the flags' default resolved here as G resolves it, so that these are the values G's config holds
    down_attention, up_attention = attention_flags(
        r.down_attention, r.up_attention, len(r.down_channels), len(r.up_channels)
    )
    return dataclasses.asdict(r) | dict(
        down_attention=down_attention,
        up_attention=up_attention,
        in_views=len(params.model.recon_views),
        splat_size=r.splat_size,
        # always: a G pretrained on clean views (sigma = None) then loads into a jointly trained one
        timestep_conditioning=True,
    )


class InitError(UserError, ValueError):
    """A pretrained folder is missing, malformed or was trained with an incompatible architecture."""


# params that fix the architecture: a pretrained part must agree on all of them
ARCHITECTURE_KEYS = ("preset", "camera", "ccm", "model")


def _architecture(raw: dict) -> dict:
    arch = {k: raw.get(k) for k in ARCHITECTURE_KEYS}
    arch["resolution"] = (raw.get("data") or {}).get("resolution")
    return arch


def config_differences(there: Any, here: Any, where: str = "here", key: str = "") -> list[str]:
    """``"<key>: <value there> there, <value here> <where>"`` for each (dotted) key whose value differs
    between two configs (nested mappings; tuples and lists compare alike)."""
    there, here = to_plain(there), to_plain(here)
    if isinstance(there, dict) and isinstance(here, dict):
        return [
            diff
            for k in sorted(set(there) | set(here))
            for diff in config_differences(there.get(k), here.get(k), where, f"{key}.{k}".strip("."))
        ]
    return [] if there == here else [f"{key}: {there!r} there, {here!r} {where}"]


def _pretrained_state(folder: Path, params: Params, part: str) -> dict[str, torch.Tensor]:
    """The saved weights of component ``part`` ("denoiser", "reconstructor") of a model folder
    (:meth:`ouroboros3d.inference.pipeline.Ouroboros3DPipeline.save_pretrained`), refused when its
    params.json describes another architecture."""
    from safetensors.torch import load_file

    from .files import WEIGHTS_NAME

    weights, meta = folder / part / WEIGHTS_NAME, folder / "params.json"
    expected = f"expected {part}/{WEIGHTS_NAME} and params.json (a model saved by the train stage)"
    if not meta.is_file():
        raise InitError(f"{folder}: {expected}")
    diffs = config_differences(_architecture(json.loads(meta.read_text())), _architecture(dataclasses.asdict(params)))
    if diffs:
        raise InitError(f"{folder} was trained with other params ({'; '.join(diffs[:3])}): re-run its stage")
    if not weights.is_file():
        raise InitError(f"{folder}: {expected}")
    return load_file(str(weights))


def _load_part(module: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path, allow_new: tuple[str, ...]):
    """Load ``state`` into ``module``: every tensor must fit, and only the parts ``allow_new`` names
    (and frozen parts loaded from their own folders, which a saved model does not hold) may be absent."""
    frozen = tuple(f"{name}." for name in module.frozen_parts())
    try:
        check_state(state, module.state_dict(), folder, optional=allow_new + frozen)
    except ValueError as e:
        raise InitError(str(e)) from None
    module.load_state_dict(state, strict=False)


def initialise(model: Ouroboros3D, params: Params, denoiser: str | Path | None = None, reconstructor=None) -> None:
    """Load F from ``denoiser`` and G from ``reconstructor`` (local folders; None keeps the init).

    ``denoiser`` may be a diffusers UNet folder (``config.json``, SVD's ``unet``): its weights
    go into F's UNet. Otherwise both are ouroboros3d model folders whose ``params.json`` must
    agree with ``params`` on the architecture (:data:`ARCHITECTURE_KEYS`, the resolution).
    """
    if denoiser is not None:
        folder = Path(denoiser)
        if (folder / "config.json").is_file():
            model.denoiser.net.load_pretrained_unet(folder)
        else:
            state = _pretrained_state(folder, params, "denoiser")
            _load_part(model.denoiser.net, state, folder, allow_new=("feedback_networks.",))
    if reconstructor is not None:
        folder = Path(reconstructor)
        _load_part(model.reconstructor, _pretrained_state(folder, params, "reconstructor"), folder, allow_new=())


def _folder_digest(folder: Path) -> str:
    """A hash of every safetensors file in a model folder (its components' subfolders included)."""
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise InitError(f"{folder}: no weights (*.safetensors) to start from")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}:{file_sha256(path)};".encode())
    return digest.hexdigest()


def training_fingerprint(params: Params, init: tuple[str | Path | None, ...] = ()) -> str:
    """A hash of every param that changes what training computes, and of the weights it starts
    from (``init`` folders); resume only on a match."""
    keys = ("seed", "preset", "feedback", "feedback_maps", "joint", "camera", "ccm", "model", "train")
    raw = dataclasses.asdict(params)
    # the training objects too: a run on other data must never resume this one's checkpoint
    train_data = raw["data"]["train"]
    if not train_data["textured_objects"]:  # a later key: unset, the published fingerprints stand
        del train_data["textured_objects"]
    blob = {k: raw[k] for k in keys} | {"resolution": params.data.resolution, "train_data": train_data}
    starts = [_folder_digest(Path(f)) for f in init if f is not None]
    if starts:
        blob["init"] = starts
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

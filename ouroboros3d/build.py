"""Build the model a params file describes, and fingerprint what shapes its training."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from .config import Params, ParamsError
from .model import Ouroboros3D

__all__ = ["build_model", "build_reconstructor", "denoiser_config", "training_fingerprint"]


def denoiser_config(params: Params):
    """The preset's denoiser architecture, with ``model.denoiser`` overrides and the ablation switches."""
    from .denoiser import DenoiserConfig

    maps = tuple(m for m in ("ccm", "rgb") if m in params.feedback_maps) if params.feedback else ()
    overrides = dict(params.model.denoiser)
    fields = {f.name for f in dataclasses.fields(DenoiserConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ParamsError(f"params: model.denoiser: unknown key(s) {unknown}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    image_size = params.data.resolution
    latent = "vae" if params.model.latent == "vae" else "pixel"
    base = DenoiserConfig.preset(params.preset)
    downscale = 8 if latent == "vae" else 1
    sample_size = image_size // downscale
    # feedback maps come at image resolution: unshuffle them down to the first UNet level
    return dataclasses.replace(
        base,
        sample_size=sample_size,
        feedback_unshuffle=downscale,
        latent_channels=4 if latent == "vae" else 3,
        feedback_maps=maps,
        **overrides,
    )


def build_model(params: Params) -> Ouroboros3D:
    from .autoencoder import PixelAutoencoder, VAEAutoencoder
    from .denoiser import MultiViewDenoiser

    autoencoder = (
        PixelAutoencoder() if params.model.latent == "pixel" else VAEAutoencoder.from_folder(params.model.vae_path)
    )
    net = MultiViewDenoiser(denoiser_config(params))
    if params.model.svd_path:
        net.load_pretrained_unet(params.model.svd_path)
    return Ouroboros3D(
        autoencoder,
        net,
        build_reconstructor(params),
        recon_views=params.model.recon_views,
        ccm_norm=params.ccm.normalization,
        joint=params.joint,
    )


def build_reconstructor(params: Params):
    """G as ``model.reconstructor`` sizes it; timestep-conditioned when trained jointly."""
    from .reconstructor import Reconstructor

    r = params.model.reconstructor
    return Reconstructor(
        in_views=len(params.model.recon_views),
        image_size=r.image_size,
        splat_size=r.splat_size,
        down_channels=r.down_channels,
        up_channels=r.up_channels,
        layers_per_block=r.layers_per_block,
        attention_head_dim=r.attention_head_dim,
        timestep_conditioning=params.joint,
    )


def training_fingerprint(params: Params) -> str:
    """A hash of every param that changes what training computes; resume only on a match."""
    keys = ("seed", "preset", "feedback", "feedback_maps", "joint", "camera", "ccm", "model", "train")
    raw = dataclasses.asdict(params)
    blob = json.dumps({k: raw[k] for k in keys} | {"resolution": params.data.resolution}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

"""Where diffusion happens: pixel space or SVD's latent space, behind one interface.

Both classes map views (B, V, 3, H, W) in [0, 1] to the denoiser's tensors
(B, V, latent_channels, H / downscale, W / downscale) and back:

* :class:`PixelAutoencoder`: the affine map [0, 1] <-> [-1, 1]; the CPU presets.
* :class:`VAEAutoencoder`: diffusers' ``AutoencoderKLTemporalDecoder`` (SVD's VAE, whose
  decoder mixes information across the V frames), latents scaled by its scaling factor
  (0.18215); the paper preset.

``decode`` is differentiable and does not clamp: Algorithm 1 feeds the decoded x0
prediction to the reconstructor and back-propagates through it, and a clamp would cut the
gradient of every out-of-range pixel. Clamp to [0, 1] for display or saving.
``encode``/``decode`` also accept a single image batch (B, 3, H, W) / (B, C, h, w) (V = 1),
e.g. the input view's ``cond_latent``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder
from torch import nn

__all__ = ["PixelAutoencoder", "VAEAutoencoder"]


def _as_views(x: torch.Tensor, channels: int | None, what: str) -> tuple[torch.Tensor, bool]:
    """(B, V, C, H, W) as is, (B, C, H, W) as (B, 1, C, H, W); the flag says which it was."""
    if x.ndim == 4:
        x = x[:, None]
        single = True
    elif x.ndim == 5:
        single = False
    else:
        raise ValueError(f"{what} must be (B, V, C, H, W) or (B, C, H, W), got {tuple(x.shape)}")
    if channels is not None and x.shape[2] != channels:
        raise ValueError(f"{what} must have {channels} channels, got {x.shape[2]}")
    return x, single


class PixelAutoencoder(nn.Module):
    """Pixel-space diffusion: ``latents = 2 * images - 1``, ``images = (latents + 1) / 2``.

    Lossless up to float rounding (bit-exact for dyadic pixel values such as k/256).
    """

    latent_channels = 3
    downscale = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, V, 3, H, W) in [0, 1] -> (B, V, 3, H, W) in [-1, 1]."""
        views, single = _as_views(images, 3, "images")
        latents = views * 2.0 - 1.0
        return latents[:, 0] if single else latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) -> images, in [0, 1] for latents in [-1, 1] (not clamped)."""
        views, single = _as_views(latents, 3, "latents")
        images = (views + 1.0) * 0.5
        return images[:, 0] if single else images


class VAEAutoencoder(nn.Module):
    """SVD's VAE: ``AutoencoderKLTemporalDecoder`` with latents scaled by ``scaling_factor``.

    Build it with :meth:`from_folder` (a LOCAL diffusers folder, e.g. the ``vae`` subfolder
    of the SVD repository; never a hub id) or :meth:`from_config` (a config dict; tests
    build a tiny random one). ``encode`` returns the posterior mode by default (as SVD's
    pipeline does for its conditioning image) or a sample with ``sample=True``.
    """

    def __init__(self, vae: AutoencoderKLTemporalDecoder):
        super().__init__()
        # frozen, as in SVD's fine-tuning: its latents are F's targets, which the diffusion loss
        # could otherwise move (and a saved model references the VAE's folder, not a copy)
        self.vae = vae.requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_folder(cls, path: str | Path, **kwargs: Any) -> VAEAutoencoder:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"SVD VAE: local folder {str(folder)!r} does not exist (hub ids are not accepted; "
                "point at a downloaded diffusers folder holding config.json and the weights)"
            )
        return cls(AutoencoderKLTemporalDecoder.from_pretrained(str(folder), local_files_only=True, **kwargs))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VAEAutoencoder:
        return cls(AutoencoderKLTemporalDecoder.from_config(dict(config)))

    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images (B, V, 3, H, W) in [0, 1] -> scaled latents (B, V, C, H / downscale, W / downscale)."""
        views, single = _as_views(images, 3, "images")
        b, v = views.shape[:2]
        posterior = self.vae.encode(views.flatten(0, 1) * 2.0 - 1.0).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        latents = (z * self.scaling_factor).reshape(b, v, *z.shape[1:])
        return latents[:, 0] if single else latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, V, C, h, w) -> images (B, V, 3, H, W), about [0, 1] (not clamped).

        The V views are decoded together (``num_frames=V``): the temporal decoder mixes them.
        """
        views, single = _as_views(latents, self.latent_channels, "latents")
        b, v = views.shape[:2]
        decoded = self.vae.decode(views.flatten(0, 1) / self.scaling_factor, num_frames=v).sample
        images = ((decoded + 1.0) * 0.5).reshape(b, v, *decoded.shape[1:])
        return images[:, 0] if single else images

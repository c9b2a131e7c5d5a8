"""How F is conditioned besides its noisy views: the input view and the cameras.

* :class:`ImageEncoder`: the input view -> one cross-attention token (SVD's CLIP image
  embedding, or a small CNN for from-scratch presets);
* :class:`CameraEmbedding`: per-pixel Plücker rays -> harmonic embedding -> 1x1-conv MLP,
  projected to each UNet block's channels by zero-initialised convs (a freshly added camera
  path starts neutral).

:class:`~ouroboros3d.models.denoiser.MultiViewDenoiser` owns one of each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIP_MEAN", "CLIP_STD", "CameraEmbedding", "ImageEncoder", "harmonic_embedding", "require_folder"]

# CLIP's image normalisation (the openai/laion CLIP preprocessors).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- image conditioning ----------------------------------------------------------------


def require_folder(path: str | Path | None, what: str) -> Path:
    """A local folder or a clear error: weights are never fetched from a hub here."""
    if path is None:
        raise FileNotFoundError(f"{what}: no local folder given (set its path; hub ids are not accepted)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: local folder {str(folder)!r} does not exist (hub ids are not accepted)")
    return folder


class ImageEncoder(nn.Module):
    """The input view -> the cross-attention context, (B, 3, H, W) in [0, 1] -> (B, 1, dim).

    ``kind="cnn"``: a small strided CNN with global average pooling and a linear head,
    trained from scratch. ``kind="clip"``: SVD's image encoder, a frozen
    ``CLIPVisionModelWithProjection`` loaded from the LOCAL folder ``clip_path`` (never a hub
    id; FileNotFoundError if the folder is missing); ``dim`` must equal its projection size
    (1024 for SVD's ViT-H/14).
    """

    def __init__(
        self,
        kind: str = "cnn",
        dim: int = 1024,
        channels: Sequence[int] = (32, 64, 128, 256),
        clip_path: str | Path | None = None,
    ):
        super().__init__()
        self.kind = kind
        self.dim = dim
        if kind == "cnn":
            layers: list[nn.Module] = []
            c_in = 3
            for c in channels:
                layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1), nn.SiLU()]
                c_in = c
            self.backbone = nn.Sequential(*layers)
            self.head = nn.Linear(c_in, dim)
        elif kind == "clip":
            folder = require_folder(clip_path, "CLIP image encoder")
            try:
                from transformers import CLIPVisionModelWithProjection
            except ImportError as err:
                raise ImportError("the 'clip' image encoder needs the transformers package") from err
            self.clip = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
            self.clip.requires_grad_(False)  # frozen, as in SVD and the paper
            if self.clip.config.projection_dim != dim:
                raise ValueError(f"CLIP projection size {self.clip.config.projection_dim} != cross_attention_dim {dim}")
            self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        else:
            raise ValueError(f"image encoder kind must be 'cnn' or 'clip', got {kind!r}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            features = self.backbone(image * 2.0 - 1.0).mean(dim=(-2, -1))
            return self.head(features)[:, None]
        size = self.clip.config.image_size
        image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        return self.clip(pixel_values=(image - self.mean) / self.std).image_embeds[:, None]


# --- camera conditioning ---------------------------------------------------------------


def harmonic_embedding(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for k < frequencies, on the channels of (N, C, H, W).

    Returns (N, C * (1 + 2 * frequencies), H, W).
    """
    scales = (2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)) * math.pi
    angles = (x[:, :, None] * scales.view(1, 1, -1, 1, 1)).flatten(1, 2)  # (N, C*K, H, W)
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1)


class CameraEmbedding(nn.Module):
    """Plücker rays -> features added before every UNet block (the paper implementation's scheme).

    ``embed(plucker)`` maps (N, 6, h, w) rays through a harmonic embedding and a 1x1-conv MLP
    to (N, embed_dim, h, w) once; ``at(site, features, size)`` average-pools them to a
    block's resolution and projects to its channels with that site's zero-initialised
    1x1 conv (pooling first: both are linear, and pooling first is cheaper). The zero
    projections make a freshly added camera path exactly neutral; they receive gradients
    at once, the MLP after the first update.
    """

    def __init__(self, site_channels: Mapping[str, int], frequencies: int = 6, embed_dim: int = 128):
        super().__init__()
        self.frequencies = frequencies
        in_channels = 6 * (1 + 2 * frequencies)
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels, embed_dim, kernel_size=1),
            nn.SiLU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=1),
        )
        self.projections = nn.ModuleDict(
            {site: nn.Conv2d(embed_dim, channels, kernel_size=1) for site, channels in site_channels.items()}
        )
        for proj in self.projections.values():
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def embed(self, plucker: torch.Tensor) -> torch.Tensor:
        return self.mlp(harmonic_embedding(plucker, self.frequencies))

    def at(self, site: str, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(features.shape[-2:]) != tuple(size):
            features = F.adaptive_avg_pool2d(features, tuple(size))
        return self.projections[site](features)

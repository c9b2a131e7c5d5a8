"""The feed-forward Gaussian reconstructor G: a few posed views to 3D Gaussians (LGM-style).

LGM (Tang et al. 2024) takes 4 views with their Plücker ray maps, runs one U-Net over every
view with multi-view self-attention in its low-resolution levels, and reads a "splat image"
off the output: every output pixel of every view is one Gaussian (14 channels). Ouroboros3D
adds a timestep embedding so that G can be given the denoiser's intermediate, noisy-looking
x0 predictions at noise level sigma. This module is a from-scratch implementation of that
design in plain PyTorch:

* Input per view: the image mapped to [-1, 1] and its Plücker map (direction, moment), 9
  channels. Output: ``N = in_views * splat_size**2`` Gaussians per object, ordered view by
  view, then row-major over the splat image.
* U-Net: ``conv_in``; per down level ``layers_per_block`` residual blocks (GroupNorm-SiLU-conv
  twice, the timestep embedding scaling and shifting the second GroupNorm's output) and a
  stride-2 conv between levels; a middle block (res, attention, res); per up level
  ``layers_per_block + 1`` residual blocks, each fed one skip connection, and nearest x2 +
  conv between levels; GroupNorm-SiLU-conv to 15 channels. Residual sums are scaled by
  1/sqrt(2). The splat image is ``image_size * 2**(len(up_channels) - len(down_channels))``
  pixels wide.
* Multi-view attention (levels flagged in ``down_attention``/``up_attention`` and the middle):
  the tokens of all views of an object attend to each other jointly, which is how the views
  exchange information.
* Timestep: ``c_noise = 0.25 ln(sigma)`` (the EDM/SVD preconditioning) through sinusoidal
  features and an MLP, applied in every residual block (scale and shift). ``sigma=None``
  means clean input views (the non-joint baseline, trained on ground-truth views):
  ``CLEAN_SIGMA = 0.002``, the bottom of the EDM noise range, is used then.

Output activations (the 15 raw channels of a splat pixel, in order):

* position (4 channels): pixel-aligned. The splat pixel's ray (from the Plücker input,
  area-averaged to the splat resolution) has ``p0``, its point closest to the world origin,
  and unit direction ``d``; ``xyz = p0 + d * ray_depth_bound * tanh(r0) + offset_bound *
  tanh(r1:4)``. LGM predicts xyz directly (clamped to [-1, 1]); we chose the ray form because
  it trains much faster from scratch: at initialisation every Gaussian already lies on the ray
  of its pixel, near the object (objects live in the unit box, whose points are within 0.87 of
  the origin, hence ``ray_depth_bound = 0.9``), so the input views are reproduced from the start
  and only depth has to be learnt; the small free offset lets Gaussians leave the ray a little
  (as in Splatter Image). tanh rather than LGM's clamp keeps the gradient alive at the bounds.
* opacity (1): sigmoid, as LGM.
* scale (3): ``scale_min + (scale_max - scale_min) * sigmoid``. LGM's ``0.1 * softplus`` is
  unbounded above; a bounded range keeps the CPU rasteriser's cost (which grows with the
  Gaussians' footprint) predictable and avoids the degenerate "few huge blobs" start.
* rotation (4): a unit wxyz quaternion, ``F.normalize(r + (1, 0, 0, 0), dim=-1)``: each
  Gaussian's own 4 channels are normalised. The ``+ (1, 0, 0, 0)`` bias starts every Gaussian
  near the identity rotation with a raw norm near 1, where normalisation is well conditioned
  (normalising a near-zero raw vector gives random rotations with huge gradients), and it
  makes an exactly zero raw vector still map to a unit quaternion.
* colour (3): sigmoid (LGM: ``0.5 tanh + 0.5``, which is ``sigmoid(2x)``; its authors note
  they would use sigmoid if training again). With ``color_skip`` the raw channels are added to
  the logit of the input pixels' colour (area-pooled to the splat pixel), so that an untrained
  G already gives every Gaussian the colour of the pixel it sits on, as the ray form gives it
  that pixel's ray: G learns a colour *change* instead of colour from nothing. This is our
  small-scale lever (LGM has no such skip; trained from scratch, LGM renders grey/white for
  a long time), off in the paper preset.

Where we differ from LGM on rotation, and LGM's bug: LGM's released code sets
``rot_act = F.normalize`` and applies it to the (B, N, 4) tensor of raw rotations.
``F.normalize`` normalises along ``dim=1`` by default, which there is the *Gaussian* axis N,
not the quaternion axis: every quaternion component is divided by the norm of that component
over all N Gaussians of the object. The resulting quaternions are not unit (each is about
1/sqrt(N) long) and every Gaussian's rotation depends on every other Gaussian's output. The
rasteriser re-normalises quaternions, so renders still work, but the activation couples all
Gaussians through the divisor and its gradient. LGM's README calls it a severe bug, says the
released weights were trained with it and that a retrained model should use
``F.normalize(x, dim=-1)``; the Ouroboros3D implementation kept LGM's version. We normalise
along the last axis (with the identity bias above) and so are not weight-compatible with LGM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from ..files import PretrainedMixin
from ..gaussians.container import Gaussians
from .architecture import attention_flags, check_levels
from .architecture import splat_size as splat_size_of
from .reconstructor_blocks import Level, MultiViewAttention, group_norm

__all__ = ["CLEAN_SIGMA", "RAW_CHANNELS", "Reconstructor", "activate_gaussians", "splat_rays"]

CLEAN_SIGMA = 0.002  # sigma used for clean input views (sigma=None): EDM's sigma_min
PositionMode = Literal["ray", "box"]
RAW_CHANNELS = 15  # 1 ray depth + 3 offset + 1 opacity + 3 scale + 4 rotation + 3 colour
COLOR_EPS = 0.01  # the colour skip's prior is clamped to [eps, 1 - eps] before its logit


def splat_rays(plucker: torch.Tensor, splat_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of the splat pixels from Plücker maps (..., 6, H, W) at image resolution.

    Returns ``p0`` (the ray's point closest to the world origin) and the unit direction ``d``,
    both (..., S, S, 3). Area-averaging keeps the Plücker pair consistent for a pinhole
    camera (the moment ``o x d`` is linear in ``d`` for a shared origin ``o``), so after
    dividing both by the averaged direction's length it is the ray through the block's mean
    direction.
    """
    lead = plucker.shape[:-3]
    maps = plucker.reshape(-1, *plucker.shape[-3:])
    if maps.shape[-1] != splat_size or maps.shape[-2] != splat_size:
        maps = F.interpolate(
            maps, size=(splat_size, splat_size), mode="area" if maps.shape[-1] > splat_size else "bilinear"
        )
    maps = maps.reshape(*lead, 6, splat_size, splat_size).movedim(-3, -1)
    norm = maps[..., :3].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    direction, moment = maps[..., :3] / norm, maps[..., 3:] / norm
    return torch.linalg.cross(direction, moment, dim=-1), direction


def activate_gaussians(
    raw: torch.Tensor,
    ray_p0: torch.Tensor,
    ray_dir: torch.Tensor,
    ray_depth_bound: float,
    offset_bound: float,
    scale_range: tuple[float, float],
    position: PositionMode = "ray",
    color_prior: torch.Tensor | None = None,
) -> Gaussians:
    """Raw splat channels (B, N, 15) and pixel rays (B, N, 3) to Gaussians (module docstring).

    ``position="box"`` is the LGM-like alternative kept for ablations: ``xyz = offset_bound *
    tanh(r1:4)`` anywhere in a box of half-size ``offset_bound`` (channel r0 unused).
    ``color_prior`` (B, N, 3) in [0, 1]: the colour a zero raw colour maps to (``color_skip``).
    """
    depth, offset, opacity, scale, rotation, color = raw.split([1, 3, 1, 3, 4, 3], dim=-1)
    if position == "ray":
        means = ray_p0 + ray_dir * (ray_depth_bound * torch.tanh(depth)) + offset_bound * torch.tanh(offset)
    elif position == "box":
        means = offset_bound * torch.tanh(offset)
    else:
        raise ValueError(f"position must be 'ray' or 'box', got {position!r}")
    scale_min, scale_max = scale_range
    return Gaussians(
        means=means,
        quats=F.normalize(rotation + rotation.new_tensor([1.0, 0.0, 0.0, 0.0]), dim=-1, eps=1e-8),
        scales=scale_min + (scale_max - scale_min) * torch.sigmoid(scale),
        opacities=torch.sigmoid(opacity[..., 0]),
        colors=torch.sigmoid(color if color_prior is None else color + torch.logit(color_prior, eps=COLOR_EPS)),
    )


class Reconstructor(PretrainedMixin, ModelMixin, ConfigMixin):
    """LGM-style U-Net: ``in_views`` posed views to ``in_views * splat_size**2`` Gaussians.

    A diffusers model: the arguments below are its architecture and, through
    ``@register_to_config``, its ``self.config`` (JSON-serialisable, with the attention flags'
    default resolved and sequences as tuples); ``from_config`` and ``from_pretrained`` build it
    with ``cls(**config)``. params.yaml's ``model.reconstructor`` reaches it through
    :func:`ouroboros3d.build.reconstructor_kwargs`.

    Args:
        in_views: views per object (LGM and the paper: 4 of the 8 generated views).
        image_size: input resolution (square).
        splat_size: splat image resolution; must equal
            ``image_size * 2**(len(up_channels) - len(down_channels))``.
        down_channels, up_channels: widths of the U-Net levels (up is the decoder, deepest first).
        down_attention, up_attention, mid_attention: which levels have multi-view attention
            (None: the lowest resolution only).
        layers_per_block: residual blocks per down level (up levels get one more).
        attention_head_dim: channels per attention head.
        timestep_conditioning: add the c_noise embedding (Ouroboros3D); False gives plain LGM.
        ray_depth_bound, offset_bound, scale_range: output activation ranges (module docstring).
        position: "ray" (pixel-aligned, the default) or "box" (LGM-like free xyz within
            ``offset_bound``, e.g. 0.6, for ablations).
        color_skip: start every Gaussian at its pixel's colour (module docstring).
        output_init_scale: the last conv's initial weights are multiplied by this, so that the
            first outputs sit near the activations' centres (small but non-zero, so that
            gradients reach every layer from the first step).

    Raises:
        ValueError: an architecture that cannot be built (the rules of
            :mod:`ouroboros3d.models.architecture`, the splat size, the activation ranges).
    """

    @register_to_config
    def __init__(
        self,
        in_views: int = 4,
        image_size: int = 64,
        splat_size: int = 32,
        down_channels: Sequence[int] = (32, 64, 128, 256),
        up_channels: Sequence[int] = (256, 128, 64),
        down_attention: Sequence[bool] | None = None,
        up_attention: Sequence[bool] | None = None,
        mid_attention: bool = True,
        layers_per_block: int = 1,
        attention_head_dim: int = 64,
        timestep_conditioning: bool = True,
        ray_depth_bound: float = 0.9,
        offset_bound: float = 0.1,
        scale_range: tuple[float, float] = (0.002, 0.05),
        output_init_scale: float = 0.1,
        position: PositionMode = "ray",
        color_skip: bool = False,
    ):
        super().__init__()
        down_channels, up_channels = tuple(down_channels), tuple(up_channels)
        down_attention, up_attention = attention_flags(
            down_attention, up_attention, len(down_channels), len(up_channels)
        )
        check_levels(image_size, len(down_channels), len(up_channels))
        # the rules params cannot break: they derive the splat size and keep the activations' defaults
        expected = splat_size_of(image_size, len(down_channels), len(up_channels))
        if splat_size != expected:
            raise ValueError(
                f"with {len(down_channels)} down and {len(up_channels)} up levels a {image_size}² input "
                f"gives {expected}² splats, not {splat_size}²"
            )
        if not 0 < scale_range[0] < scale_range[1]:
            raise ValueError(f"scale_range must be 0 < min < max, got {scale_range}")
        if position not in ("ray", "box"):
            raise ValueError(f"position must be 'ray' or 'box', got {position!r}")
        scale_range = (float(scale_range[0]), float(scale_range[1]))
        # the config holds the flags resolved, as tuples: a saved G keeps its attention layout even
        # if the default changes, and a config from JSON compares equal to the one it was saved from
        self.register_to_config(
            down_channels=down_channels,
            up_channels=up_channels,
            down_attention=down_attention,
            up_attention=up_attention,
            scale_range=scale_range,
        )
        self.in_views, self.image_size, self.splat_size = in_views, image_size, splat_size
        self.ray_depth_bound, self.offset_bound, self.position = ray_depth_bound, offset_bound, position
        self.scale_range = scale_range
        self.color_skip = color_skip

        self.time_features = down_channels[0]
        emb_dim = 4 * down_channels[0] if timestep_conditioning else None
        self.time_mlp = (
            nn.Sequential(nn.Linear(self.time_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if timestep_conditioning
            else None
        )

        def attention(channels: int) -> MultiViewAttention:
            return MultiViewAttention(channels, in_views, attention_head_dim)

        self.conv_in = nn.Conv2d(9, down_channels[0], 3, padding=1)
        skips = [down_channels[0]]  # channels of the skip connections, in the order they are made
        self.down = nn.ModuleList()
        channels = down_channels[0]
        for level, (width, attend) in enumerate(zip(down_channels, down_attention, strict=True)):
            last = level == len(down_channels) - 1
            block = Level(channels, [0] * layers_per_block, width, attend, emb_dim, attention)
            block.resample = None if last else nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.down.append(block)
            channels = width
            skips += [width] * (layers_per_block + (0 if last else 1))

        self.mid = Level(channels, [0, 0], channels, mid_attention, emb_dim, attention, attention_between=True)

        self.up = nn.ModuleList()
        for level, (width, attend) in enumerate(zip(up_channels, up_attention, strict=True)):
            skip_channels = [skips.pop() for _ in range(layers_per_block + 1)]
            block = Level(channels, skip_channels, width, attend, emb_dim, attention)
            if level < len(up_channels) - 1:
                block.resample = nn.Sequential(
                    nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)
                )
            self.up.append(block)
            channels = width

        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, RAW_CHANNELS, 3, padding=1)
        with torch.no_grad():
            self.conv_out.weight.mul_(output_init_scale)
            self.conv_out.bias.zero_()

    @property
    def num_gaussians(self) -> int:
        return self.in_views * self.splat_size**2

    def forward(
        self, images: torch.Tensor, plucker: torch.Tensor, sigma: torch.Tensor | float | None = None
    ) -> Gaussians:
        """Gaussians of B objects from their posed views.

        Args:
            images: (B, Vin, 3, H, W) RGB in [0, 1] (H = W = image_size).
            plucker: (B, Vin, 6, H, W) Plücker rays of the views (direction, moment), as made by
                :func:`ouroboros3d.geometry.cameras.plucker_rays`.
            sigma: (B,) or a float, the EDM noise level of the views; None for clean views.

        Returns:
            Gaussians with N = Vin * splat_size**2 (view-major, then row-major).
        """
        b, v = images.shape[:2]
        expected = (b, self.in_views, 3, self.image_size, self.image_size)
        if tuple(images.shape) != expected or tuple(plucker.shape) != (b, v, 6, *expected[-2:]):
            raise ValueError(
                f"expected images {expected} and plucker {(b, v, 6, *expected[-2:])}, "
                f"got {tuple(images.shape)} and {tuple(plucker.shape)}"
            )
        x = torch.cat([images * 2.0 - 1.0, plucker.to(images)], dim=2).flatten(0, 1)

        emb = None
        if self.time_mlp is not None:
            sigma = CLEAN_SIGMA if sigma is None else sigma
            sigma = torch.as_tensor(sigma, dtype=torch.float32, device=images.device).expand(b)
            c_noise = 0.25 * torch.log(sigma)
            # diffusers' sinusoidal embedding in the [cos, sin] order of its ``Timesteps`` (SVD's)
            features = get_timestep_embedding(c_noise, self.time_features, flip_sin_to_cos=True, downscale_freq_shift=0)
            emb = self.time_mlp(features.to(images.dtype))
            emb = emb.repeat_interleave(v, dim=0)  # one embedding per view image

        x = self.conv_in(x)
        skips = [x]
        for level in self.down:
            x = level(x, emb, skips_out=skips)
        x = self.mid(x, emb)
        for level in self.up:
            x = level(x, emb, skips_in=skips)
        raw = self.conv_out(F.silu(self.norm_out(x)))  # (B*V, 15, S, S)

        s = self.splat_size
        raw = raw.reshape(b, v, RAW_CHANNELS, s, s).permute(0, 1, 3, 4, 2).reshape(b, v * s * s, RAW_CHANNELS)
        ray_p0, ray_dir = splat_rays(plucker.to(raw), s)
        color_prior = None
        if self.color_skip:
            pooled = images.flatten(0, 1).to(raw)
            if pooled.shape[-1] != s:
                pooled = F.interpolate(pooled, size=(s, s), mode="area")
            color_prior = pooled.reshape(b, v, 3, s, s).permute(0, 1, 3, 4, 2).reshape(b, v * s * s, 3)
        return activate_gaussians(
            raw,
            ray_p0.reshape(b, v * s * s, 3),
            ray_dir.reshape(b, v * s * s, 3),
            self.ray_depth_bound,
            self.offset_bound,
            self.scale_range,
            self.position,
            color_prior,
        )

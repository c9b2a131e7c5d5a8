"""The ``model`` section: the networks F (the multi-view denoiser) and G (the reconstructor).

:class:`DenoiserParams` and :class:`ReconstructorParams` hold the architecture arguments of
:class:`~ouroboros3d.models.denoiser.MultiViewDenoiser` and
:class:`~ouroboros3d.models.reconstructor.Reconstructor` that params set, under the same names:
:mod:`ouroboros3d.build` passes them on as keywords, with the values that follow from the rest
of the params. Their ``validate`` checks refuse, here, a model the network code could not build.
The rules the networks check themselves (one entry per level, ...) are
:mod:`ouroboros3d.models.architecture`'s, run here with the key named; the rest only the params
check: UNet widths that GroupNorm's groups or the attention heads do not divide, block types
diffusers does not have. These mirror the layers as the networks build them;
tests/test_params_checks.py compares the two, so they cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..models import architecture
from .errors import _check

__all__ = [
    "DENOISER_DOWN_BLOCKS",
    "DENOISER_NORM_GROUPS",
    "DENOISER_UP_BLOCKS",
    "SMALL_DOWN_BLOCKS",
    "SMALL_UP_BLOCKS",
    "DenoiserParams",
    "ModelParams",
    "ReconstructorParams",
]

# the block types of diffusers' UNetSpatioTemporalConditionModel (the only ones MultiViewDenoiser walks)
DENOISER_DOWN_BLOCKS = ("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal")
DENOISER_UP_BLOCKS = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal")
# GroupNorm groups of diffusers' spatio-temporal resnets and transformers
DENOISER_NORM_GROUPS = 32

# small presets: no spatial attention at the full-resolution level (it dominates CPU time)
SMALL_DOWN_BLOCKS = ("DownBlockSpatioTemporal",) + ("CrossAttnDownBlockSpatioTemporal",) * 3
SMALL_UP_BLOCKS = ("CrossAttnUpBlockSpatioTemporal",) * 3 + ("UpBlockSpatioTemporal",)


@dataclass(frozen=True)
class DenoiserParams:
    """Architecture of the multi-view denoiser F: the keyword arguments of
    ouroboros3d.models.denoiser.MultiViewDenoiser that params set (the latent channels,
    resolution and feedback maps follow from the rest of the params). The defaults are
    ``cpu-small``'s: an 11M-parameter SVD-family UNet (the network's own are SVD's)."""

    block_out_channels: tuple[int, ...] = (32, 64, 96, 128)
    down_block_types: tuple[str, ...] = SMALL_DOWN_BLOCKS
    up_block_types: tuple[str, ...] = SMALL_UP_BLOCKS
    layers_per_block: int = 1
    transformer_layers_per_block: int = 1
    num_attention_heads: tuple[int, ...] = (1, 2, 3, 4)
    cross_attention_dim: int = 128
    addition_time_embed_dim: int = 32
    added_time_ids: tuple[float, ...] = (6.0, 127.0, 0.02)  # SVD's fps-1, motion bucket, noise augmentation
    image_encoder: Literal["cnn", "clip", "none"] = "cnn"  # clip: SVD's, frozen, from image_encoder_path
    image_encoder_path: str | None = None
    image_encoder_channels: tuple[int, ...] = (16, 32, 64, 128)
    feedback_blocks_per_scale: int = 3
    camera_frequencies: int = 4
    camera_embed_dim: int = 32
    gradient_checkpointing: bool = False

    def validate(self, key: str) -> None:
        _architecture(
            key,
            architecture.check_denoiser,
            block_out_channels=self.block_out_channels,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            num_attention_heads=self.num_attention_heads,
            added_time_ids=self.added_time_ids,
            image_encoder=self.image_encoder,
        )
        channels = self.block_out_channels
        n = len(channels)
        for name, allowed in (("down_block_types", DENOISER_DOWN_BLOCKS), ("up_block_types", DENOISER_UP_BLOCKS)):
            bad = [t for t in getattr(self, name) if t not in allowed]
            _check(not bad, f"{key}.{name}", f"unknown block type(s) {bad}; choose from {list(allowed)}")
        groups = DENOISER_NORM_GROUPS
        _check(
            all(c >= groups and c % groups == 0 for c in channels),
            f"{key}.block_out_channels",
            f"widths must be positive multiples of {groups} (the UNet's GroupNorm groups), got {list(channels)}",
        )
        heads = self.num_attention_heads
        _check(all(h >= 1 for h in heads), f"{key}.num_attention_heads", f"must be >= 1, got {list(heads)}")
        for i, (c, h) in enumerate(zip(channels, heads, strict=True)):
            # level i attends in its down block, its up block (the up blocks run deepest first)
            # or, the deepest level, in the mid block
            attends = i == n - 1 or "CrossAttn" in self.down_block_types[i] or "CrossAttn" in self.up_block_types[~i]
            _check(
                not attends or c % h == 0,
                f"{key}.num_attention_heads",
                f"level {i} has attention: its {c} channels do not split into {h} heads",
            )
        for name, low in (
            ("layers_per_block", 0),  # 0: a level of resamplers only (the up levels keep one block)
            ("transformer_layers_per_block", 0),  # 0: no spatial/temporal attention
            ("cross_attention_dim", 1),
            ("addition_time_embed_dim", 0),  # 0: no added time ids in the time embedding
            ("feedback_blocks_per_scale", 0),
            ("camera_frequencies", 0),  # 0: the raw Plücker rays, no harmonics
            ("camera_embed_dim", 1),
        ):
            value = getattr(self, name)
            _check(value >= low, f"{key}.{name}", f"must be >= {low}, got {value}")
        _check(
            all(c >= 1 for c in self.image_encoder_channels),
            f"{key}.image_encoder_channels",
            f"widths must be >= 1, got {list(self.image_encoder_channels)}",
        )
        _check(
            self.image_encoder != "clip" or bool(self.image_encoder_path),
            f"{key}.image_encoder_path",
            "the clip image encoder needs a local folder",
        )


@dataclass(frozen=True)
class ReconstructorParams:
    """Sizes of the LGM-style reconstructor G: the keyword arguments of
    ouroboros3d.models.reconstructor.Reconstructor that params set (the views, the splat size
    and the timestep conditioning follow from the rest of the params; the output activations'
    ranges keep the network's defaults).

    Its splat images have ``image_size * 2**(len(up_channels) - len(down_channels))`` pixels
    a side: one Gaussian per splat pixel per input view.
    """

    image_size: int = 64
    down_channels: tuple[int, ...] = (32, 64, 128, 128)
    up_channels: tuple[int, ...] = (128, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 32
    # multi-view attention per level; null: only at the lowest level (LGM big: down F,F,F,T,T,T, up T,T,T,F,F)
    down_attention: tuple[bool, ...] | None = None
    up_attention: tuple[bool, ...] | None = None
    mid_attention: bool = True
    # every Gaussian starts at its input pixel's colour (our small-scale lever; LGM: false)
    color_skip: bool = False

    def validate(self, key: str) -> None:
        levels, up_levels = len(self.down_channels), len(self.up_channels)
        _architecture(key, architecture.attention_flags, self.down_attention, self.up_attention, levels, up_levels)
        _check(levels >= 2, f"{key}.down_channels", "need at least two levels")
        _check(self.image_size >= 1, f"{key}.image_size", f"must be >= 1, got {self.image_size}")
        _architecture(key, architecture.check_levels, self.image_size, levels, up_levels)
        for name in ("down_channels", "up_channels"):
            widths = list(getattr(self, name))
            _check(all(c >= 1 for c in widths), f"{key}.{name}", f"widths must be >= 1, got {widths}")
        for name in ("layers_per_block", "attention_head_dim"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", f"must be >= 1, got {getattr(self, name)}")
        norms, attentions = self.layer_widths()
        for name, c in norms:
            _check(
                c % _group_norm_groups(c) == 0,
                f"{key}.{name}",
                f"a layer of {c} channels does not split into GroupNorm's {_group_norm_groups(c)} groups; "
                f"use even widths",
            )
        for name, c in attentions:
            heads = max(1, c // self.attention_head_dim)
            _check(
                c % heads == 0,
                f"{key}.{name}",
                f"a level with attention has {c} channels, which do not split into {heads} heads "
                f"(attention_head_dim {self.attention_head_dim})",
            )

    def layer_widths(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The channels of G's GroupNorms and of its multi-view attentions, each with the key
        that sets them: ``ouroboros3d.models.reconstructor.Reconstructor``'s layers, as it builds them
        (tests/test_params_checks.py holds the two in step)."""
        down, up, per_block = self.down_channels, self.up_channels, self.layers_per_block
        down_attention, up_attention = architecture.attention_flags(
            self.down_attention, self.up_attention, len(down), len(up)
        )
        norms: list[tuple[str, int]] = []
        attentions: list[tuple[str, int]] = []

        def level(name, channels, skips, width, attend):  # reconstructor._Level: res blocks, attention
            for skip in skips:
                norms.extend([(name, channels + skip), (name, width)])  # ResBlock's norm1, norm2
                channels = width
            if attend:
                attentions.append((name, width))

        channels, skips = down[0], [down[0]]
        for i, (width, attend) in enumerate(zip(down, down_attention, strict=True)):
            level("down_channels", channels, [0] * per_block, width, attend)
            channels = width
            skips += [width] * (per_block + (0 if i == len(down) - 1 else 1))
        level("down_channels", channels, [0, 0], channels, self.mid_attention)  # the middle level
        for width, attend in zip(up, up_attention, strict=True):
            level("up_channels", channels, [skips.pop() for _ in range(per_block + 1)], width, attend)
            channels = width
        norms.append(("up_channels", channels))  # norm_out
        return norms, attentions

    @property
    def splat_size(self) -> int:
        """Reconstructor's ``splat_size`` argument, which follows from the levels."""
        return architecture.splat_size(self.image_size, len(self.down_channels), len(self.up_channels))


def _architecture(key: str, rule, *args, **kwargs):
    """``rule(...)``, an :mod:`ouroboros3d.models.architecture` check, with its error keyed under ``key``."""
    try:
        return rule(*args, **kwargs)
    except architecture.ArchitectureError as e:
        _check(False, f"{key}.{e.field}", e.reason)


def _group_norm_groups(channels: int) -> int:
    """The groups of ``ouroboros3d.models.reconstructor._group_norm(channels)`` (32 where the width
    allows, else groups of at least 2 channels; tests/test_params_checks.py compares the two)."""
    return math.gcd(32, max(channels // 2, 1))


@dataclass(frozen=True)
class ModelParams:
    latent: Literal["pixel", "vae"] = "pixel"
    vae_path: str | None = None  # a local SVD folder (its `vae` subfolder) for latent: vae
    # local folders the pretraining stages start from (None: from scratch): F from SVD's `unet`
    # folder (diffusers) or an ouroboros3d model folder, G from an ouroboros3d model folder
    denoiser_init: str | None = None
    reconstructor_init: str | None = None
    denoiser: DenoiserParams = field(default_factory=DenoiserParams)
    reconstructor: ReconstructorParams = field(default_factory=ReconstructorParams)
    recon_views: tuple[int, ...] = (0, 2, 4, 6)  # which of the V views G sees (the paper: 4 of 8)
    residual: bool = False  # diffuse the views minus the input view (D = 0 copies the input view)
    sigma_data: float = 1.0  # EDM's data standard deviation; the paper's (SVD latents) is 1

    def validate(self, key: str, num_views: int) -> None:
        _check(self.latent in ("pixel", "vae"), f"{key}.latent", f"must be pixel or vae, got {self.latent!r}")
        _check(self.latent != "vae" or bool(self.vae_path), f"{key}.vae_path", "latent: vae needs a local vae_path")
        bad = [v for v in self.recon_views if not 0 <= v < num_views]
        _check(not bad and bool(self.recon_views), f"{key}.recon_views", f"views {bad} outside [0, {num_views})")
        _check(
            len(set(self.recon_views)) == len(self.recon_views),
            f"{key}.recon_views",
            f"views must be distinct, got {list(self.recon_views)}",
        )
        _check(self.sigma_data > 0, f"{key}.sigma_data", f"must be positive, got {self.sigma_data}")
        self.denoiser.validate(f"{key}.denoiser")
        self.reconstructor.validate(f"{key}.reconstructor")

"""Typed, validated parameters: ``params.yaml`` is read here and nowhere else.

``load_params`` deep-merges the block ``presets[preset]`` over the top-level sections,
builds the dataclasses below and validates every value, so a typo or an out-of-range
value stops with a message naming the key (``ParamsError``), before any work starts.

The checks come in two layers. Generic ones, once for every param: the file is UTF-8 YAML
(:func:`load_params`) whose top level, ``presets`` and preset blocks are mappings
(:func:`params_from_dict`) with string keys and no alias inside itself (:func:`_check_tree`),
and every value has its field's annotated type (:func:`_convert`, also for the inactive presets):
bool is not an int, a string is not a number, ints fit in 64 bits and floats are finite
(no param gives NaN or inf a meaning). Then each dataclass's ``validate`` checks its ranges
and the combinations its code needs (e.g. UNet widths that GroupNorm and the attention
heads divide), so an impossible model is refused here, not by a ZeroDivisionError later.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAMLError

from .errors import UserError
from .geometry.ccm import CCMNormalization

__all__ = ["RESOLVED_PARAMS", "Params", "ParamsError", "load_params", "params_from_dict", "resolved_params"]

FEEDBACK_MAPS = ("ccm", "rgb")
# params.yaml with its preset applied (the resolve_params stage): what every other stage's
# params deps name, so a stage re-runs when a value it reads changes, whichever block set it
RESOLVED_PARAMS = "results/resolved_params.yaml"
SOURCES = ("random_urdfs", "ycb", "libero", "folder")


class ParamsError(UserError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"params: {key}: {msg}")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error line, cut to ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# every int param must fit in 64 bits (numpy, torch); the seed has its own, tighter range
INT_RANGE = (-(2**63), 2**63)
# params.seed: the training derives torch seeds from it as ``seed * 791_923_757 + ...``
# (ouroboros3d.training.loop), which torch.Generator.manual_seed needs in [-2**63, 2**64)
SEED_LIMIT = 2**32


@dataclass(frozen=True)
class CameraParams:
    radius: float = 2.2
    fov_deg: float = 39.6
    orbit_frames: int = 16
    view_frames: tuple[int, ...] = (0, 2, 4, 6, 8, 10, 12, 15)

    def validate(self, key: str) -> None:
        _check(self.radius > 0.9, f"{key}.radius", f"must exceed the unit box's reach (0.87), got {self.radius}")
        _check(0 < self.fov_deg < 180, f"{key}.fov_deg", f"must be in (0, 180), got {self.fov_deg}")
        _check(self.orbit_frames >= 1, f"{key}.orbit_frames", "must be >= 1")
        _check(len(self.view_frames) >= 2, f"{key}.view_frames", "need at least 2 views")
        _check(self.view_frames[0] == 0, f"{key}.view_frames", "the first view must be frame 0 (the input view)")
        _check(
            all(0 <= f < self.orbit_frames for f in self.view_frames),
            f"{key}.view_frames",
            f"frames must lie in [0, {self.orbit_frames}), got {list(self.view_frames)}",
        )
        _check(len(set(self.view_frames)) == len(self.view_frames), f"{key}.view_frames", "frames must be distinct")

    @property
    def num_views(self) -> int:
        return len(self.view_frames)


@dataclass(frozen=True)
class CCMParams:
    scale: float = 0.8
    offset: float = 0.5
    background: float = 0.0

    def validate(self, key: str) -> None:
        _check(self.scale > 0, f"{key}.scale", f"must be positive, got {self.scale}")
        _check(0 <= self.background <= 1, f"{key}.background", f"must lie in [0, 1], got {self.background}")

    @property
    def normalization(self) -> CCMNormalization:
        return CCMNormalization(self.scale, self.offset, self.background)


@dataclass(frozen=True)
class SplitParams:
    source: Literal["random_urdfs", "ycb", "libero", "folder"] = "random_urdfs"
    max_objects: int = 200
    elevation_deg: tuple[float, float] = (-5.0, 30.0)
    # train only: real (YCB) objects that are in neither val nor eval, each rendered along
    # `real_orbits` random orbits, added to the split (the eval objects are real scans)
    real_objects: int = 0
    real_orbits: int = 1

    def validate(self, key: str) -> None:
        _check(self.source in SOURCES, f"{key}.source", f"must be one of {SOURCES}, got {self.source!r}")
        _check(self.max_objects >= 1, f"{key}.max_objects", f"must be >= 1, got {self.max_objects}")
        _check(self.real_objects >= 0, f"{key}.real_objects", f"must be >= 0, got {self.real_objects}")
        _check(self.real_orbits >= 1, f"{key}.real_orbits", f"must be >= 1, got {self.real_orbits}")
        lo, hi = self.elevation_deg
        _check(-89 < lo <= hi < 89, f"{key}.elevation_deg", f"need -89 < low <= high < 89, got {[lo, hi]}")


@dataclass(frozen=True)
class DataParams:
    resolution: int = 64
    workers: int = 2
    min_objects: int = 4
    train: SplitParams = field(default_factory=SplitParams)
    # objects for choosing settings (learning study, sweeps): never trained on, never evaluated
    val: SplitParams = field(default_factory=lambda: SplitParams("ycb", 10, (0.0, 20.0)))
    eval: SplitParams = field(default_factory=lambda: SplitParams("ycb", 40, (0.0, 20.0)))
    eval_textured: bool = False
    folder: str | None = None

    def validate(self, key: str) -> None:
        _check(8 <= self.resolution <= 2048, f"{key}.resolution", f"must be in [8, 2048], got {self.resolution}")
        _check(self.resolution % 8 == 0, f"{key}.resolution", f"must be a multiple of 8, got {self.resolution}")
        _check(self.workers >= 1, f"{key}.workers", "must be >= 1")
        _check(self.min_objects >= 1, f"{key}.min_objects", "must be >= 1")
        self.train.validate(f"{key}.train")
        self.val.validate(f"{key}.val")
        self.eval.validate(f"{key}.eval")
        for split in ("val", "eval"):
            only_train = "only the train split adds real objects"
            _check(getattr(self, split).real_objects == 0, f"{key}.{split}.real_objects", only_train)
        uses_folder = "folder" in (self.train.source, self.val.source, self.eval.source)
        _check(
            not uses_folder or bool(self.folder), f"{key}.folder", "a split uses source 'folder' but no folder is set"
        )


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
    """Architecture of the multi-view denoiser F (ouroboros3d.models.denoiser.DenoiserConfig's fields
    that params set; the latent channels, resolution and feedback maps follow from the rest of
    the params). The defaults are ``cpu-small``'s: an 11M-parameter SVD-family UNet."""

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
        channels = self.block_out_channels
        n = len(channels)
        _check(n >= 1, f"{key}.block_out_channels", "need at least one level")
        for name in ("down_block_types", "up_block_types", "num_attention_heads"):
            _check(len(getattr(self, name)) == n, f"{key}.{name}", f"needs one entry per level ({n})")
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
        _check(bool(self.added_time_ids), f"{key}.added_time_ids", "need at least one (SVD has 3)")
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
    """Sizes of the LGM-style reconstructor G (see ouroboros3d.models.reconstructor).

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
        levels = len(self.down_channels)
        for name, n in (("down_attention", levels), ("up_attention", len(self.up_channels))):
            flags = getattr(self, name)
            _check(flags is None or len(flags) == n, f"{key}.{name}", f"needs one flag per level ({n})")
        _check(levels >= 2, f"{key}.down_channels", "need at least two levels")
        _check(1 <= len(self.up_channels) <= levels, f"{key}.up_channels", f"need 1 to {levels} levels")
        _check(self.image_size >= 1, f"{key}.image_size", f"must be >= 1, got {self.image_size}")
        _check(
            self.image_size % 2 ** (levels - 1) == 0,
            f"{key}.image_size",
            f"must be divisible by {2 ** (levels - 1)} for {levels} levels, got {self.image_size}",
        )
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
        down_attention = self.down_attention or (False,) * (len(down) - 1) + (True,)
        up_attention = self.up_attention or (True,) + (False,) * (len(up) - 1)
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
        return self.image_size // 2 ** (len(self.down_channels) - len(self.up_channels))


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


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 600
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    lr_decay_fraction: float = 1.0  # cosine decay to 10% over this last share of the steps, constant before
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    cond_dropout: float = 0.1  # conditioning dropout, for classifier-free guidance
    feedback_prob: float = 0.5  # Algorithm 1: probability of the second pass with feedback
    p_mean: float = 1.0  # ln sigma ~ N(p_mean, p_std^2), eq. above (5)
    p_std: float = 1.6
    # (share, p_mean, p_std): that share of the training noise levels from a second log-normal
    noise_mixture: tuple[float, float, float] | None = None
    recon_weight: float = 1.0
    alpha_weight: float = 1.0
    lpips_weight: float = 0.0  # 0 on CPU: LPIPS needs pretrained weights this machine cannot fetch
    checkpoint_every: int = 50
    log_every: int = 10
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    recolour: bool = False  # permute each object's RGB channels, the same in all its views
    # share of each batch drawn from the real scans of the train split (the rest: procedural
    # objects); null: batches drawn from all objects alike (the split's own share)
    real_share: float | None = None
    validate_every: int = 0  # score the EMA on the val split every N steps (learning curve); 0: at the end

    def validate(self, key: str) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.lr > 0, f"{key}.lr", "must be positive")
        _check(0 <= self.ema_decay < 1, f"{key}.ema_decay", "must lie in [0, 1)")
        for name in ("cond_dropout", "feedback_prob", "lr_decay_fraction"):
            _check(0 <= getattr(self, name) <= 1, f"{key}.{name}", "must lie in [0, 1]")
        _check(self.p_std > 0, f"{key}.p_std", "must be positive")
        # clip_grad_norm_ to 0 would zero every gradient: training that silently learns nothing
        _check(self.grad_clip > 0, f"{key}.grad_clip", f"must be positive, got {self.grad_clip}")
        if self.real_share is not None:
            _check(0 <= self.real_share <= 1, f"{key}.real_share", f"must lie in [0, 1], got {self.real_share}")
        if self.noise_mixture is not None:
            share, _, std = self.noise_mixture
            _check(0 <= share <= 1 and std > 0, f"{key}.noise_mixture", "needs [share in [0, 1], p_mean, p_std > 0]")
        for name in (
            "recon_weight",
            "alpha_weight",
            "lpips_weight",
            "weight_decay",
            "warmup_steps",
            "validate_every",
        ):
            _check(getattr(self, name) >= 0, f"{key}.{name}", "must be >= 0")


@dataclass(frozen=True)
class PretrainParams:
    """The components' pretraining, once, before every Table 2 model is fine-tuned from them:
    F as plain multi-view diffusion (the paper's SVD) and G on ground-truth views (its LGM)."""

    denoiser: TrainSettings = field(default_factory=TrainSettings)
    reconstructor: TrainSettings = field(default_factory=TrainSettings)

    def validate(self, key: str) -> None:
        self.denoiser.validate(f"{key}.denoiser")
        self.reconstructor.validate(f"{key}.reconstructor")


@dataclass(frozen=True)
class SampleParams:
    steps: int = 25
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    guidance: tuple[float, float] = (1.0, 2.5)  # SVD's per-view scale, input view to last view
    guidance_sigmas: tuple[float, float] | None = None  # guide only at sigma in [lo, hi]; null: every step
    feedback_start: float = 0.0  # feed back from this fraction of the steps on (Table 3)
    sampler: Literal["euler", "heun", "euler_churn"] = "euler"  # euler_churn: EDM's stochastic sampler
    mixed_precision: Literal["no", "bf16"] = "no"  # autocast F and G in sampling (EDM, rays, rasterizer stay fp32)

    def validate(self, key: str) -> None:
        _check(self.steps >= 1, f"{key}.steps", "must be >= 1")
        _check(0 < self.sigma_min < self.sigma_max, f"{key}.sigma_min", "need 0 < sigma_min < sigma_max")
        _check(min(self.guidance) >= 1.0, f"{key}.guidance", f"scales must be >= 1, got {list(self.guidance)}")
        _check(0 <= self.feedback_start <= 1, f"{key}.feedback_start", "must lie in [0, 1]")
        lo, hi = self.guidance_sigmas or (0.0, 0.0)
        _check(0 <= lo <= hi, f"{key}.guidance_sigmas", f"need 0 <= lo <= hi, got {self.guidance_sigmas}")


@dataclass(frozen=True)
class EvaluationParams:
    """Settings of the evaluation (experiments/evaluate.py, ouroboros3d.evaluation.metrics); not of the model."""

    batch_size: int = 4  # objects sampled together; each has its own seeded noise
    gt_points: int = 50_000  # points sampled on each ground-truth mesh surface (seeded per object)
    fscore_thresholds: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)  # unit-box units
    step_objects: int = 3  # eval objects whose per-step reconstructions are recorded (Figure 3)
    feedback_starts: tuple[float, ...] = (0.4, 0.8, 1.0)  # Table 3: inference-only feedback windows
    confidence: float = 0.95  # of the t-interval over objects
    mesh_metrics: bool = True  # Table 2 runs: mesh Chamfer/F-score and volume IoU (ouroboros3d.evaluation.metrics)
    iou_grid: int = 64  # voxels per side of the volume-IoU grid (SyncDreamer's 64)

    def validate(self, key: str) -> None:
        for name in ("batch_size", "gt_points", "iou_grid"):
            _check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        _check(self.step_objects >= 0, f"{key}.step_objects", "must be >= 0")
        _check(
            bool(self.fscore_thresholds) and all(t > 0 for t in self.fscore_thresholds),
            f"{key}.fscore_thresholds",
            f"need positive thresholds, got {list(self.fscore_thresholds)}",
        )
        _check(
            all(0 <= s <= 1 for s in self.feedback_starts),
            f"{key}.feedback_starts",
            f"must lie in [0, 1], got {list(self.feedback_starts)}",
        )
        _check(0 < self.confidence < 1, f"{key}.confidence", f"must lie in (0, 1), got {self.confidence}")


# top-level params a `variants:` block may override (the rest describe data, sampling, evaluation)
VARIANT_KEYS = ("seed", "feedback", "feedback_maps", "joint", "model", "train")
# ... and the switches it must set: a Table 2 row is its own switches, never the top-level ones,
# so `dvc exp run -S feedback=false` (a change of the main model) leaves every variant as it was
VARIANT_SWITCHES = ("feedback", "feedback_maps", "joint")


@dataclass(frozen=True)
class Params:
    seed: int = 0
    preset: str = "cpu-small"
    feedback: bool = True
    feedback_maps: tuple[str, ...] = FEEDBACK_MAPS
    joint: bool = True
    camera: CameraParams = field(default_factory=CameraParams)
    ccm: CCMParams = field(default_factory=CCMParams)
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    train: TrainSettings = field(default_factory=TrainSettings)
    sample: SampleParams = field(default_factory=SampleParams)
    evaluation: EvaluationParams = field(default_factory=EvaluationParams)
    # Table 2's ablation models: name -> overrides of VARIANT_KEYS over the top-level params,
    # trained as models/<name> by the train_variant stage for the names in train_variants
    variants: dict = field(default_factory=dict)
    train_variants: tuple[str, ...] = ()

    def validate(self) -> None:
        _check(
            0 <= self.seed < SEED_LIMIT,
            "seed",
            f"must lie in [0, 2**32) (training derives 64-bit torch seeds from it), got {self.seed}",
        )
        bad = [m for m in self.feedback_maps if m not in FEEDBACK_MAPS]
        _check(not bad, "feedback_maps", f"unknown maps {bad}; choose from {FEEDBACK_MAPS}")
        _check(
            not self.feedback or bool(self.feedback_maps),
            "feedback_maps",
            "feedback is on but no map is fed back; set feedback=false or name a map",
        )
        self.camera.validate("camera")
        self.ccm.validate("ccm")
        self.data.validate("data")
        _check(self.joint or not self.feedback, "joint", "3D feedback needs joint training (set feedback=false)")
        self.model.validate("model", self.camera.num_views)
        self.pretrain.validate("pretrain")
        self.train.validate("train")
        self.sample.validate("sample")
        self.evaluation.validate("evaluation")
        for name, block in self.variants.items():
            _check(isinstance(block, dict), f"variants.{name}", f"must be a mapping, got {block!r}")
            _check(name != "main", "variants", "'main' is the model of the top-level params; name variants otherwise")
            bad = sorted(set(block) - set(VARIANT_KEYS))
            _check(not bad, f"variants.{name}", f"cannot override {bad}; a variant may set {list(VARIANT_KEYS)}")
            missing = [k for k in VARIANT_SWITCHES if k not in block]
            _check(
                not missing, f"variants.{name}", f"must set {missing}: a variant sets all of {list(VARIANT_SWITCHES)}"
            )
            self.with_variant(name)  # validates the variant's params
        unknown = [v for v in self.train_variants if v not in self.variants]
        _check(not unknown, "train_variants", f"unknown variant(s) {unknown}; have {sorted(self.variants)}")

    def for_pretraining(self, part: str) -> Params:
        """The params component ``part``'s pretraining runs with: no feedback (F alone), and G
        on the ground-truth views (joint off); its settings are ``pretrain.<part>``."""
        _check(part in ("denoiser", "reconstructor"), "pretrain", f"no component {part!r} to pretrain")
        return dataclasses.replace(self, feedback=False, joint=part != "reconstructor")

    def with_variant(self, name: str) -> Params:
        """The params of variant ``name``: its ``variants`` block deep-merged over these params.

        ``"main"`` is these params. The result has no variants of its own (it is one model).
        """
        if name == "main":
            return self
        _check(name in self.variants, "variants", f"unknown variant {name!r}; have ['main', *{sorted(self.variants)}]")
        raw = dataclasses.asdict(self) | {"variants": {}, "train_variants": ()}
        try:
            params = _build(Params, _deep_merge(raw, self.variants[name]), "")
            params.validate()
        except ParamsError as e:
            raise ParamsError(f"params: variants.{name}: {str(e).removeprefix('params: ')}") from None
        return params

    @property
    def feedback_ccm(self) -> bool:
        return self.feedback and "ccm" in self.feedback_maps

    @property
    def feedback_rgb(self) -> bool:
        return self.feedback and "rgb" in self.feedback_maps


# --- building dataclasses from plain dicts, with errors that name the key ----------


def _check_tree(value: Any, key: str = "", parents: tuple = ()) -> None:
    """The raw YAML tree, before anything reads it: every mapping key is a string (a name), and
    no YAML alias contains itself (a recursive structure). ``key`` is the dotted path so far."""
    if not isinstance(value, (dict, list)):
        return
    where = key or "params"
    _check(all(value is not p for p in parents), where, "a YAML alias that contains itself")
    parents = (*parents, value)
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_tree(item, f"{key}[{i}]", parents)
        return
    for k, item in value.items():
        _check(isinstance(k, str), where, f"key {_short(k)} is not a name (keys must be strings)")
        _check_tree(item, f"{key}.{k}" if key else k, parents)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """``value`` as the annotated type ``tp`` (a dataclass, Optional/union with None, Literal,
    tuple, dict, bool, int, float, str), or a ParamsError naming ``key`` and the value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"must be a mapping, got {_short(value)}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            _check(type(None) in args, key, "must not be null")
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        _check(value in typing.get_args(tp), key, f"must be one of {typing.get_args(tp)}, got {_short(value)}")
        return value
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {_short(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), key, f"must have {len(args)} entries, got {list(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False)))
    if tp is dict:  # free-form (variants): its values are checked where they are used
        _check(isinstance(value, dict), key, f"must be a mapping, got {_short(value)}")
        return _plain(value)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {_short(value)}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {_short(value)}")
        low, high = INT_RANGE
        _check(low <= value < high, key, f"must fit in 64 bits, got {_short(value)}")
        return int(value)
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(ok, key, f"must be a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        _check(math.isfinite(number), key, f"must be a finite number, got {_short(value)}")
        return number
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {_short(value)}")
        return str(value)
    raise TypeError(f"unsupported params type {tp} at {key}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    where = f"{prefix}." if prefix else ""
    _check(not unknown, prefix or "params.yaml", f"unknown key(s) {[where + u for u in unknown]}")
    kwargs = {k: _convert(hints[k], v, where + k) for k, v in values.items()}
    return cls(**kwargs)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolved_params(params: Params) -> dict:
    """``params`` (preset applied, defaults filled in) as plain YAML data: the resolve_params
    stage's output, whose keys the other stages depend on. It has no ``presets`` block: a preset
    that is not active is not something any stage reads."""
    return _plain(dataclasses.asdict(params))

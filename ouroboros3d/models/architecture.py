"""What F and G can be built with: the architecture rules the networks and the params share.

Plain Python, no torch: :mod:`ouroboros3d.config` checks params.yaml with these same rules
(before any network is built, without importing diffusers) and turns an
:class:`ArchitectureError` into a ``ParamsError`` naming the params key
(``model.denoiser.<field>``), while :class:`~ouroboros3d.models.denoiser.MultiViewDenoiser` and
:class:`~ouroboros3d.models.reconstructor.Reconstructor` raise it as it is (a ValueError) when
built with impossible arguments. Each rule is written once, here; the checks only the params
make (GroupNorm widths, attention heads) live in :mod:`ouroboros3d.config.networks`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "FEEDBACK_MAPS",
    "IMAGE_ENCODERS",
    "ArchitectureError",
    "attention_flags",
    "check_denoiser",
    "check_levels",
    "splat_size",
]

FEEDBACK_MAPS = ("ccm", "rgb")  # F^0 (the CCM) and F^1 (the RGB render), supplementary eq. 10
IMAGE_ENCODERS = ("cnn", "clip", "none")


class ArchitectureError(ValueError):
    """An argument no network can be built with; ``field`` names it, ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _require(cond: bool, field: str, reason: str) -> None:
    if not cond:
        raise ArchitectureError(field, reason)


# --- F, the multi-view denoiser ------------------------------------------------------------


def check_denoiser(
    block_out_channels: Sequence[int],
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    num_attention_heads: Sequence[int],
    added_time_ids: Sequence[float],
    image_encoder: str,
    feedback_maps: Sequence[str] = (),
) -> None:
    """One block type and head count per UNet level, at least one added time id, known names."""
    n = len(block_out_channels)
    _require(n >= 1, "block_out_channels", "need at least one level")
    for name, values in (
        ("down_block_types", down_block_types),
        ("up_block_types", up_block_types),
        ("num_attention_heads", num_attention_heads),
    ):
        _require(len(values) == n, name, f"needs one entry per level ({n})")
    # a constant vector through SVD's add-embedding: it must exist for SVD's weights to load
    _require(bool(added_time_ids), "added_time_ids", "need at least one (SVD has 3)")
    _require(
        image_encoder in IMAGE_ENCODERS,
        "image_encoder",
        f"must be one of {IMAGE_ENCODERS}, got {image_encoder!r}",
    )
    bad = [m for m in feedback_maps if m not in FEEDBACK_MAPS]
    _require(
        not bad and len(set(feedback_maps)) == len(feedback_maps),
        "feedback_maps",
        f"must be distinct names from {FEEDBACK_MAPS}, got {tuple(feedback_maps)}",
    )


# --- G, the reconstructor ------------------------------------------------------------------


def attention_flags(
    down_attention: Sequence[bool] | None, up_attention: Sequence[bool] | None, down_levels: int, up_levels: int
) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """G's multi-view attention per down and up level; None: at the lowest resolution only (the
    last down level and the first up level, which run deepest first)."""
    for name, flags, n in (("down_attention", down_attention, down_levels), ("up_attention", up_attention, up_levels)):
        _require(flags is None or len(flags) == n, name, f"needs one flag per level ({n})")
    if down_attention is None:
        down_attention = (False,) * (down_levels - 1) + (True,)
    if up_attention is None:
        up_attention = (True,) + (False,) * (up_levels - 1)
    return tuple(down_attention), tuple(up_attention)


def check_levels(image_size: int, down_levels: int, up_levels: int) -> None:
    """The decoder has at most as many levels as the encoder, whose downsamplings divide the input."""
    _require(1 <= up_levels <= down_levels, "up_channels", f"need 1 to {down_levels} levels")
    _require(
        image_size % 2 ** (down_levels - 1) == 0,
        "image_size",
        f"must be divisible by {2 ** (down_levels - 1)} for {down_levels} levels, got {image_size}",
    )


def splat_size(image_size: int, down_levels: int, up_levels: int) -> int:
    """The splat image's side: the input's, halved once per down level the decoder does not undo."""
    return image_size // 2 ** (down_levels - up_levels)

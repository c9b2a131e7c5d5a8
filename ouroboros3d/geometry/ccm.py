"""Canonical coordinate maps (CCM), supplementary section 1.2.

A CCM stores, per pixel, the world coordinates of the visible surface, mapped to [0, 1]
by ONE scale and offset shared by every view of every object (``ccm = scale * xyz +
offset``). Because the mapping is global, a surface point has the same CCM value in
every view that sees it; per-view normalised depth has no such property.

Depth is z-depth; pixels with depth <= 0 are background and get ``background``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cameras import pixel_centers

__all__ = ["CCMNormalization", "ccm_to_world", "depth_to_ccm", "depth_to_world", "world_to_ccm"]


@dataclass(frozen=True)
class CCMNormalization:
    """The one global affine map world -> [0, 1].

    With objects in the unit box [-0.5, 0.5]^3 the default ``scale = 0.8`` maps them to
    [0.1, 0.9], so the background value 0 never collides with a surface point.
    """

    scale: float = 0.8
    offset: float = 0.5
    background: float = 0.0

    def __post_init__(self):
        values = {"scale": self.scale, "offset": self.offset, "background": self.background}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:  # a NaN offset would write NaN into every surface pixel of every CCM
            raise ValueError(f"CCM normalisation must be finite, got {bad}")
        for name, problem in self.range_problems().items():  # the first one stops
            raise ValueError(f"CCM {name} {problem}")

    def range_problems(self) -> dict[str, str]:
        """The fields out of their range, each with what is wrong with it (empty: none).

        The one statement of the ranges: construction refuses them, and the params' ``ccm``
        section (a subclass, checked later) reports them naming its key.
        """
        problems = {}
        if not self.scale > 0:
            problems["scale"] = f"must be positive, got {self.scale}"
        if not 0.0 <= self.background <= 1.0:
            problems["background"] = f"must lie in [0, 1], got {self.background}"
        return problems


def depth_to_world(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Back-project z-depth (..., H, W) to world points (..., H, W, 3).

    ``X_cam = K^-1 (u, v, 1)^T d`` at pixel centres, then ``X_world = R X_cam + t``.

    Computed in float64 and rounded once to depth's dtype: the last bits of float32 einsum and
    ``linalg.inv`` depend on the CPU's kernels, float64's rounded result does not, so the ccm
    stage writes the same bytes on every machine. (Differentiable: the casts pass gradients.)
    """
    h, w = depth.shape[-2:]
    d64 = depth.double()
    uv1 = pixel_centers(h, w, torch.float64, depth.device)
    rays = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K.to(d64)), uv1)
    cam = rays * d64[..., None]
    c2w = c2w.to(d64)
    world = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], cam) + c2w[..., None, None, :3, 3]
    return world.to(depth.dtype)


def world_to_ccm(points: torch.Tensor, mask: torch.Tensor, norm: CCMNormalization = CCMNormalization()) -> torch.Tensor:
    """World points (..., H, W, 3) and a foreground mask (..., H, W) to a CCM (..., 3, H, W)."""
    ccm = (points * norm.scale + norm.offset).clamp(0.0, 1.0)
    ccm = torch.where(mask[..., None], ccm, torch.full_like(ccm, norm.background))
    return ccm.movedim(-1, -3)


def ccm_to_world(ccm: torch.Tensor, norm: CCMNormalization = CCMNormalization()) -> torch.Tensor:
    """Inverse of the normalisation: a CCM (..., 3, H, W) to world points (..., H, W, 3).

    Background pixels come back as the point the background value decodes to; use the
    mask that produced the CCM to ignore them.
    """
    return (ccm.movedim(-3, -1) - norm.offset) / norm.scale


def depth_to_ccm(
    depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, norm: CCMNormalization = CCMNormalization()
) -> torch.Tensor:
    """The CCM of a depth map: back-project, normalise globally, fill the background."""
    return world_to_ccm(depth_to_world(depth, K, c2w), depth > 0, norm)

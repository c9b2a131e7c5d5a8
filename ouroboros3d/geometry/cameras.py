"""Orbit cameras in one convention, used everywhere in the project.

Conventions
-----------
* World: right-handed, **+Z up**; objects are normalised to a unit box at the origin.
* Camera: **OpenCV**, x right, y down, z forward (the viewing direction).
* ``c2w`` is a 4x4 camera-to-world matrix whose columns are the camera's x, y, z axes
  and its centre in world coordinates; ``w2c`` is its inverse.
* Pixels: pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)`` in image
  coordinates, so its centre is ``(u, v) = (j + 0.5, i + 0.5)``; the principal point of
  a centred camera is ``(W/2, H/2)``.
* Orbit: azimuth 0 puts the camera on the +X axis; azimuth grows counter-clockwise seen
  from above (towards +Y); elevation is positive above the XY plane.
* Depth is **z-depth** (distance along the camera's z axis), never ray length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "WORLD_UP",
    "RenderSettings",
    "camera_rays",
    "default_view_layout",
    "intrinsics",
    "look_at",
    "object_cameras",
    "orbit_c2w",
    "pixel_centers",
    "plucker_rays",
    "project",
]

WORLD_UP = (0.0, 0.0, 1.0)


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype)


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-to-world matrices (..., 4, 4) for cameras at ``eye`` (..., 3) looking at ``target``, in eye's dtype."""
    eye = eye if torch.is_tensor(eye) and eye.is_floating_point() else _as_tensor(eye)
    target = torch.zeros_like(eye) if target is None else _as_tensor(target).expand_as(eye)
    up = eye.new_tensor(WORLD_UP).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    if (right.norm(dim=-1) < 1e-6).any():
        raise ValueError("camera looks straight along the up axis: elevation must be within (-90, 90) degrees")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
    c2w[..., 3, 3] = 1.0
    return c2w


def orbit_c2w(azimuth_deg, elevation_deg, radius) -> torch.Tensor:
    """Camera-to-world matrices for orbit cameras looking at the origin.

    Arguments broadcast against each other; the result has shape (..., 4, 4).
    """
    az, el, r = torch.broadcast_tensors(
        torch.deg2rad(_as_tensor(azimuth_deg, torch.float64)),
        torch.deg2rad(_as_tensor(elevation_deg, torch.float64)),
        _as_tensor(radius, torch.float64),
    )
    eye = torch.stack([r * el.cos() * az.cos(), r * el.cos() * az.sin(), r * el.sin()], dim=-1)
    # float64 throughout, rounded once: the cameras (and so the renders) are the same to the
    # bit on every CPU, where float32 normalise/cross products end in kernel-dependent last bits
    return look_at(eye).float()


def intrinsics(fov_deg: float, width: int, height: int | None = None) -> torch.Tensor:
    """3x3 pinhole intrinsics ``K`` with field of view ``fov_deg`` across the width.

    Square pixels, principal point at the image centre ``(W/2, H/2)``.
    """
    height = width if height is None else height
    if not 0 < fov_deg < 180:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def pixel_centers(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Homogeneous pixel centres ``(u, v, 1)`` of shape (H, W, 3); see the module docstring."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def camera_rays(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions through every pixel centre.

    ``K`` is (..., 3, 3) and ``c2w`` (..., 4, 4); both outputs are (..., H, W, 3). Computed in
    the cameras' precision even under mixed-precision autocast: bf16 directions would be off
    by about a pixel at 128², and mixed bf16/float32 operands break the cross product after.
    """
    with torch.autocast(K.device.type, enabled=False):
        uv1 = pixel_centers(height, width, K.dtype, K.device)
        dirs_cam = torch.einsum("...ij,hwj->...hwi", torch.linalg.inv(K), uv1)
        dirs = torch.einsum("...ij,...hwj->...hwi", c2w[..., :3, :3], dirs_cam)
        dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = c2w[..., None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def plucker_rays(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray maps (..., 6, H, W): unit direction ``d`` and moment ``o x d`` per pixel."""
    origins, dirs = camera_rays(K, c2w, height, width)
    moment = torch.linalg.cross(origins, dirs, dim=-1)
    return torch.cat([dirs, moment], dim=-1).movedim(-1, -3)


def project(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points (..., N, 3) to pixel coordinates (..., N, 2) and z-depth (..., N)."""
    cam = points @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    depth = cam[..., 2]
    uv = (cam @ K.transpose(-1, -2))[..., :2] / depth[..., None]
    return uv, depth


def default_view_layout(
    orbit_frames: int = 16,
    view_frames: Sequence[int] = (0, 2, 4, 6, 8, 10, 12, 15),
    azimuth_offset_deg: float = 0.0,
) -> torch.Tensor:
    """Azimuths (degrees) of the views: frames of an evenly spaced orbit, first = input view.

    The default is the paper implementation's 8 of 16 frames, ``[0, 2, ..., 12, 15]``.
    """
    frames = list(view_frames)
    if not frames or frames[0] != 0:
        raise ValueError(f"the first view must be frame 0 (the input view), got {frames}")
    if any(f < 0 or f >= orbit_frames for f in frames):
        raise ValueError(f"view frames {frames} must lie in [0, {orbit_frames})")
    return azimuth_offset_deg + torch.tensor(frames, dtype=torch.float32) * (360.0 / orbit_frames)


@dataclass(frozen=True)
class RenderSettings:
    """The camera rig of an object's views: everything besides the object that determines its renders.

    It lives here, not with the renderer, so that inference (``ouroboros3d.inference.options``) builds
    the dataset's cameras without importing the renderer, trimesh or pandas. The params' rig is
    ``Params.render_settings`` (ouroboros3d.config): geometry imports nothing of the package.
    """

    resolution: int
    radius: float
    fov_deg: float
    orbit_frames: int
    view_frames: tuple[int, ...]


def object_cameras(
    settings: RenderSettings, elevation_deg: float, azimuth_offset_deg: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intrinsics (V,3,3), camera-to-world (V,4,4) and azimuths (V,) of one object's views."""
    azimuths = default_view_layout(settings.orbit_frames, settings.view_frames, azimuth_offset_deg)
    c2w = orbit_c2w(azimuths, elevation_deg, settings.radius)
    K = intrinsics(settings.fov_deg, settings.resolution).expand(len(azimuths), 3, 3).contiguous()
    return K, c2w, azimuths

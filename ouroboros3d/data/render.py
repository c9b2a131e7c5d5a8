"""CPU ray-cast renderer: exact z-depth, alpha and Lambert-shaded RGB of a mesh.

One ray per pixel, through the pixel centre (``ouroboros3d.geometry.cameras.camera_rays``), cast with
trimesh + embree. The first hit gives the face, the exact float64 hit point and from it the
z-depth along the camera's optical axis. There is no anti-aliasing on purpose: alpha, depth
and the CCM derived from depth all agree on which pixels are object (render larger and
downsample if smooth edges matter).

Shading is two-sided Lambert (normals turned towards the camera, since scans mix triangle
windings) with smooth normals that stay sharp at creases over 40 degrees
(:func:`~ouroboros3d.data.mesh.crease_normals`), under :data:`DEFAULT_LIGHTS`, a rig FIXED IN
THE WORLD: ambient 0.35, a key light of 0.6 from above on the +X/+Y side (direction
(1, 0.5, 0.8)) and a fill of 0.3 from the opposite side, slightly below ((-0.6, -0.8, -0.2)).
Lambert shading under world-fixed lights does not depend on the viewpoint, so a surface
point has the same colour in every view that sees it. Colour = albedo x shading, clipped to
[0, 1]; the background is white with alpha 0 and depth 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
import trimesh.ray

from ..geometry.cameras import camera_rays
from .mesh import albedo_lookup, crease_normals

__all__ = ["DEFAULT_LIGHTS", "LightRig", "RenderedViews", "render_views", "require_embree"]


@dataclass(frozen=True)
class LightRig:
    """Directional lights fixed in the world: ``(direction towards the light, intensity)`` pairs."""

    ambient: float
    lights: tuple[tuple[tuple[float, float, float], float], ...]

    def shade(self, normals: np.ndarray) -> np.ndarray:
        """Lambert shading factor (N,) for unit normals (N, 3)."""
        shading = np.full(len(normals), self.ambient)
        for direction, intensity in self.lights:
            d = np.asarray(direction, dtype=np.float64)
            shading += intensity * np.clip(normals @ (d / np.linalg.norm(d)), 0.0, None)
        return shading


DEFAULT_LIGHTS = LightRig(
    ambient=0.35,
    lights=(
        ((1.0, 0.5, 0.8), 0.6),  # key: above, from the +X/+Y quadrant
        ((-0.6, -0.8, -0.2), 0.3),  # fill: the opposite side, slightly below
    ),
)


@dataclass
class RenderedViews:
    """The renders of one object: ``V`` views of ``H x W`` pixels."""

    rgb: np.ndarray  # (V, H, W, 3) uint8, object over a white background
    alpha: np.ndarray  # (V, H, W) uint8, 255 where the pixel-centre ray hits the object, else 0
    depth: np.ndarray  # (V, H, W) float32 z-depth, 0 on the background

    def foreground_pixels(self) -> np.ndarray:
        """Number of object pixels per view (V,)."""
        return (self.alpha > 0).reshape(len(self.alpha), -1).sum(axis=1)


def require_embree() -> None:
    """Fail loudly instead of letting trimesh fall back to its slow pure-Python intersector."""
    if not trimesh.ray.has_embree:
        raise RuntimeError(
            "trimesh cannot use embree (trimesh.ray.has_embree is False): install the pip package 'embreex'; "
            "the pure-Python ray intersector is far too slow to render the dataset"
        )


def render_views(
    mesh: trimesh.Trimesh,
    K: torch.Tensor,
    c2w: torch.Tensor,
    height: int,
    width: int,
    lights: LightRig = DEFAULT_LIGHTS,
) -> RenderedViews:
    """Render ``mesh`` (already in world coordinates) from cameras ``K`` (V,3,3), ``c2w`` (V,4,4)."""
    require_embree()
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    num_views = len(c2w)
    # float64 rays through pixel centres from the (float32) cameras that will be stored
    origins, dirs = camera_rays(K.double(), c2w.double(), height, width)
    origins, dirs = origins.reshape(-1, 3).numpy(), dirs.reshape(-1, 3).numpy()
    forward = np.repeat(c2w[:, :3, 2].double().numpy(), height * width, axis=0)

    locations, ray_ids, face_ids = RayMeshIntersector(mesh).intersects_location(origins, dirs, multiple_hits=False)

    depth = np.zeros(len(origins))
    depth[ray_ids] = np.einsum("nc,nc->n", locations - origins[ray_ids], forward[ray_ids])
    hit = np.zeros(len(origins), dtype=bool)
    hit[ray_ids] = True

    rgb = np.ones((len(origins), 3))
    if len(ray_ids):
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face_ids], locations)
        bary = np.clip(bary, 0.0, 1.0)
        bary /= bary.sum(axis=1, keepdims=True)
        normals = np.einsum("nk,nkc->nc", bary, crease_normals(mesh)[face_ids])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        # two-sided: turn the normal towards the camera when its FACE faces away
        facing_away = np.einsum("nc,nc->n", np.asarray(mesh.face_normals)[face_ids], dirs[ray_ids]) > 0
        normals = np.where(facing_away[:, None], -normals, normals)
        albedo = albedo_lookup(mesh)(face_ids, bary)
        rgb[ray_ids] = np.clip(albedo * lights.shade(normals)[:, None], 0.0, 1.0)

    shape = (num_views, height, width)
    return RenderedViews(
        rgb=np.round(rgb * 255).astype(np.uint8).reshape(*shape, 3),
        alpha=(hit * 255).astype(np.uint8).reshape(shape),
        depth=depth.astype(np.float32).reshape(shape),
    )

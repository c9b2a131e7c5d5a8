"""A coloured triangle mesh from 3D Gaussians: depth fusion (TSDF) and marching cubes.

Gaussians have no surface of their own, so the mesh is the surface that the *renderer* shows:

1. render the Gaussians' z-depth, alpha and colour from ``num_cameras`` cameras spread over
   a sphere around the object (:func:`ouroboros3d.gaussians.splatting.render`);
2. fuse the depth maps into a truncated signed distance field (TSDF) on a ``resolution``³
   grid over the cube ``[-bound, bound]³``, and the colours into a colour volume;
3. extract the zero level set with marching cubes (scikit-image) and colour its vertices
   from the colour volume;
4. keep the largest connected piece (floaters, stray Gaussians, go).

Grid voxels never seen from outside (the object's inside) count as inside, and the grid is
padded with a layer of "outside", so the surface is closed: the mesh is watertight.

Accuracy and limits: the rendered depth is the alpha-weighted mean of the Gaussians' centre
depths, so on opaque Gaussians the surface lies within about one Gaussian size and one pixel
footprint of the Gaussians' own surface, plus half a voxel from marching cubes. Where the
Gaussians are semi-transparent, a pixel's depth mixes front and back surfaces and the fusion
carves into the object: the mesh shows what the renderer shows, no more.

    from ouroboros3d.gaussians.meshing import gaussians_to_mesh, write_mesh

    camera = params.camera                       # the cameras the model was trained with
    mesh = gaussians_to_mesh(result.gaussians, radius=camera.radius, fov_deg=camera.fov_deg)
    write_mesh(mesh, "outputs/mug")              # mesh.glb and mesh.obj
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_write_bytes
from ..geometry import cameras
from .container import Gaussians
from .splatting import render

__all__ = [
    "Fusion",
    "MeshError",
    "camera_sphere",
    "fuse_gaussians",
    "fuse_tsdf",
    "gaussians_to_mesh",
    "mesh_from_fusion",
    "write_mesh",
]

MAX_ELEVATION_DEG = 80.0  # orbit cameras cannot look straight down the up axis (cameras.look_at)


class MeshError(UserError):
    """The Gaussians give no surface to mesh (all transparent, or outside the grid)."""


def camera_sphere(count: int, radius: float) -> torch.Tensor:
    """``count`` camera-to-world matrices (count, 4, 4) looking at the origin from a Fibonacci sphere.

    A Fibonacci lattice spreads the viewing directions evenly, so the fused depth covers every
    side of the object about equally; elevations are clamped to ±80° (see ``MAX_ELEVATION_DEG``).
    """
    i = torch.arange(count, dtype=torch.float64) + 0.5
    elevation = torch.rad2deg(torch.asin(1.0 - 2.0 * i / count)).clamp(-MAX_ELEVATION_DEG, MAX_ELEVATION_DEG)
    azimuth = torch.rad2deg(i * math.pi * (3.0 - math.sqrt(5.0)))  # the golden angle
    return cameras.orbit_c2w(azimuth, elevation, radius)


def _voxel_centres(resolution: int, bound: float) -> torch.Tensor:
    """(R³, 3) world positions of the grid's voxel centres, x-major (volume index [x, y, z])."""
    step = 2.0 * bound / resolution
    axis = -bound + step * (torch.arange(resolution, dtype=torch.float32) + 0.5)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def fuse_tsdf(
    depth: torch.Tensor,
    colour: torch.Tensor,
    K: torch.Tensor,
    c2w: torch.Tensor,
    resolution: int,
    bound: float,
    truncation: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuse C depth maps (C, H, W) and colour maps (C, 3, H, W) into volumes over ``[-bound, bound]³``.

    Each voxel averages, over the cameras that see it, the truncated signed distance
    ``clamp(d - z, ±truncation) / truncation`` between the rendered depth ``d`` of its pixel
    and its own depth ``z`` (positive in front of the surface); a background pixel (depth 0)
    sees free space, +1. Voxels more than ``truncation`` behind the surface are occluded and
    not updated; a voxel no camera updates (the object's inside) is -1. Colours are averaged
    over the cameras whose rendered surface lies within a voxel of the voxel (a wider band
    would blur them: an oblique ray through a voxel meets the surface further along).

    Returns the TSDF (R, R, R) in [-1, 1], the colour sums (R, R, R, 3) and their weights (R, R, R).
    """
    points = _voxel_centres(resolution, bound).to(depth.device)
    voxel = 2.0 * bound / resolution
    height, width = depth.shape[-2:]
    tsdf_sum = torch.zeros(len(points), device=depth.device)
    weight = torch.zeros_like(tsdf_sum)
    colour_sum = torch.zeros(len(points), 3, device=depth.device)
    colour_weight = torch.zeros_like(tsdf_sum)
    for d, rgb, k, pose in zip(depth, colour, K, c2w, strict=True):
        uv, z = cameras.project(points, k, torch.linalg.inv(pose))
        col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()  # pixel (row, col) covers [col, col+1)
        seen = (z > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        surface = torch.zeros_like(z)
        surface[seen] = d[row[seen], col[seen]]
        free = seen & (surface == 0)  # background: nothing along this ray
        sdf = surface - z
        observed = free | (seen & (sdf > -truncation))  # more than `truncation` behind: occluded
        tsdf_sum += torch.where(free, 1.0, sdf.clamp(max=truncation) / truncation) * observed
        weight += observed.float()
        on_surface = seen & ~free & (sdf.abs() < voxel)  # the pixel shows the voxel's own bit of surface
        colour_sum[on_surface] += rgb[:, row[on_surface], col[on_surface]].T
        colour_weight += on_surface.float()
    tsdf = torch.where(weight > 0, tsdf_sum / weight.clamp_min(1.0), -1.0)
    shape = (resolution,) * 3
    return tsdf.reshape(shape), colour_sum.reshape(*shape, 3), colour_weight.reshape(shape)


def _render_views(
    gaussians: Gaussians, c2w: torch.Tensor, fov_deg: float, size: int, alpha_threshold: float, chunk: int = 8
):
    """Depth (C, H, W), un-premultiplied colour (C, 3, H, W) and intrinsics (C, 3, 3) of one object at ``c2w``."""
    K = cameras.intrinsics(fov_deg, size).expand(len(c2w), 3, 3).contiguous().to(gaussians.device)
    c2w = c2w.to(gaussians.device)
    depths, colours = [], []
    with torch.no_grad():
        for s in range(0, len(c2w), chunk):
            cams = K[s : s + chunk], c2w[s : s + chunk]
            out = render(gaussians, *cams, size, size, background=0.0, depth_alpha_threshold=alpha_threshold)
            depths.append(out.depth[0])
            colours.append(out.rgb[0] / out.alpha[0].clamp_min(1e-6))  # on black: dividing by alpha un-mixes it
    return torch.cat(depths), torch.cat(colours).clamp(0.0, 1.0), K


def _trilinear(volume: np.ndarray, index_points: np.ndarray) -> np.ndarray:
    """``volume`` (R, R, R[, C]) sampled at fractional voxel indices (N, 3), edges clamped."""
    from scipy.ndimage import map_coordinates

    channels = volume.reshape(*volume.shape[:3], -1)
    return np.stack(
        [map_coordinates(channels[..., c], index_points.T, order=1, mode="nearest") for c in range(channels.shape[-1])],
        axis=-1,
    )


@dataclass
class Fusion:
    """The fused volumes of one object: TSDF (R, R, R) in [-1, 1] (inside < 0), colour sums and weights."""

    tsdf: np.ndarray
    colour_sum: np.ndarray
    colour_weight: np.ndarray
    bound: float

    @property
    def voxel(self) -> float:
        return 2.0 * self.bound / self.tsdf.shape[0]


def fuse_gaussians(
    gaussians: Gaussians,
    *,
    radius: float,
    fov_deg: float,
    resolution: int = 96,
    num_cameras: int = 32,
    image_size: int = 128,
    bound: float = 0.6,
    truncation_voxels: float = 3.0,
    alpha_threshold: float = 0.5,
) -> Fusion:
    """Steps 1-2 of the module docstring for one object (B = 1).

    Args:
        gaussians: one object (use ``g[i]`` for a batch), on any device (rendered there).
        radius, fov_deg: the cameras' distance from the origin and field of view; the caller's
            (``params.camera``: the cameras the model was trained with, which frame the unit box).
        resolution: voxels per side of the fusion grid; the mesh's detail is ``2 bound / resolution``.
        num_cameras: depth maps fused, from a Fibonacci sphere of cameras (:func:`camera_sphere`).
        image_size: side of the rendered depth maps in pixels.
        bound: the grid is ``[-bound, bound]³``; objects live in the unit box ``[-0.5, 0.5]³``.
        truncation_voxels: the TSDF truncation, in voxels.
        alpha_threshold: pixels with less accumulated alpha are background (free space).
    """
    if gaussians.batch_size != 1:
        raise ValueError(f"gaussians_to_mesh meshes one object, got a batch of {gaussians.batch_size}: pass g[i]")
    if resolution < 4:
        raise ValueError(f"resolution must be >= 4 voxels, got {resolution}")
    voxel = 2.0 * bound / resolution
    c2w = camera_sphere(num_cameras, radius)
    depth, colour, K = _render_views(gaussians.detach(), c2w, fov_deg, image_size, alpha_threshold)
    volumes = fuse_tsdf(depth, colour, K, c2w.to(depth.device), resolution, bound, voxel * truncation_voxels)
    return Fusion(*(t.cpu().numpy() for t in volumes), bound=bound)


def mesh_from_fusion(fusion: Fusion):
    """Steps 3-4: marching cubes on the TSDF, vertex colours, the largest connected piece."""
    import trimesh
    from skimage.measure import marching_cubes

    # one layer of "outside" around the grid closes a surface that touches the grid's faces
    padded = np.pad(fusion.tsdf, 1, constant_values=1.0)
    if padded.min() >= 0.0:
        raise MeshError("no surface to mesh: the Gaussians render nothing inside the grid (all transparent?)")
    # inside is negative: "descent" (the default) then orients the faces outwards
    verts, faces, _, _ = marching_cubes(padded, level=0.0, gradient_direction="descent")
    index = verts - 1.0  # fractional indices into the unpadded volumes
    rgb = _trilinear(fusion.colour_sum, index) / np.maximum(_trilinear(fusion.colour_weight, index), 1e-6)
    colours = np.concatenate([np.clip(rgb * 255.0 + 0.5, 0, 255), np.full((len(rgb), 1), 255.0)], axis=1)
    mesh = trimesh.Trimesh(
        vertices=-fusion.bound + fusion.voxel * (index + 0.5),
        faces=faces,
        vertex_colors=colours.astype(np.uint8),
        process=False,
    )
    # the largest piece by face count (labelling faces is far cheaper than splitting into meshes)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    if labels.max() > 0:
        mesh.update_faces(labels == np.argmax(np.bincount(labels)))
        mesh.remove_unreferenced_vertices()
    return mesh


def gaussians_to_mesh(gaussians: Gaussians, **settings):
    """The surface of one object's Gaussians (B = 1) as a ``trimesh.Trimesh`` with vertex colours.

    ``settings`` are :func:`fuse_gaussians`' keywords: the cameras' ``radius`` and ``fov_deg``,
    which the caller must give, and the grid's and renders' sizes. Raises :class:`MeshError` when
    nothing is rendered inside the grid.
    """
    return mesh_from_fusion(fuse_gaussians(gaussians, **settings))


def write_mesh(mesh, folder: str | Path) -> dict[str, Path]:
    """Write ``mesh.glb`` (binary glTF) and ``mesh.obj`` (vertex colours as ``v x y z r g b``) atomically."""
    folder = Path(folder)
    files = {"mesh.glb": mesh.export(file_type="glb"), "mesh.obj": mesh.export(file_type="obj")}
    for name, data in files.items():
        atomic_write_bytes(folder / name, data.encode() if isinstance(data, str) else data)
    return {name: folder / name for name in files}

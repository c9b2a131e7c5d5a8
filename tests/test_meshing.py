"""Mesh export (ouroboros3d.gaussians.meshing): Gaussians on a sphere give back that sphere, watertight and coloured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from ouroboros3d.evaluation.metrics import chamfer_fscore
from ouroboros3d.gaussians.container import Gaussians
from ouroboros3d.gaussians.meshing import MeshError, gaussians_to_mesh, write_mesh

RADIUS = 0.3  # the sphere the Gaussians sit on
COUNT = 3000  # Gaussians on it
SPACING = math.sqrt(4 * math.pi * RADIUS**2 / COUNT)  # mean distance between neighbours, 0.019
SIGMA = 0.5 * SPACING  # neighbours overlap: an opaque shell with no holes between Gaussians
RED, BLUE = (0.9, 0.2, 0.1), (0.1, 0.3, 0.8)
# small settings keep each mesh under ~1 s on one thread
GRID, CAMERAS, IMAGE, BOUND, CAMERA_RADIUS, FOV = 40, 16, 128, 0.6, 2.2, 39.6
SETTINGS = dict(resolution=GRID, num_cameras=CAMERAS, image_size=IMAGE, bound=BOUND, radius=CAMERA_RADIUS, fov_deg=FOV)


def fibonacci_sphere(count: int, radius: float = 1.0) -> torch.Tensor:
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / count
    ring, phi = torch.sqrt(1 - z**2), i * math.pi * (3 - math.sqrt(5))
    return (radius * torch.stack([ring * phi.cos(), ring * phi.sin(), z], -1)).float()


def sphere_gaussians(count: int = COUNT, opacity: float = 0.9) -> Gaussians:
    """Isotropic Gaussians on the sphere, red above the equator and blue below."""
    means = fibonacci_sphere(count, RADIUS)
    colors = torch.where(means[:, 2:] > 0, torch.tensor(RED), torch.tensor(BLUE))
    return Gaussians(
        means=means[None],
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, count, 4).contiguous(),
        scales=torch.full((1, count, 3), SIGMA),
        opacities=torch.full((1, count), opacity),
        colors=colors[None],
    )


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    torch.set_num_threads(1)
    return gaussians_to_mesh(sphere_gaussians(), **SETTINGS)


def test_sphere_gives_a_watertight_sphere_close_to_it(sphere_mesh):
    mesh = sphere_mesh
    assert mesh.is_watertight and mesh.euler_number == 2  # closed, one piece, no handles: a sphere
    assert mesh.volume > 0  # faces point outwards
    # The error budget, each term an upper bound on how far the mesh may lie from the sphere:
    # half a voxel (marching cubes interpolates the zero crossing within a cell), one Gaussian
    # standard deviation (the rendered depth averages the centres of the overlapping Gaussians a
    # ray meets first; obliquely these sit towards the camera), and one pixel footprint at the
    # cameras' distance (the renderer's depth bias, see ouroboros3d.gaussians.splatting).
    voxel = 2 * BOUND / GRID
    pixel = 2 * CAMERA_RADIUS * math.tan(math.radians(FOV / 2)) / IMAGE
    bound = voxel / 2 + SIGMA + pixel  # 0.015 + 0.0097 + 0.0124 = 0.037 (the sphere's radius is 0.3)
    truth = fibonacci_sphere(20000, RADIUS).numpy()
    points = mesh.sample(20000, seed=0)
    cd = chamfer_fscore(points, truth)["cd"]  # the project's Chamfer: 0.5 (accuracy + completeness)
    assert cd < bound, f"Chamfer {cd:.4f} >= {bound:.4f}"  # measured 0.012
    radial = np.abs(np.linalg.norm(mesh.vertices, axis=1) - RADIUS)
    assert radial.max() < 2 * bound  # no part of the mesh strays, not only the mean
    # the same mesh is far from a sphere of another radius: the bound discriminates
    assert chamfer_fscore(points, truth * 1.3)["cd"] > 2 * bound


def test_glb_and_obj_reload_with_the_gaussians_colours(sphere_mesh, tmp_path):
    files = write_mesh(sphere_mesh, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb", "mesh.obj"]  # no temporary files left
    glb = trimesh.load(files["mesh.glb"], force="mesh")
    assert len(glb.vertices) == len(sphere_mesh.vertices) and glb.is_watertight
    colours = glb.visual.vertex_colors[:, :3].astype(float) / 255
    z = glb.vertices[:, 2]
    # Away from the equator's seam each half has its Gaussians' colour. The seam blends over
    # about 0.08: the renderer's blend (2 sigma, 0.02), the colour band (a voxel, 0.03) and the
    # trilinear lookup of the vertex colours (a voxel). Past 0.1 only uint8 rounding and the
    # render's faint overlap of the other colour remain (measured: max 0.022, mean 0.004).
    away = 0.1
    for half, colour in ((z > away, RED), (z < -away, BLUE)):
        error = np.abs(colours[half] - colour)
        assert half.sum() > 100 and error.max() < 0.03 and error.mean() < 0.01, (colour, error.max(), error.mean())
    obj = trimesh.load(files["mesh.obj"], force="mesh", process=False)
    assert len(obj.vertices) == len(sphere_mesh.vertices)
    assert np.abs(obj.visual.vertex_colors[:, :3].astype(float) / 255 - colours).max() < 0.01


def test_floaters_are_dropped_and_the_sphere_kept():
    g = sphere_gaussians()
    blob = Gaussians(  # a small opaque cluster in a corner, apart from the sphere
        means=torch.tensor([[[0.45, 0.45, 0.45], [0.46, 0.45, 0.45], [0.45, 0.46, 0.46]]]),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, 3, 4).contiguous(),
        scales=torch.full((1, 3, 3), 0.03),
        opacities=torch.ones(1, 3),
        colors=torch.zeros(1, 3, 3),
    )
    both = Gaussians.cat([g, blob], dim=1)
    mesh = gaussians_to_mesh(both, **SETTINGS)
    assert np.linalg.norm(mesh.vertices, axis=1).max() < RADIUS + 0.05  # the cluster at 0.78 is gone
    assert mesh.is_watertight and mesh.euler_number == 2


def test_nothing_to_mesh_and_batches_are_errors():
    with pytest.raises(MeshError, match="no surface"):
        gaussians_to_mesh(sphere_gaussians(200, opacity=0.0), **SETTINGS)
    g = sphere_gaussians(200)
    with pytest.raises(ValueError, match="one object"):
        gaussians_to_mesh(Gaussians.cat([g, g]), **SETTINGS)

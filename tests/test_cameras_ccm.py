"""Cameras and canonical coordinate maps (supplementary section 1.2)."""

import math

import pytest
import torch

from ouroboros3d.geometry import cameras
from ouroboros3d.geometry.ccm import CCMNormalization, ccm_to_world, depth_to_ccm, depth_to_world, world_to_ccm

AZIMUTHS = torch.tensor([0.0, 45.0, 90.0, 170.0, 225.0, 337.5])


def test_orbit_camera_looks_at_origin_from_its_orbit_position():
    c2w = cameras.orbit_c2w(AZIMUTHS, 20.0, 2.2)
    centre = c2w[:, :3, 3]
    assert torch.allclose(centre.norm(dim=-1), torch.tensor(2.2), atol=1e-5)
    # z axis (forward) points at the origin; the optical axis passes through it
    forward = c2w[:, :3, 2]
    torch.testing.assert_close(forward, -centre / centre.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    # azimuth 0 is on +X, 90 on +Y; elevation above the XY plane
    assert centre[0, 0] > 0 and abs(centre[0, 1]) < 1e-6
    assert centre[2, 1] > 0 and abs(centre[2, 0]) < 1e-5
    assert torch.allclose(centre[:, 2], torch.tensor(2.2 * math.sin(math.radians(20))), atol=1e-5)
    # rotation part orthonormal and right-handed; y (down) has a negative world-Z component
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(6, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(R), torch.ones(6), atol=1e-6)
    assert torch.all(c2w[:, 2, 1] < 0)


def test_origin_projects_to_the_principal_point():
    K = cameras.intrinsics(39.6, 64)
    c2w = cameras.orbit_c2w(AZIMUTHS, -5.0, 1.742)
    uv, depth = cameras.project(torch.zeros(6, 1, 3), K, torch.linalg.inv(c2w))
    torch.testing.assert_close(uv, torch.full_like(uv, 32.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(depth, torch.full_like(depth, 1.742), atol=1e-5, rtol=0)


def test_intrinsics_field_of_view():
    K = cameras.intrinsics(90.0, 64)
    assert K[0, 0].item() == pytest.approx(32.0) and K[0, 2].item() == pytest.approx(32.0)
    with pytest.raises(ValueError, match="field of view"):
        cameras.intrinsics(0.0, 64)


def test_looking_along_the_up_axis_is_rejected():
    with pytest.raises(ValueError, match="elevation"):
        cameras.orbit_c2w(0.0, 90.0, 2.0)


def test_project_and_back_project_depth_returns_the_point():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(50, 3, generator=g) - 0.5
    K = cameras.intrinsics(39.6, 64)
    c2w = cameras.orbit_c2w(AZIMUTHS[:3], 15.0, 2.2)
    uv, depth = cameras.project(points.expand(3, 50, 3), K, torch.linalg.inv(c2w))
    # back-project each point from its own pixel position and depth
    rays = torch.cat([uv, torch.ones_like(uv[..., :1])], -1) @ torch.linalg.inv(K).T
    cam = rays * depth[..., None]
    world = cam @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]
    torch.testing.assert_close(world, points.expand(3, 50, 3), atol=1e-5, rtol=0)


def test_rays_pass_through_pixel_centres():
    K = cameras.intrinsics(50.0, 8)
    c2w = cameras.orbit_c2w(30.0, 10.0, 2.0)
    origins, dirs = cameras.camera_rays(K, c2w, 8, 8)
    points = origins + 1.7 * dirs
    uv, _ = cameras.project(points.reshape(1, -1, 3), K, torch.linalg.inv(c2w))
    expected = cameras.pixel_centers(8, 8)[..., :2].reshape(1, -1, 2)
    torch.testing.assert_close(uv, expected, atol=1e-4, rtol=0)


def test_plucker_rays_are_unit_and_moment_consistent():
    K = cameras.intrinsics(39.6, 16)
    c2w = cameras.orbit_c2w(AZIMUTHS, 25.0, 2.2)
    p = cameras.plucker_rays(K, c2w, 16, 16)
    assert p.shape == (6, 6, 16, 16)
    d, m = p[:, :3], p[:, 3:]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(6, 16, 16), atol=1e-6, rtol=0)
    # the moment is orthogonal to the direction, and is the same for any point on the ray
    assert (d * m).sum(1).abs().max() < 1e-5
    centre = c2w[:, :3, 3].view(6, 3, 1, 1)
    other = centre + 0.8 * d
    torch.testing.assert_close(torch.linalg.cross(other, d, dim=1), m, atol=1e-5, rtol=0)


def test_default_layout_is_the_papers_eight_of_sixteen_frames():
    az = cameras.default_view_layout()
    assert az.tolist() == [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 337.5]
    with pytest.raises(ValueError, match="input view"):
        cameras.default_view_layout(16, (2, 4))


# --- CCM -----------------------------------------------------------------------


def _sphere_depth(K, c2w, size, radius=0.4):
    """Analytic z-depth of a sphere at the origin, 0 where the ray misses."""
    origins, dirs = cameras.camera_rays(K, c2w, size, size)
    b = (origins * dirs).sum(-1)
    c = (origins**2).sum(-1) - radius**2
    disc = b**2 - c
    t = -b - torch.sqrt(disc.clamp(min=0))
    z_axis = c2w[..., None, None, :3, 2]
    depth = t * (dirs * z_axis).sum(-1)
    return torch.where(disc > 0, depth, torch.zeros_like(depth))


def test_ccm_round_trip_world_depth_ccm_world():
    K = cameras.intrinsics(39.6, 32)
    c2w = cameras.orbit_c2w(AZIMUTHS, 10.0, 2.2)
    depth = _sphere_depth(K, c2w, 32)
    mask = depth > 0
    assert mask.any(dim=(1, 2)).all()
    norm = CCMNormalization()
    ccm = depth_to_ccm(depth, K, c2w, norm)
    assert ccm.shape == (6, 3, 32, 32)
    world = ccm_to_world(ccm, norm)
    # every foreground pixel decodes to a point on the sphere it came from
    torch.testing.assert_close(world[mask].norm(dim=-1), torch.full((int(mask.sum()),), 0.4), atol=1e-5, rtol=0)
    torch.testing.assert_close(world[mask], depth_to_world(depth, K, c2w)[mask], atol=1e-5, rtol=0)
    assert torch.all(ccm.movedim(1, -1)[~mask] == norm.background)


def test_a_point_seen_from_two_views_has_the_same_ccm_in_both():
    K = cameras.intrinsics(39.6, 64)
    c2w = cameras.orbit_c2w(torch.tensor([0.0, 90.0]), 20.0, 2.2)
    depth = _sphere_depth(K, c2w, 64)
    # a sphere point visible from both cameras, nearer to the first one's line of sight
    point = 0.4 * torch.nn.functional.normalize(cameras.orbit_c2w(20.0, 20.0, 1.0)[:3, 3], dim=0)
    uv, _ = cameras.project(point.expand(2, 1, 3), K, torch.linalg.inv(c2w))
    pixels = [tuple((uv[v, 0].flip(0) - 0.5).round().long().tolist()) for v in range(2)]
    ccm = depth_to_ccm(depth, K, c2w)
    values = torch.stack([ccm[v, :, i, j] for v, (i, j) in enumerate(pixels)])
    # the nearest pixel centre lies within half a pixel of the point: a small tolerance
    torch.testing.assert_close(values, (point * 0.8 + 0.5).expand(2, 3), atol=0.01, rtol=0)
    torch.testing.assert_close(values[0], values[1], atol=0.01, rtol=0)
    # per-view normalised depth, the alternative the paper argues against, disagrees
    normalised = []
    for v, (i, j) in enumerate(pixels):
        fg = depth[v][depth[v] > 0]
        normalised.append(((depth[v, i, j] - fg.min()) / (fg.max() - fg.min())).item())
    assert abs(normalised[0] - normalised[1]) > 0.2


def test_global_normalisation_is_shared_but_per_view_depth_is_not():
    # Two views of the same surface point at different distances: the CCM agrees exactly,
    # depth-based maps (even normalised per view) do not.
    K = cameras.intrinsics(39.6, 64)
    point = torch.tensor([0.2, 0.1, 0.05])
    c2w = cameras.look_at(torch.tensor([[2.2, 0.4, 0.3], [0.9, 1.6, 0.8]]), point.expand(2, 3))
    uv, z = cameras.project(point.expand(2, 1, 3), K, torch.linalg.inv(c2w))
    # both cameras look straight at the point: it sits at the principal point of each
    torch.testing.assert_close(uv[:, 0], torch.full((2, 2), 32.0), atol=1e-4, rtol=0)
    depth = torch.zeros(2, 64, 64)
    # a fronto-parallel patch through the point in each view, at different depths per view
    depth[:, 28:36, 28:36] = z[:, 0].view(2, 1, 1)
    ccm = depth_to_ccm(depth, K, c2w)
    # pixel (31, 31)'s centre is (31.5, 31.5), half a pixel off the point: compare at 4 pixels around it
    centre = ccm[:, :, 31:33, 31:33].mean(dim=(-1, -2))
    torch.testing.assert_close(centre[0], centre[1], atol=2e-3, rtol=0)
    torch.testing.assert_close(centre[0], point * 0.8 + 0.5, atol=2e-3, rtol=0)
    assert abs(z[0, 0] - z[1, 0]) > 0.2  # yet their depths differ


def test_ccm_values_are_clamped_and_normalisation_validated():
    far = torch.tensor([[[[5.0, -5.0, 0.0]]]])
    ccm = world_to_ccm(far, torch.ones(1, 1, 1, dtype=torch.bool))
    assert ccm.flatten().tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="scale"):
        CCMNormalization(scale=0.0)


def test_back_projection_is_float64_maths_rounded_once():
    """The ccm stage's maths in float64, rounded once to float32: the same bits on every CPU
    (float32 einsum and inv end in kernel-dependent last bits). Checked against NumPy's float64."""
    import numpy as np

    K = cameras.intrinsics(39.6, 16)
    c2w = cameras.orbit_c2w(torch.tensor([0.0, 77.0]), 12.3, 2.2)
    depth = 2.0 + torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = depth_to_world(depth, K, c2w)
    uv1 = cameras.pixel_centers(16, 16, torch.float64).numpy()
    rays = np.einsum("ij,hwj->hwi", np.linalg.inv(K.double().numpy()), uv1)
    cam = rays[None] * depth.double().numpy()[..., None]
    R, t = c2w.double().numpy()[:, :3, :3], c2w.double().numpy()[:, :3, 3]
    ref = np.einsum("bij,bhwj->bhwi", R, cam) + t[:, None, None]
    assert ours.dtype == torch.float32
    assert np.array_equal(ours.numpy(), ref.astype(np.float32))  # bit-identical, not merely close
    # the cameras too: float64 trigonometry and look-at, rounded once
    assert cameras.orbit_c2w(30.0, 10.0, 2.2).dtype == torch.float32


def test_rays_are_made_on_the_cameras_device(monkeypatch):
    """The pixel grid is made on K's device (a CUDA run once failed here: the grid on the CPU
    beside cameras on the GPU). Without a GPU: the grid's device argument, and the meta device."""
    assert cameras.pixel_centers(4, 4, device="meta").device.type == "meta"
    asked = []
    make = cameras.pixel_centers
    monkeypatch.setattr(cameras, "pixel_centers", lambda *a, **k: asked.append((a, k)) or make(*a, **k))
    K, c2w = cameras.intrinsics(39.6, 8, 8).expand(2, 3, 3), cameras.orbit_c2w(AZIMUTHS[:2], 15.0, 2.2)
    cameras.plucker_rays(K, c2w, 8, 8)
    assert len(asked) == 1 and torch.device("cpu") in asked[0][0] + tuple(asked[0][1].values())

"""Gaussian splatting: the fast torch rasteriser against the dense reference, cameras, depth, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from ouroboros3d.gaussians.container import Gaussians
from ouroboros3d.gaussians.projection import project_gaussians
from ouroboros3d.gaussians.splatting import render, render_dense_reference
from ouroboros3d.geometry.cameras import default_view_layout, intrinsics, orbit_c2w, project
from ouroboros3d.geometry.ccm import depth_to_world

RADIUS, FOV = 2.2, 39.6


def cameras(views: int, size: int, elevation: float = 10.0, dtype=torch.float32):
    c2w = orbit_c2w(default_view_layout()[:views], elevation, RADIUS).to(dtype)
    K = intrinsics(FOV, size).to(dtype).expand(views, 3, 3)
    return K, c2w


def random_gaussians(b: int, n: int, seed: int = 0, dtype=torch.float32, spread: float = 0.8) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=((torch.rand(b, n, 3, generator=gen) - 0.5) * spread).to(dtype),
        quats=torch.nn.functional.normalize(torch.randn(b, n, 4, generator=gen), dim=-1).to(dtype),
        scales=(torch.rand(b, n, 3, generator=gen) * 0.05 + 0.005).to(dtype),
        opacities=(torch.rand(b, n, generator=gen) * 0.9 + 0.05).to(dtype),
        colors=torch.rand(b, n, 3, generator=gen).to(dtype),
    )


def assert_outputs_close(a, b, atol):
    for name in ("rgb", "alpha", "depth"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert torch.allclose(x, y, atol=atol, rtol=0), f"{name}: max diff {(x - y).abs().max().item():.2e}"


def test_fast_rasteriser_matches_dense_reference():
    g = random_gaussians(b=2, n=400, seed=1)
    K, c2w = cameras(views=3, size=40)
    fast = render(g, K, c2w, 40, 40, backend="torch")
    dense = render_dense_reference(g, K, c2w, 40, 40)
    assert fast.rgb.shape == (2, 3, 3, 40, 40) and fast.alpha.shape == (2, 3, 1, 40, 40)
    assert fast.depth.shape == (2, 3, 40, 40)
    assert_outputs_close(fast, dense, atol=2e-5)
    assert (fast.depth > 0).any() and (fast.alpha < 0.5).any()  # both foreground and background present


def test_dense_reference_agrees_on_opaque_overlaps_and_culled_gaussians():
    """Many opaque overlapping Gaussians (early termination matters), some behind the camera
    and some off-screen; a non-square image and a per-view background."""
    g = random_gaussians(b=1, n=300, seed=2, spread=1.2)
    g.opacities = torch.full_like(g.opacities, 0.995)
    g.means[0, :20] = torch.tensor([3.0, 0.0, 0.0])  # behind the camera at azimuth 180
    g.means[0, 20:40] = torch.tensor([0.0, 5.0, 0.0])  # off to the side
    K = intrinsics(FOV, 36, 28).expand(2, 3, 3)
    c2w = orbit_c2w(torch.tensor([0.0, 180.0]), 5.0, RADIUS)
    background = torch.tensor([[0.2, 0.3, 0.4], [1.0, 0.0, 0.5]])
    fast = render(g, K, c2w, 28, 36, background=background, backend="torch")
    dense = render_dense_reference(g, K, c2w, 28, 36, background=background)
    assert_outputs_close(fast, dense, atol=2e-5)
    assert torch.isfinite(fast.rgb).all()


def test_background_where_nothing_is_drawn():
    g = random_gaussians(b=2, n=30, seed=3, spread=0.2)
    g.scales = torch.full_like(g.scales, 0.01)
    K, c2w = cameras(views=2, size=32)
    out = render(g, K, c2w, 32, 32, background=(0.1, 0.6, 0.9))
    corners = out.rgb[..., :3, :3]  # the objects are small and centred: corners are empty
    assert torch.equal(out.alpha[..., :3, :3], torch.zeros_like(out.alpha[..., :3, :3]))
    assert torch.allclose(corners, torch.tensor([0.1, 0.6, 0.9]).view(1, 1, 3, 1, 1).expand_as(corners))
    assert torch.equal(out.depth[..., :3, :3], torch.zeros_like(out.depth[..., :3, :3]))
    empty = Gaussians(g.means[:, :0], g.quats[:, :0], g.scales[:, :0], g.opacities[:, :0], g.colors[:, :0])
    blank = render(empty, K, c2w, 32, 32, background=0.25)
    assert torch.equal(blank.rgb, torch.full_like(blank.rgb, 0.25)) and not blank.depth.any()


def test_single_gaussian_lands_where_cameras_project_says():
    """Sub-pixel check of the pixel-centre convention: the alpha-weighted centroid of a small
    isotropic Gaussian is its projected centre, and its depth is the camera z."""
    size = 48
    position = torch.tensor([[[0.13, -0.21, 0.08]]])
    g = Gaussians(
        means=position,
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),
        scales=torch.full((1, 1, 3), 0.03),
        opacities=torch.tensor([[0.6]]),  # below the 0.999 clamp: a pure Gaussian profile
        colors=torch.ones(1, 1, 3),
    )
    K, c2w = cameras(views=4, size=size, elevation=20.0)
    out = render(g, K, c2w, size, size, depth_alpha_threshold=0.3)
    uv, z = project(position[0].expand(4, 1, 3), K, torch.linalg.inv(c2w))
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for view in range(4):
        alpha = out.alpha[0, view, 0]
        centroid = torch.stack([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum()
        # 0.01 px: the 1/255 cut-off makes the sampled profile slightly asymmetric
        assert torch.allclose(centroid, uv[view, 0], atol=1e-2), (centroid, uv[view, 0])
        peak = divmod(int(alpha.argmax()), size)
        assert (peak[1], peak[0]) == tuple(int(c) for c in uv[view, 0].floor())
        assert out.depth[0, view, peak[0], peak[1]] == pytest.approx(float(z[view, 0]), abs=1e-5)


def test_opaque_surface_depth_back_projects_onto_the_surface():
    """A dense opaque sheet of flat Gaussians on the plane x = 0.1: depth maps back-projected
    with ccm.depth_to_world land on that plane, exactly when the camera faces the sheet and
    within one pixel footprint when it looks at it obliquely (expected depth averages the
    Gaussians' centre depths and the front-most dominate, a bias of under a pixel that shrinks
    with resolution)."""
    side = torch.arange(-0.3, 0.3 + 1e-6, 0.005)
    y, z = torch.meshgrid(side, side, indexing="ij")
    n = y.numel()
    means = torch.stack([torch.full((n,), 0.1), y.flatten(), z.flatten()], dim=-1)[None]
    g = Gaussians(
        means=means,
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, n, 4),
        scales=torch.tensor([1e-4, 0.004, 0.004]).expand(1, n, 3),  # thin along x
        opacities=torch.full((1, n), 0.99),
        colors=torch.rand(1, n, 3),
    )
    size = 48
    K = intrinsics(FOV, size).expand(3, 3, 3)
    c2w = orbit_c2w(torch.tensor([0.0, 35.0, -40.0]), torch.tensor([0.0, 25.0, -15.0]), RADIUS)
    out = render(g, K, c2w, size, size)
    points = depth_to_world(out.depth[0], K, c2w)  # (V, H, W, 3)
    inner = (out.depth[0] > 0) & (points[..., 1:].abs() < 0.27).all(-1)  # away from the soft edge
    assert inner.sum(dim=(1, 2)).min() > 150
    assert (out.alpha[0, :, 0][inner] > 0.99).all()
    error = (points[..., 0] - 0.1).abs()
    assert error[0][inner[0]].max() < 1e-4  # facing the sheet
    pixel_footprint = RADIUS / float(K[0, 0, 0])  # world size of a pixel at the sheet's distance
    assert error[1:][inner[1:]].max() < pixel_footprint


def test_gradients_reach_every_field_and_are_finite():
    g = random_gaussians(b=2, n=200, seed=4)
    g.means[0, :5] = torch.tensor([3.0, 0.0, 0.0])  # culled ones must not poison the gradient
    for field in ("means", "quats", "scales", "opacities", "colors"):
        getattr(g, field).requires_grad_(True)
    K, c2w = cameras(views=3, size=32)
    out = render(g, K, c2w, 32, 32)
    target = torch.rand_like(out.rgb)
    loss = (out.rgb - target).square().mean() + out.depth.mean() + out.alpha.mean()
    loss.backward()
    for field in ("means", "quats", "scales", "opacities", "colors"):
        grad = getattr(g, field).grad
        assert grad is not None and torch.isfinite(grad).all(), field
        assert grad.abs().sum() > 0, field


def test_fast_and_dense_gradients_agree():
    g = random_gaussians(b=1, n=60, seed=5)
    K, c2w = cameras(views=2, size=24)
    fields = ("means", "quats", "scales", "opacities", "colors")
    grads = []
    for fn in (render, render_dense_reference):
        leaves = {f: getattr(g, f).clone().requires_grad_(True) for f in fields}
        out = fn(Gaussians(**leaves), K, c2w, 24, 24)
        (out.rgb.square().sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
        grads.append([leaves[f].grad for f in fields])
    for name, a, b in zip(fields, *grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), f"{name}: {(a - b).abs().max().item():.2e}"


def test_finite_difference_gradients_float64():
    """gradcheck on a tiny case: 3 Gaussians, 2 views, 10x10 pixels, float64."""
    g = random_gaussians(b=1, n=3, seed=6, dtype=torch.float64, spread=0.3)
    g.scales = torch.full_like(g.scales, 0.08)
    K, c2w = cameras(views=2, size=10, dtype=torch.float64)

    def fn(means, quats, scales, opacities, colors):
        out = render(Gaussians(means, quats, scales, opacities, colors), K, c2w, 10, 10, depth_alpha_threshold=0.0)
        return out.rgb, out.alpha, out.depth

    inputs = tuple(
        getattr(g, f).clone().requires_grad_(True) for f in ("means", "quats", "scales", "opacities", "colors")
    )
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_shared_cameras_broadcast_and_float64():
    g = random_gaussians(b=2, n=100, seed=7)
    K, c2w = cameras(views=2, size=20)
    shared = render(g, K, c2w, 20, 20)
    batched = render(g, K.expand(2, 2, 3, 3), c2w.expand(2, 2, 4, 4), 20, 20)
    assert_outputs_close(shared, batched, atol=0)
    double = render(g.to(torch.float64), K.double(), c2w.double(), 20, 20)
    assert double.rgb.dtype == torch.float64
    assert_outputs_close(
        double.__class__(**{k: getattr(double, k).float() for k in ("rgb", "alpha", "depth")}), shared, 1e-5
    )


def test_bad_arguments():
    g = random_gaussians(b=2, n=10)
    K, c2w = cameras(views=2, size=16)
    with pytest.raises(ValueError, match="CUDA"):
        render(g, K, c2w, 16, 16, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        render(g, K, c2w, 16, 16, backend="opengl")
    with pytest.raises(ValueError, match="c2w"):
        render(g, K, c2w[:1], 16, 16)
    with pytest.raises(ValueError, match="K must be"):
        render(g, K.expand(3, 2, 3, 3), c2w, 16, 16)


def test_projection_matches_gsplat_reference_implementation():
    """Pins our EWA projection to gsplat's pure-PyTorch reference (a private module)."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = random_gaussians(b=1, n=200, seed=8)
    K, c2w = cameras(views=3, size=32)
    ours = project_gaussians(g, K, c2w, 40, 32)
    covars, _ = torch_impl._quat_scale_to_covar_preci(g.quats[0], g.scales[0], compute_preci=False)
    w2c = torch.linalg.inv(c2w)
    _, means2d, depths, conics, _ = torch_impl._fully_fused_projection(g.means[0], covars, w2c, K, 32, 40, eps2d=0.3)
    assert torch.allclose(ours.means2d, means2d, atol=1e-4)
    assert torch.allclose(ours.depths, depths, atol=1e-5)
    assert torch.allclose(ours.conics, conics, rtol=1e-3, atol=1e-5)


def test_opacity_aware_box_contains_every_visible_pixel():
    """Outside a Gaussian's box its alpha is below 1/255, so culling to the box loses nothing."""
    g = random_gaussians(b=1, n=50, seed=9)
    K, c2w = cameras(views=1, size=64)
    p = project_gaussians(g, K, c2w, 64, 64)
    rows, cols = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    for i in torch.nonzero(p.visible[0])[:, 0].tolist():
        (u, v), (a, b, c), o = p.means2d[0, i], p.conics[0, i], p.opacities[0, i]
        dx, dy = cols - u, rows - v
        alpha = o * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
        outside = ((dx.abs() > p.radii[0, i, 0]) | (dy.abs() > p.radii[0, i, 1])) & (alpha >= 1 / 255)
        assert not outside.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the gsplat CUDA backend needs a GPU")
def test_cuda_backend_matches_torch_backend():
    g = random_gaussians(b=2, n=2000, seed=10)
    K, c2w = cameras(views=4, size=64)
    on_cpu = render(g, K, c2w, 64, 64, backend="torch")
    gc = g.to("cuda")
    for field in ("means", "quats", "scales", "opacities", "colors"):
        getattr(gc, field).requires_grad_(True)
    on_gpu = render(gc, K.cuda(), c2w.cuda(), 64, 64, backend="cuda")
    for name in ("rgb", "alpha", "depth"):
        diff = (getattr(on_gpu, name).cpu() - getattr(on_cpu, name)).abs()
        # float32 with different summation orders; depth differs only where alpha sits at the threshold
        assert diff.quantile(0.999) < 1e-3 and diff.mean() < 1e-4, (name, diff.max().item())
    on_gpu.rgb.mean().backward()
    assert all(torch.isfinite(getattr(gc, f).grad).all() for f in ("means", "quats", "scales", "opacities", "colors"))
    assert math.isfinite(float(on_gpu.depth.sum()))


def test_bf16_gaussians_under_autocast_render_in_float32():
    """The rasterizer stays float32 whatever autocast surrounds it (bf16 training and sampling)."""
    K, c2w = cameras(2, 16)
    g = random_gaussians(1, 64)
    g16 = g.to(torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        out = render(g16, K, c2w, 16, 16)
    assert out.rgb.dtype == out.alpha.dtype == out.depth.dtype == torch.float32
    # exactly the float32 render of the bf16-rounded Gaussians: nothing inside ran in bf16
    assert_outputs_close(out, render(g16.to(torch.float32), K, c2w, 16, 16), atol=0)

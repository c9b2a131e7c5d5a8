"""The LGM-style Gaussian reconstructor: shapes, activations, pixel alignment, gradients, paper size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ouroboros3d.gaussians.splatting import render
from ouroboros3d.geometry.cameras import intrinsics, orbit_c2w, plucker_rays, project
from ouroboros3d.models.reconstructor import RAW_CHANNELS, Reconstructor, activate_gaussians, splat_rays

RADIUS, FOV = 2.2, 39.6


def tiny(**overrides) -> Reconstructor:
    config = dict(image_size=16, splat_size=8, down_channels=(8, 16), up_channels=(16,), attention_head_dim=8)
    config.update(overrides)
    return Reconstructor(**config)


def views(batch: int, size: int, n_views: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    azimuths = torch.arange(n_views) * (360.0 / n_views) + 15.0
    c2w = orbit_c2w(azimuths, 12.0, RADIUS)
    K = intrinsics(FOV, size).expand(n_views, 3, 3)
    plucker = plucker_rays(K, c2w, size, size).expand(batch, -1, -1, -1, -1)
    images = torch.rand(batch, n_views, 3, size, size, generator=gen)
    return images, plucker, K, c2w


def test_output_shapes_and_value_ranges():
    torch.manual_seed(0)
    model = tiny(scale_range=(0.003, 0.04))
    images, plucker, _, _ = views(batch=2, size=16)
    g = model(images, plucker, torch.tensor([0.3, 20.0]))
    n = 4 * 8 * 8
    assert model.num_gaussians == n
    assert g.means.shape == (2, n, 3) and g.quats.shape == (2, n, 4) and g.scales.shape == (2, n, 3)
    assert g.opacities.shape == (2, n) and g.colors.shape == (2, n, 3)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(2, n), atol=1e-6)
    assert ((g.opacities > 0) & (g.opacities < 1)).all() and ((g.colors > 0) & (g.colors < 1)).all()
    assert ((g.scales > 0.003) & (g.scales < 0.04)).all()
    # every Gaussian sits within ray_depth_bound + offset_bound * sqrt(3) of its ray's point nearest the origin
    p0, _ = splat_rays(plucker, 8)
    reach = (g.means.reshape(2, 4, 8, 8, 3) - p0).norm(dim=-1)
    assert (reach <= 0.9 + 0.1 * 3**0.5 + 1e-5).all()


def test_float_sigma_none_sigma_and_timestep_conditioning():
    torch.manual_seed(1)
    model = tiny()
    images, plucker, _, _ = views(batch=2, size=16)
    clean = model(images, plucker)  # sigma None: clean views
    assert torch.allclose(clean.means, model(images, plucker, 0.002).means)
    assert (clean.colors - model(images, plucker, 5.0).colors).abs().max() > 1e-4
    plain = tiny(timestep_conditioning=False)
    assert torch.equal(plain(images, plucker).colors, plain(images, plucker, 5.0).colors)


def test_gaussians_start_pixel_aligned_in_their_own_view():
    """With no free offset, the Gaussian of splat pixel (i, j) of view v lies on the ray through
    that splat pixel: it projects to the splat pixel's centre in view v's image."""
    torch.manual_seed(2)
    model = tiny(offset_bound=0.0)
    images, plucker, K, c2w = views(batch=1, size=16)
    g = model(images, plucker)
    uv, depth = project(g.means[0].reshape(4, 64, 3), K, torch.linalg.inv(c2w))
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    expected = torch.stack([cols + 0.5, rows + 0.5], dim=-1).reshape(64, 2) * (16 / 8)
    assert torch.allclose(uv, expected.expand(4, 64, 2), atol=1e-2)
    assert ((depth > RADIUS - 0.9 - 1e-4) & (depth < RADIUS + 0.9 + 1e-4)).all()


def test_color_skip_starts_every_gaussian_at_its_pixels_colour():
    torch.manual_seed(0)
    images, plucker, _, _ = views(batch=2, size=16)
    for skip in (True, False):
        model = tiny(color_skip=skip)
        with torch.no_grad():
            model.conv_out.weight.zero_()  # raw channels exactly 0: the prior alone
        colors = model(images, plucker, 1.0).colors
        if skip:  # 16² input, 8² splats: each Gaussian gets the mean of its 2x2 pixel block
            pooled = F.avg_pool2d(images.flatten(0, 1), 2).reshape(2, 4, 3, 8, 8).permute(0, 1, 3, 4, 2)
            torch.testing.assert_close(colors, pooled.reshape(2, -1, 3).clamp(0.01, 0.99))
        else:
            torch.testing.assert_close(colors, torch.full_like(colors, 0.5))
    # the colour stays learnable through the skip
    model = tiny(color_skip=True)
    model(images, plucker, 1.0).colors.sum().backward()
    assert model.conv_out.weight.grad.abs().sum() > 0


def test_splat_rays_point_nearest_origin():
    _, plucker, _, _ = views(batch=1, size=16)
    p0, direction = splat_rays(plucker, 8)
    assert p0.shape == direction.shape == (1, 4, 8, 8, 3)
    assert torch.allclose(direction.norm(dim=-1), torch.ones(1, 4, 8, 8), atol=1e-6)
    assert (p0 * direction).sum(-1).abs().max() < 1e-5  # p0 is perpendicular to the ray


def test_rotation_activation_is_per_gaussian_unlike_lgm():
    """Our activation normalises each Gaussian's own 4 channels; LGM's ``F.normalize`` on a
    (B, N, 4) tensor (default dim=1) normalises across Gaussians: non-unit, coupled quaternions."""
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(1, 10, RAW_CHANNELS, generator=gen)
    p0, direction = torch.zeros(1, 10, 3), F.normalize(torch.ones(1, 10, 3), dim=-1)

    def quats(r):
        return activate_gaussians(r, p0, direction, 0.9, 0.1, (0.001, 0.05)).quats

    bumped = raw.clone()
    bumped[0, 3, 8:12] += 2.0  # the rotation channels of Gaussian 3
    changed = (quats(bumped) - quats(raw)).abs().amax(-1)[0]
    assert changed[3] > 0 and torch.all(changed[torch.arange(10) != 3] == 0)
    assert torch.allclose(quats(raw).norm(dim=-1), torch.ones(1, 10))
    assert torch.allclose(quats(torch.zeros_like(raw)), torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, 10, 4))

    lgm_changed = (F.normalize(bumped[..., 8:12]) - F.normalize(raw[..., 8:12])).abs().amax(-1)[0]
    assert (lgm_changed > 0).all()  # LGM's version: every Gaussian's rotation moved
    assert not torch.allclose(F.normalize(raw[..., 8:12]).norm(dim=-1), torch.ones(1, 10))


def test_rendered_image_loss_reaches_every_parameter():
    torch.manual_seed(4)
    model = tiny()
    images, plucker, K, c2w = views(batch=2, size=16)
    g = model(images, plucker, torch.tensor([0.5, 3.0]))
    out = render(g, K, c2w, 16, 16)
    loss = (out.rgb - images).square().mean() + F.l1_loss(out.alpha, torch.ones_like(out.alpha))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_splat_size_must_follow_from_the_levels():
    with pytest.raises(ValueError, match="splats"):
        Reconstructor(image_size=64, splat_size=64, down_channels=(8, 16, 32), up_channels=(32, 16))
    with pytest.raises(ValueError, match="expected images"):
        tiny()(torch.rand(1, 3, 3, 16, 16), torch.rand(1, 3, 6, 16, 16))


def _preset_reconstructor(name: str) -> Reconstructor:
    from conftest import ROOT

    from ouroboros3d.build import build_reconstructor
    from ouroboros3d.config import load_params

    return build_reconstructor(load_params(ROOT / "params.yaml", preset=name))


def test_cpu_small_preset_size():
    model = _preset_reconstructor("cpu-small")
    assert (model.image_size, model.splat_size, model.num_gaussians) == (32, 16, 1024)
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 5e6  # 3.6M


def expected_parameter_count(config: dict) -> int:
    """Parameter count of the architecture described in the module docstring, by arithmetic."""

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    def lin(cin, cout):
        return cin * cout + cout

    emb = 4 * config["down_channels"][0] if config["timestep_conditioning"] else 0

    def res(cin, cout):
        return (
            2 * cin
            + conv(cin, cout, 3)
            + (lin(emb, 2 * cout) if emb else 0)
            + 2 * cout
            + conv(cout, cout, 3)
            + (conv(cin, cout, 1) if cin != cout else 0)
        )

    def attn(c):
        return 2 * c + lin(c, 3 * c) + lin(c, c)

    down, up, layers = config["down_channels"], config["up_channels"], config["layers_per_block"]
    total = (lin(down[0], emb) + lin(emb, emb) if emb else 0) + conv(9, down[0], 3)
    skips, ch = [down[0]], down[0]
    for i, (w, a) in enumerate(zip(down, config["down_attention"], strict=True)):
        for _ in range(layers):
            total += res(ch, w) + (attn(w) if a else 0)
            ch = w
            skips.append(w)
        if i < len(down) - 1:
            total += conv(w, w, 3)
            skips.append(w)
    total += 2 * res(ch, ch) + (attn(ch) if config["mid_attention"] else 0)
    for i, (w, a) in enumerate(zip(up, config["up_attention"], strict=True)):
        for _ in range(layers + 1):
            total += res(ch + skips.pop(), w) + (attn(w) if a else 0)
            ch = w
        if i < len(up) - 1:
            total += conv(w, w, 3)
    return total + 2 * ch + conv(ch, RAW_CHANNELS, 3)


def test_paper_preset_is_lgm_big_on_meta_device():
    """LGM big as used by the paper, built from params.yaml's `paper` preset: 4 x 256² views to
    4 x 128² = 65,536 Gaussians, LGM big's attention layout; on the meta device (no memory)."""
    with torch.device("meta"):
        model = _preset_reconstructor("paper")
        g = model(torch.empty(1, 4, 3, 256, 256), torch.empty(1, 4, 6, 256, 256), torch.ones(1))
    count = sum(p.numel() for p in model.parameters())
    print(f"paper reconstructor: {count:,} parameters, {g.num_gaussians:,} Gaussians per object")
    assert all(p.is_meta for p in model.parameters())
    assert g.means.shape == (1, 65536, 3) and g.quats.shape == (1, 65536, 4)
    assert count == expected_parameter_count(model.config)
    assert count == 423_852_239
    assert model.config["down_attention"] == (False, False, False, True, True, True)
    assert model.config["up_attention"] == (True, True, True, False, False)
    assert expected_parameter_count(tiny().config) == sum(p.numel() for p in tiny().parameters())

"""Gaussians container and the standard 3DGS .ply round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from ouroboros3d.gaussians.container import SH_C0, Gaussians, load_ply, rgb_to_sh_dc, save_ply, sh_dc_to_rgb

INRIA_PROPERTIES = [
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
]  # fmt: skip


def random_gaussians(b: int = 2, n: int = 50, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.rand(b, n, 3, generator=gen) - 0.5,
        quats=torch.nn.functional.normalize(torch.randn(b, n, 4, generator=gen), dim=-1),
        scales=torch.rand(b, n, 3, generator=gen) * 0.05 + 1e-3,
        opacities=torch.rand(b, n, generator=gen) * 0.98 + 0.01,
        colors=torch.rand(b, n, 3, generator=gen),
    )


def test_shapes_are_validated():
    g = random_gaussians()
    with pytest.raises(ValueError, match="opacities"):
        Gaussians(g.means, g.quats, g.scales, g.opacities[..., None], g.colors)
    with pytest.raises(ValueError, match="means"):
        Gaussians(g.means[0], g.quats, g.scales, g.opacities, g.colors)


def test_indexing_keeps_the_batch_axis_and_helpers():
    g = random_gaussians(b=3, n=7)
    one = g[1]
    assert one.batch_size == 1 and one.num_gaussians == 7
    assert torch.equal(one.means[0], g.means[1])
    assert torch.equal(g[-1].colors[0], g.colors[2])
    assert g[0:2].batch_size == 2 and len(g) == 3
    with pytest.raises(IndexError):
        g[3]
    assert g.to(torch.float64).dtype == torch.float64
    assert Gaussians.cat([g, g], dim=0).batch_size == 6
    assert Gaussians.cat([g, g], dim=1).num_gaussians == 14
    g.means.requires_grad_(True)
    assert not g.detach().means.requires_grad


def test_sh_dc_conversion():
    rgb = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(rgb_to_sh_dc(rgb), torch.tensor([-0.5, 0.0, 0.5]) / SH_C0)
    assert torch.allclose(sh_dc_to_rgb(rgb_to_sh_dc(rgb)), rgb)


def test_ply_round_trip_and_inria_layout(tmp_path):
    g = random_gaussians(b=2, n=64)
    path = save_ply(tmp_path / "sub" / "object.ply", g[1])
    assert path.exists()
    assert not [p for p in path.parent.iterdir() if p.name != "object.ply"], "temporary file left behind"

    vertex = PlyData.read(str(path))["vertex"]
    assert list(vertex.data.dtype.names) == INRIA_PROPERTIES
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in INRIA_PROPERTIES)
    assert vertex.count == 64
    # the file stores raw parameters: logit opacity, log scale, SH DC colour, wxyz quaternion
    column = {name: torch.from_numpy(np.asarray(vertex[name])).double() for name in INRIA_PROPERTIES}
    ref = g[1].to(torch.float64)
    assert torch.allclose(column["opacity"], torch.logit(ref.opacities[0]), atol=1e-5)
    assert torch.allclose(column["scale_1"], ref.scales[0, :, 1].log(), atol=1e-5)
    assert torch.allclose(column["f_dc_2"], (ref.colors[0, :, 2] - 0.5) / SH_C0, atol=1e-5)
    assert torch.allclose(column["rot_0"], ref.quats[0, :, 0], atol=1e-6)  # w first
    assert torch.all(column["nx"] == 0)

    loaded = load_ply(path)
    assert loaded.batch_size == 1 and loaded.num_gaussians == 64
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.allclose(getattr(loaded, name), getattr(g[1], name), atol=1e-5, rtol=1e-5), name


def test_ply_overwrite_pruning_and_extremes(tmp_path):
    g = random_gaussians(b=1, n=10)
    g.opacities[0, :4] = torch.tensor([0.0, 1.0, 0.001, 0.002])
    path = save_ply(tmp_path / "o.ply", random_gaussians(b=1, n=3))
    save_ply(path, g)  # overwriting an existing file
    loaded = load_ply(path)
    assert loaded.num_gaussians == 10
    assert torch.isfinite(torch.stack([loaded.opacities, loaded.scales[..., 0]])).all()
    assert loaded.opacities[0, 0] < 1e-5 and loaded.opacities[0, 1] > 1 - 1e-5

    pruned = load_ply(save_ply(tmp_path / "pruned.ply", g, min_opacity=0.005))
    assert pruned.num_gaussians == 10 - 3


def test_save_ply_needs_one_object(tmp_path):
    with pytest.raises(ValueError, match="one object"):
        save_ply(tmp_path / "x.ply", random_gaussians(b=2))


def test_load_ply_normalises_quaternions_and_rejects_other_files(tmp_path):
    g = random_gaussians(b=1, n=5)
    g.quats = g.quats * 3.0  # files from other tools may store raw quaternions
    loaded = load_ply(save_ply(tmp_path / "q.ply", g))
    assert torch.allclose(loaded.quats.norm(dim=-1), torch.ones(1, 5), atol=1e-6)

    from plyfile import PlyElement

    points = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(points, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(ValueError, match="not a 3DGS"):
        load_ply(tmp_path / "points.ply")

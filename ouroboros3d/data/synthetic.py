"""Synthetic inputs for tests, benchmarks and the GPU check: no rendering, no data on disk.

Nothing in the DVC pipeline imports this module.
"""

from __future__ import annotations

import torch

from ..geometry import cameras
from ..gaussians.container import Gaussians

__all__ = ["shell_gaussians", "synthetic_batch"]


def synthetic_batch(params, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Views of coloured discs on white, with cameras of the params' layout.

    The disc sits off-centre and moves across the image as the camera turns: the views differ
    from the input view, as real orbits do (residual diffusion then has something to learn).
    """
    g = torch.Generator().manual_seed(seed)
    res, v = params.data.resolution, params.camera.num_views
    az = cameras.default_view_layout(params.camera.orbit_frames, params.camera.view_frames)
    c2w = cameras.orbit_c2w(az, 10.0, params.camera.radius).expand(batch_size, v, 4, 4).contiguous()
    K = cameras.intrinsics(params.camera.fov_deg, res).expand(batch_size, v, 3, 3).contiguous()
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    cx = res / 2 - 0.5 + (res / 6) * torch.sin(torch.deg2rad(az.float()))
    disc = (((yy - res / 2 + 0.5) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < (res / 4) ** 2).float()
    alpha = disc[:, None].expand(batch_size, v, 1, res, res).contiguous()
    colour = torch.rand(batch_size, 1, 3, 1, 1, generator=g)
    views = alpha * colour + (1 - alpha)
    return {"views": views, "input_view": views[:, 0], "alpha": alpha, "K": K, "c2w": c2w}


def shell_gaussians(b: int, n: int, seed: int = 0) -> Gaussians:
    """A reconstructor-like cloud: ``b`` objects of ``n`` surface Gaussians on a shell of radius 0.35."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=gen), dim=-1)
    return Gaussians(
        means=direction * (0.35 + 0.03 * torch.randn(b, n, 1, generator=gen)),
        quats=torch.nn.functional.normalize(torch.randn(b, n, 4, generator=gen), dim=-1),
        scales=0.002 + 0.03 * torch.rand(b, n, 3, generator=gen),
        opacities=0.5 + 0.5 * torch.rand(b, n, generator=gen),
        colors=torch.rand(b, n, 3, generator=gen),
    )

"""EWA projection of 3D Gaussians into a batch of cameras: the rasterisers' shared first step.

Each Gaussian's 3D covariance ``R S S^T R^T`` (quaternion and scales) goes into the camera and
through the Jacobian of the perspective projection (the view angle clamped to 1.3x the field of
view, as gsplat does, so off-screen Gaussians do not blow up), plus a ``0.3`` px² low-pass
dilation; then culling: behind the near plane, opacity below 1/255, or an opacity-aware
bounding box that misses the image. The numbers are gsplat 1.5.3's (see
:mod:`ouroboros3d.gaussians.splatting` for the whole image model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .container import Gaussians

__all__ = [
    "FAR_PLANE",
    "NEAR_PLANE",
    "ProjectedGaussians",
    "batched_cameras",
    "project_gaussians",
    "quat_to_rotmat",
    "rigid_inverse",
]

# gsplat 1.5.3's constants (cuda/include/Common.h, the projection kernels)
EPS2D = 0.3  # px², the low-pass dilation of every projected covariance
MIN_ALPHA = 1.0 / 255.0  # a pixel skips Gaussians fainter than this
MAX_BOX_SIGMAS = 3.33  # bounding-box half-size cap in standard deviations
NEAR_PLANE = 0.01
FAR_PLANE = 1e10


@dataclass
class ProjectedGaussians:
    """Gaussians projected into I = B*V images (internal; the rasterisers' input).

    means2d (I, N, 2) pixel coordinates; conics (I, N, 3) the inverse 2D covariance
    ``[[a, b], [b, c]]`` as ``(a, b, c)``; depths (I, N) camera z; opacities (I, N);
    colors (I, N, 3); radii (I, N, 2) integer bounding-box half-sizes in pixels;
    in_frustum (I, N) between the near and far planes; visible (I, N) not culled at all.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    radii: torch.Tensor
    in_frustum: torch.Tensor
    visible: torch.Tensor


def rigid_inverse(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera (..., 4, 4) of a rigid camera-to-world: ``[R^T, -R^T t]``."""
    rot_t = c2w[..., :3, :3].transpose(-1, -2)
    w2c = torch.zeros_like(c2w)
    w2c[..., :3, :3] = rot_t
    w2c[..., :3, 3] = -(rot_t @ c2w[..., :3, 3:4])[..., 0]
    w2c[..., 3, 3] = 1.0
    return w2c


def batched_cameras(gaussians: Gaussians, K: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast (V, ...) cameras to every object: K (B, V, 3, 3) and c2w (B, V, 4, 4)."""
    b = gaussians.batch_size
    if K.ndim == 3:
        K = K.expand(b, *K.shape)
    if c2w.ndim == 3:
        c2w = c2w.expand(b, *c2w.shape)
    if K.ndim != 4 or K.shape[-2:] != (3, 3) or K.shape[0] != b:
        raise ValueError(f"K must be (B, V, 3, 3) or (V, 3, 3) with B = {b}, got {tuple(K.shape)}")
    if c2w.shape != (*K.shape[:2], 4, 4):
        raise ValueError(f"c2w must be {(*K.shape[:2], 4, 4)} to match K, got {tuple(c2w.shape)}")
    return K.to(gaussians.means), c2w.to(gaussians.means)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of wxyz quaternions (..., 4); normalised here first."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def project_gaussians(
    gaussians: Gaussians,
    K: torch.Tensor,
    c2w: torch.Tensor,
    height: int,
    width: int,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> ProjectedGaussians:
    """EWA-project B objects' Gaussians into their V cameras each (step 1 and 2 of the module docstring).

    K (B, V, 3, 3) or (V, 3, 3); c2w likewise (4, 4). Differentiable in every Gaussian field.
    """
    K, c2w = batched_cameras(gaussians, K, c2w)
    b, v = K.shape[:2]
    n = gaussians.num_gaussians
    w2c = rigid_inverse(c2w)
    rot_wc, trans_wc = w2c[..., :3, :3], w2c[..., :3, 3]
    means_c = torch.einsum("bvij,bnj->bvni", rot_wc, gaussians.means) + trans_wc[:, :, None, :]
    x, y, z = means_c.unbind(-1)
    in_frustum = (z > near_plane) & (z < far_plane)
    # Culled Gaussians are masked out later, but a 0/0 or x/0 here would still turn their zero
    # gradients into NaN, so they are projected at a harmless depth instead.
    z = torch.where(in_frustum, z, torch.ones_like(z))

    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]  # (B, V, 1)
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    u, vv = fx * x / z + cx, fy * y / z + cy

    # Jacobian of (x, y, z) -> (fx x/z + cx, fy y/z + cy), evaluated with the view angle
    # clamped to 1.3x the half field of view as gsplat does: keeps Gaussians far outside the
    # image from getting huge 2D footprints.
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = z * torch.clamp(x / z, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    ty = z * torch.clamp(y / z, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)

    # M = R_wc R_q S: the 3D covariance in the camera is M M^T, the 2D one (J M)(J M)^T
    rot_scale = quat_to_rotmat(gaussians.quats) * gaussians.scales[..., None, :]  # (B, N, 3, 3)
    m = torch.einsum("bvij,bnjk->bvnik", rot_wc, rot_scale)  # (B, V, N, 3, 3)
    jm_x = (fx / z)[..., None] * m[..., 0, :] - (fx * tx / (z * z))[..., None] * m[..., 2, :]
    jm_y = (fy / z)[..., None] * m[..., 1, :] - (fy * ty / (z * z))[..., None] * m[..., 2, :]
    cov_a = (jm_x * jm_x).sum(-1) + EPS2D
    cov_b = (jm_x * jm_y).sum(-1)
    cov_c = (jm_y * jm_y).sum(-1) + EPS2D
    det = cov_a * cov_c - cov_b * cov_b
    det_safe = det.clamp_min(1e-10)
    conics = torch.stack([cov_c / det_safe, -cov_b / det_safe, cov_a / det_safe], dim=-1)

    opacities = gaussians.opacities[:, None, :].expand(b, v, n)
    with torch.no_grad():
        # opacity-aware box: beyond sqrt(2 ln(255 o)) sigmas alpha is below 1/255
        sigmas = torch.sqrt(2.0 * torch.log((opacities * 255.0).clamp_min(1.0))).clamp(max=MAX_BOX_SIGMAS)
        radii = torch.stack([torch.ceil(sigmas * cov_a.sqrt()), torch.ceil(sigmas * cov_c.sqrt())], dim=-1)
        inside = (
            (u + radii[..., 0] > 0)
            & (u - radii[..., 0] < width)
            & (vv + radii[..., 1] > 0)
            & (vv - radii[..., 1] < height)
        )
        visible = in_frustum & (det > 0) & (opacities >= MIN_ALPHA) & inside
        radii = torch.where(visible[..., None], radii, torch.zeros_like(radii)).long()

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b * v, *t.shape[2:])

    return ProjectedGaussians(
        means2d=flat(torch.stack([u, vv], dim=-1)),
        conics=flat(conics),
        depths=flat(z),
        opacities=flat(opacities),
        colors=flat(gaussians.colors[:, None].expand(b, v, n, 3)),
        radii=flat(radii),
        in_frustum=flat(in_frustum),
        visible=flat(visible),
    )

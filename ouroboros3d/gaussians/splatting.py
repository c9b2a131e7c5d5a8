"""Differentiable 3D Gaussian splatting: RGB, alpha and z-depth at any batch of cameras.

One public entry point, :func:`render`, with two backends that compute the same image:

* ``"cuda"``: gsplat's fused CUDA rasteriser (``gsplat.rasterization``), for tensors on a GPU.
* ``"torch"``: a pure-PyTorch rasteriser for the CPU, differentiable by autograd and
  vectorised over objects, views, Gaussians and pixels (no Python loop over any of them).

and :func:`render_dense_reference`, which evaluates every Gaussian at every pixel and
exists so that tests can hold the fast path against it.

The image model is gsplat's "classic" 3DGS (the numbers are gsplat 1.5.3's CUDA kernels,
so both backends agree):

1. EWA projection (:mod:`.projection`): 3D covariance ``R S S^T R^T`` from the quaternion and scales, into the
   camera, through the Jacobian of the perspective projection (view angle clamped to 1.3x
   the field of view, as gsplat does, so off-screen Gaussians do not blow up), plus a
   ``0.3`` px² low-pass dilation on the 2D covariance.
2. Culling: behind the near plane (0.01), opacity below 1/255, or a bounding box of
   ``min(3.33, sqrt(2 ln(255 o)))`` sigmas (the opacity-aware box: outside it the Gaussian's
   alpha is below 1/255) that misses the image.
3. Per pixel, front to back by the Gaussians' camera z (ties broken by Gaussian index):
   ``alpha_i = min(0.999, o_i exp(-q_i/2))`` at the pixel centre, skipped when below 1/255;
   weight ``w_i = alpha_i T_i`` with ``T_i = prod_{j<i} (1 - alpha_j)``; a pixel stops before
   the Gaussian that would bring its transmittance to ``1e-4`` or below. (The clamp is
   gsplat's 0.999, not the INRIA rasteriser's 0.99, so that the two backends agree.)

Outputs follow :mod:`ouroboros3d.geometry.cameras`: OpenCV cameras, pixel centres at ``(j + 0.5, i + 0.5)``,
z-depth. ``depth`` is the alpha-normalised expected z, ``sum w_i z_i / sum w_i``, where the
accumulated alpha exceeds a threshold and exactly 0 elsewhere, the background convention of
the dataset's depth maps and of :func:`ouroboros3d.geometry.ccm.depth_to_ccm`. It averages the
Gaussians' *centre* depths, so on an opaque surface seen obliquely the front-most Gaussians
covering a pixel dominate and the depth is biased towards the camera by up to about one
pixel footprint (exact on a surface facing the camera; the bias halves when the resolution
doubles). gsplat's "ED" mode is the same quantity.

How the torch backend is fast: each Gaussian is expanded to the pixels of its bounding box
(a per-pixel tile culling, tighter than 16x16 tiles), an autograd-free pass evaluates alpha
and transmittance on those (pixel, Gaussian) pairs, and only the pairs that contribute (alpha
>= 1/255, not past early termination) go through the differentiable pass. There, the
front-to-back product of ``1 - alpha`` per pixel is a segmented cumulative sum of
``log(1 - alpha)`` over the pairs sorted by (pixel, depth), in float64 so that the global
running sum loses nothing, and the pixel sums are one ``index_add``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .container import Gaussians
from .projection import (
    EPS2D,
    FAR_PLANE,
    MIN_ALPHA,
    NEAR_PLANE,
    ProjectedGaussians,
    batched_cameras,
    project_gaussians,
    rigid_inverse,
)

__all__ = ["RenderOutput", "render", "render_dense_reference"]

# gsplat 1.5.3's compositing constants (cuda/include/Common.h, RasterizeToPixels3DGSFwd.cu)
MAX_ALPHA = 0.999  # a single Gaussian never makes a pixel fully opaque (keeps log(1 - alpha) finite)
MIN_TRANSMITTANCE = 1e-4  # a pixel stops before its transmittance would drop to this

Backend = Literal["auto", "torch", "cuda"]


@dataclass
class RenderOutput:
    """Rendered maps of B objects at V cameras each.

    rgb:   (B, V, 3, H, W) colour composited over the background.
    alpha: (B, V, 1, H, W) accumulated opacity in [0, 1].
    depth: (B, V, H, W)    expected z-depth where alpha > the threshold, 0 elsewhere.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Compositing (pure PyTorch)
# ---------------------------------------------------------------------------------------------
def _pair_alpha(attrs: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha of Gaussians at pixel centres; ``attrs`` rows start (u, v, a, b, c, opacity).

    Returns the clamped alpha and the mask of alphas that count (>= 1/255, sane quadric).
    """
    dx = px + 0.5 - attrs[..., 0]
    dy = py + 0.5 - attrs[..., 1]
    quad = 0.5 * (attrs[..., 2] * dx * dx + attrs[..., 4] * dy * dy) + attrs[..., 3] * dx * dy
    alpha = (attrs[..., 5] * torch.exp(-quad)).clamp(max=MAX_ALPHA)
    return alpha, (alpha >= MIN_ALPHA) & (quad >= 0)


def _segment_transmittance(alpha: torch.Tensor, segment_first: torch.Tensor) -> torch.Tensor:
    """Transmittance before each pair: ``prod (1 - alpha)`` over the earlier pairs of its segment.

    Pairs are sorted by (pixel, depth); ``segment_first[k]`` is the index of the first pair of
    pair k's pixel. Computed as a global float64 cumulative sum of ``log(1 - alpha)`` minus its
    value at the segment start, which is exact to ~1e-12 for any number of pairs.
    """
    log_keep = torch.log1p(-alpha.double())
    before = torch.cumsum(log_keep, dim=0) - log_keep
    return torch.exp(before - before[segment_first]).to(alpha.dtype)


def _composite_sparse(p: ProjectedGaussians, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Front-to-back compositing of the pairs (pixel, Gaussian) inside each Gaussian's box.

    Returns per image I: colour sum (I, H, W, 3), alpha (I, H, W), expected depth (I, H, W).
    """
    num_images, n = p.depths.shape
    hw = height * width
    device = p.depths.device
    attrs = torch.cat([p.means2d, p.conics, p.opacities[..., None], p.colors, p.depths[..., None]], dim=-1)
    attrs = attrs.reshape(num_images * n, 10)  # u v a b c o r g b z

    with torch.no_grad():
        image, gauss = p.visible.nonzero(as_tuple=True)
        rank = torch.empty_like(p.radii[..., 0])  # each Gaussian's front-to-back place in its image
        order = torch.argsort(torch.where(p.visible, p.depths, torch.inf), dim=-1, stable=True)
        rank.scatter_(1, order, torch.arange(n, device=device).expand(num_images, n))
        rank = rank[image, gauss]
        flat_id = image * n + gauss
        table = attrs.detach()[flat_id, :6]  # (G, 6) u v a b c o of the visible Gaussians
        center = table[:, :2]
        radius = p.radii[image, gauss].to(center.dtype)
        # pixel columns whose centre j + 0.5 lies within [u - r, u + r], clipped to the image
        lo = torch.ceil(center - radius - 0.5).clamp(min=0).long()
        hi = torch.floor(center + radius - 0.5).long()
        hi[:, 0].clamp_(max=width - 1)
        hi[:, 1].clamp_(max=height - 1)
        extent = (hi - lo + 1).clamp(min=0)
        counts = extent[:, 0] * extent[:, 1]

        # one row per (pixel, Gaussian) candidate pair
        owner = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
        local = torch.arange(owner.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[owner]
        ext_x = extent[owner, 0]
        px = lo[owner, 0] + local % ext_x
        py = lo[owner, 1] + local // ext_x
        del local, ext_x
        alpha, bright = _pair_alpha(table[owner], px.to(attrs.dtype), py.to(attrs.dtype))
        owner, px, py = owner[bright], px[bright], py[bright]

        # sort by (pixel, depth rank); transmittance; drop pairs past early termination
        pixel = (image[owner] * height + py) * width + px
        key, perm = torch.sort(pixel * n + rank[owner])
        pixel, px, py, owner = key // n, px[perm], py[perm], owner[perm]
        first = torch.ones_like(pixel, dtype=torch.bool)
        first[1:] = pixel[1:] != pixel[:-1]
        segment_first = first.nonzero()[:, 0][torch.cumsum(first, 0) - 1]
        alpha = alpha[bright][perm]
        transmittance = _segment_transmittance(alpha, segment_first)
        alive = transmittance * (1.0 - alpha) > MIN_TRANSMITTANCE
        # the alive pairs are a prefix of each segment, so the segments' first pairs survive
        pixel, px, py, owner = pixel[alive], px[alive], py[alive], owner[alive]
        first = first[alive]
        segment_first = first.nonzero()[:, 0][torch.cumsum(first, 0) - 1]
        pair_ids = flat_id[owner]
        del alpha, transmittance, alive, key, perm, bright, first

    # the differentiable pass, over contributing pairs only
    pair = attrs.index_select(0, pair_ids)
    alpha, _ = _pair_alpha(pair, px.to(attrs.dtype), py.to(attrs.dtype))
    weight = alpha * _segment_transmittance(alpha, segment_first)
    values = torch.cat([weight[:, None] * pair[:, 6:9], weight[:, None], weight[:, None] * pair[:, 9:10]], dim=-1)
    sums = torch.zeros(num_images * hw, 5, dtype=attrs.dtype, device=device).index_add(0, pixel, values)
    sums = sums.reshape(num_images, height, width, 5)
    acc_alpha = sums[..., 3]
    return sums[..., :3], acc_alpha, sums[..., 4] / acc_alpha.clamp_min(1e-10)


def _composite_dense(p: ProjectedGaussians, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Every Gaussian in the frustum at every pixel, sorted by depth; same outputs as the sparse path."""
    num_images = p.depths.shape[0]
    order = torch.argsort(torch.where(p.in_frustum, p.depths, torch.inf).detach(), dim=-1, stable=True)

    def sort(t: torch.Tensor) -> torch.Tensor:
        index = order.reshape(*order.shape, *([1] * (t.ndim - 2))).expand_as(t)
        return torch.gather(t, 1, index)

    attrs = sort(torch.cat([p.means2d, p.conics, p.opacities[..., None]], dim=-1))  # (I, N, 6)
    colors, depths, in_frustum = sort(p.colors), sort(p.depths), sort(p.in_frustum)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=attrs.dtype, device=attrs.device),
        torch.arange(width, dtype=attrs.dtype, device=attrs.device),
        indexing="ij",
    )
    alpha, bright = _pair_alpha(attrs[:, :, None, :], cols.reshape(1, 1, -1), rows.reshape(1, 1, -1))  # (I, N, HW)
    alpha = torch.where(bright & in_frustum[..., None], alpha, torch.zeros_like(alpha))
    keep = torch.cumprod(1.0 - alpha, dim=1)
    transmittance = torch.cat([torch.ones_like(keep[:, :1]), keep[:, :-1]], dim=1)
    weight = alpha * transmittance * (keep > MIN_TRANSMITTANCE)
    color = torch.einsum("inp,inc->ipc", weight, colors).reshape(num_images, height, width, 3)
    acc_alpha = weight.sum(1).reshape(num_images, height, width)
    depth_sum = torch.einsum("inp,in->ip", weight, depths).reshape(num_images, height, width)
    return color, acc_alpha, depth_sum / acc_alpha.clamp_min(1e-10)


# ---------------------------------------------------------------------------------------------
# Compositing (gsplat CUDA)
# ---------------------------------------------------------------------------------------------
def _render_gsplat(
    gaussians: Gaussians, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int, near: float, far: float
) -> tuple[torch.Tensor, ...]:
    from gsplat import rasterization

    b, v = K.shape[:2]
    g = gaussians.to(torch.float32)
    # gsplat takes world-to-camera "viewmats" in the same OpenCV convention and (..., N, C)
    # colours; "RGB+ED" appends the expected depth sum(w z) / sum(w) as a 4th channel.
    # No background is passed: it is composited once, the same way, for both backends.
    render_colors, render_alphas, _ = rasterization(
        means=g.means.contiguous(),
        quats=g.quats.contiguous(),
        scales=g.scales.contiguous(),
        opacities=g.opacities.contiguous(),
        colors=g.colors.contiguous(),
        viewmats=rigid_inverse(c2w.float()).contiguous(),
        Ks=K.float().contiguous(),
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=EPS2D,
        packed=False,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )  # (B, V, H, W, 4), (B, V, H, W, 1)
    render_colors = render_colors.reshape(b * v, height, width, 4).to(gaussians.dtype)
    render_alphas = render_alphas.reshape(b * v, height, width).to(gaussians.dtype)
    return render_colors[..., :3], render_alphas, render_colors[..., 3]


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def _background(background, b: int, v: int, like: torch.Tensor) -> torch.Tensor:
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.ndim == 0:
        bg = bg.expand(3)
    return bg.expand(b, v, 3)


def _finish(color, alpha, expected_depth, background, b, v, threshold) -> RenderOutput:
    """Images (B*V, H, W, ...) to a RenderOutput: background composite and depth masking."""
    h, w = alpha.shape[-2:]
    bg = _background(background, b, v, color).reshape(b * v, 1, 1, 3)
    rgb = color + (1.0 - alpha)[..., None] * bg
    depth = torch.where(alpha > threshold, expected_depth, torch.zeros_like(expected_depth))
    return RenderOutput(
        rgb=rgb.permute(0, 3, 1, 2).reshape(b, v, 3, h, w),
        alpha=alpha.reshape(b, v, 1, h, w),
        depth=depth.reshape(b, v, h, w),
    )


def render(
    gaussians: Gaussians,
    K: torch.Tensor,
    c2w: torch.Tensor,
    height: int,
    width: int,
    background: float | Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0),
    backend: Backend = "auto",
    depth_alpha_threshold: float = 0.5,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> RenderOutput:
    """Render B objects' Gaussians at V cameras each.

    Args:
        gaussians: B objects of N Gaussians.
        K: (B, V, 3, 3) pixel intrinsics, or (V, 3, 3) shared by all objects.
        c2w: (B, V, 4, 4) rigid camera-to-world (OpenCV camera), or (V, 4, 4).
        height, width: image size in pixels (rows, columns: the order of every image shape here).
        background: RGB in [0, 1]: a float, 3 floats, or a tensor broadcastable to (B, V, 3).
        backend: "cuda" (gsplat, CUDA tensors only), "torch" (any device), or "auto": cuda
            when the Gaussians are on a CUDA device, else torch.
        depth_alpha_threshold: ``depth`` is 0 where the accumulated alpha is at or below this.
        near_plane, far_plane: camera-z range of Gaussians that are drawn.

    Returns:
        :class:`RenderOutput` (rgb (B, V, 3, H, W), alpha (B, V, 1, H, W), depth (B, V, H, W)),
        differentiable with respect to every Gaussian field.
    """
    # float32 whatever autocast surrounds it (bf16 training and sampling): depth sorting and
    # transmittance products lose too much in bf16, and the rasterizer is not matmul-bound
    dtype = torch.promote_types(gaussians.dtype, torch.float32)  # bf16 Gaussians in, float32 out
    with torch.autocast(gaussians.device.type, enabled=False):
        return _render(
            gaussians.to(dtype),
            K.to(dtype),
            c2w.to(dtype),
            height,
            width,
            background,
            backend,
            depth_alpha_threshold,
            near_plane,
            far_plane,
        )


def _render(gaussians, K, c2w, height, width, background, backend, depth_alpha_threshold, near_plane, far_plane):
    K, c2w = batched_cameras(gaussians, K, c2w)
    b, v = K.shape[:2]
    on_cuda = gaussians.device.type == "cuda"
    if backend == "auto":
        backend = "cuda" if on_cuda else "torch"
    if backend == "cuda":
        if not on_cuda:
            raise ValueError(f"backend 'cuda' needs the Gaussians on a CUDA device, they are on {gaussians.device}")
        color, alpha, expected_depth = _render_gsplat(gaussians, K, c2w, height, width, near_plane, far_plane)
    elif backend == "torch":
        projected = project_gaussians(gaussians, K, c2w, height, width, near_plane, far_plane)
        color, alpha, expected_depth = _composite_sparse(projected, height, width)
    else:
        raise ValueError(f"backend must be 'auto', 'torch' or 'cuda', got {backend!r}")
    return _finish(color, alpha, expected_depth, background, b, v, depth_alpha_threshold)


def render_dense_reference(
    gaussians: Gaussians,
    K: torch.Tensor,
    c2w: torch.Tensor,
    height: int,
    width: int,
    background: float | Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0),
    depth_alpha_threshold: float = 0.5,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> RenderOutput:
    """:func:`render` without any culling shortcut: every Gaussian is evaluated at every pixel.

    Memory grows as B*V*N*H*W: for tests on small cases only.
    """
    K, c2w = batched_cameras(gaussians, K, c2w)
    projected = project_gaussians(gaussians, K, c2w, height, width, near_plane, far_plane)
    color, alpha, expected_depth = _composite_dense(projected, height, width)
    return _finish(color, alpha, expected_depth, background, *K.shape[:2], depth_alpha_threshold)

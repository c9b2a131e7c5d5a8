"""Evaluation metrics: image quality (PSNR, SSIM, LPIPS, FID) and geometry (Chamfer distance, F-score).

Protocol
--------
**Images** (the paper's Tables 1-3). Two kinds of prediction are compared with the
ground-truth views, all RGB in [0, 1] over a white background at the data resolution:

* ``mv``: the generated multi-view images (the sampler's final views),
* ``3d``: the final 3D Gaussians rendered at the same cameras,

and ``delta`` = mv − 3d per object (Table 2's Δ). The input view (view 0) is EXCLUDED: the
metrics use the V − 1 other views. An object's value is the mean over those views of the
per-image value; a run's value is the mean over objects (see *Summaries*).

* PSNR: torchmetrics, data range 1, per image.
* SSIM: torchmetrics, Gaussian window 11 with σ = 1.5, data range 1, per image (channel mean).
* LPIPS: the ``lpips`` package (v0.1, AlexNet, inputs scaled to [-1, 1]) through
  :func:`ouroboros3d.evaluation.perceptual.load_lpips`. Without its pretrained weights the metric is
  :class:`Unavailable` with the reason, never a number from a random network.
* FID: clean-fid's ``clean`` mode (the InceptionV3 torchscript network, PIL bicubic resize to
  299²) between the SET of all non-input predicted views of all objects and the set of the
  ground-truth views: one number per run, no per-object value and no interval. With a few
  hundred images it is strongly biased upwards and only comparable between runs with the same
  image count. The weights are read from clean-fid's cache file (``/tmp/inception-2015-12-05.pt``,
  where clean-fid keeps it on Linux and macOS, or ``$OUROBOROS3D_CLEANFID_DIR``) and never
  downloaded: without them FID is :class:`Unavailable`.

**Geometry** (beyond the paper, which reports none). Both point sets live in the normalised
object frame (the unit box, +Z up), which is also the frame of the cameras, so no alignment is
done.

* Reconstruction points R: the final Gaussians' depth rendered at ALL V views (the input view
  included: geometry is one 3D object) at the data resolution
  (:func:`ouroboros3d.gaussians.splatting.render`: alpha-normalised expected z-depth where the accumulated
  alpha exceeds 0.5), back-projected with :func:`ouroboros3d.geometry.ccm.depth_to_world`: every
  foreground pixel of every view, no downsampling (SyncDreamer's depth-map points).
* Ground-truth points G: ``gt_points`` (default 50,000) points sampled uniformly by area on the
  ground-truth mesh, seeded from (seed, object id), after exactly the renderer's normalisation
  (the source's loader, then :func:`ouroboros3d.data.mesh.normalize_to_unit_box` with the
  source's up axis).
* Chamfer distance CD = ½ (mean over p in R of min over q in G of ‖p − q‖ + mean over q in G of
  min over p in R of ‖p − q‖): Euclidean, not squared, in unit-box units (SyncDreamer's
  definition). Nearest neighbours are exact (scipy's cKDTree).
* F-score at τ: precision = fraction of R within τ of G, recall = fraction of G within τ of R,
  F = 2PR / (P + R) (0 when both are 0), at τ in ``fscore_thresholds`` (default 0.01, 0.02,
  0.05 and 0.1; at 32² one pixel spans about 0.05 at the object).
* An empty reconstruction (no pixel with alpha > 0.5) has CD = NaN (left out of the mean; the
  summary counts it) and F = 0.
* Mesh geometry (``mesh_*``, ``volume_iou``; runs of Table 2, not Table 3's windows): the final
  Gaussians meshed as ``generate --mesh`` meshes them (:func:`ouroboros3d.gaussians.meshing.gaussians_to_mesh`:
  depth from a sphere of cameras fused into a TSDF, marching cubes, largest piece), then
  ``mesh_cd`` and ``mesh_fscore@t`` from ``gt_points`` points sampled on that mesh (seeded as
  G's) against G, as above; and ``volume_iou``, SyncDreamer's volume IoU: both meshes
  voxelised from their surface points and filled (:func:`occupancy`) on one 64³ grid over
  [−0.6, 0.6]³ (the meshing grid's cube), intersection over union of the occupied voxels
  (cavities enclosed by a surface count as solid, in both). A Gaussian set that meshes to
  nothing has ``mesh_cd`` NaN, F = 0 and IoU = 0.
* ``oracle``: the ground-truth depth maps back-projected the same way, against the same G: the
  floor of the protocol at this resolution. G covers surfaces no view sees (bottoms,
  concavities, inner faces of scans), which cost recall even for a perfect reconstruction.

**Summaries**: per object values are kept; a run reports, per metric, the mean over objects and
a 95% t-interval: mean ± t_{0.975, n−1} · s / √n with s the sample standard deviation
(ddof = 1); the bounds are NaN for fewer than two objects. NaN values (empty reconstructions)
are left out and counted.

**Trivial baselines** through the same code: ``copy_input`` (the input view at every view)
and ``white`` (a blank white image).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .stats import mean_ci

__all__ = [
    "CLEANFID_WEIGHTS",
    "DEFAULT_THRESHOLDS",
    "INPUT_VIEW",
    "Unavailable",
    "chamfer_fscore",
    "cleanfid_weights_path",
    "copy_input_baseline",
    "depth_points",
    "exclude_input_view",
    "fid_from_features",
    "fscore_key",
    "ground_truth_mesh",
    "inception_features",
    "load_inception",
    "load_lpips_metric",
    "lpips_distance",
    "mean_ci",
    "object_seed",
    "occupancy",
    "psnr",
    "render_depth_points",
    "sample_surface_points",
    "ssim",
    "summarize",
    "view_metrics",
    "volume_iou",
    "white_baseline",
]

INPUT_VIEW = 0
DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1)
CLEANFID_WEIGHTS = "inception-2015-12-05.pt"
CLEANFID_DIR_ENV = "OUROBOROS3D_CLEANFID_DIR"


@dataclass(frozen=True)
class Unavailable:
    """A metric that cannot be computed on this machine, and why (reported instead of a number)."""

    reason: str

    def to_json(self) -> dict:
        return {"status": "unavailable", "reason": self.reason}


def object_seed(seed: int, object_id: str, purpose: str = "sample") -> int:
    """A 63-bit seed from (purpose, seed, object id): the same object gets the same draw in any batch."""
    digest = hashlib.sha256(f"{purpose}/{seed}/{object_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# --- image metrics -------------------------------------------------------------------


def exclude_input_view(x: torch.Tensor) -> torch.Tensor:
    """(B, V, ...) -> (B, V-1, ...): every view but the input view."""
    keep = [v for v in range(x.shape[1]) if v != INPUT_VIEW]
    return x[:, keep]


def psnr(pred: torch.Tensor, target: torch.Tensor, *, min_mse: float | None = None) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 1]: (..., 3, H, W) -> (...).

    Two arithmetics, each the one its numbers were made with, to the bit:

    * ``min_mse=None``, the protocol's (this module's docstring): torchmetrics' PSNR, data range 1,
      in float32; a perfect prediction scores inf.
    * ``min_mse`` a number, the validation scores' (:mod:`ouroboros3d.training.validation`):
      ``-10 log10(max(mse, min_mse))`` of ``pred`` clamped to [0, 1], in the inputs' dtype.
    """
    if min_mse is not None:
        mse = ((pred.clamp(0, 1) - target) ** 2).flatten(-3).mean(-1).clamp_min(min_mse)
        return -10 * torch.log10(mse)
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(pred.float(), target.float(), data_range=1.0, reduction="none", dim=(-3, -2, -1))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of (N, 3, H, W) images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none")


def lpips_distance(model: nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of (N, 3, H, W) images in [0, 1]."""
    with torch.no_grad():
        return model(pred.float() * 2 - 1, target.float() * 2 - 1).flatten()


def load_lpips_metric(net: str = "alex") -> nn.Module | Unavailable:
    """The pretrained LPIPS network, or :class:`Unavailable` naming the missing weights."""
    from .perceptual import WeightsUnavailable, load_lpips

    try:
        return load_lpips(net)
    except WeightsUnavailable as e:
        return Unavailable(str(e))


def view_metrics(
    pred: torch.Tensor, target: torch.Tensor, lpips_model: nn.Module | Unavailable | None = None
) -> dict[str, torch.Tensor]:
    """Per-object PSNR, SSIM (and LPIPS with a model) of (B, V, 3, H, W) images, input view excluded.

    Returns ``{"psnr": (B,), "ssim": (B,)[, "lpips": (B,)]}``: means over the V-1 other views.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    b = pred.shape[0]
    p = exclude_input_view(pred).flatten(0, 1)
    t = exclude_input_view(target).flatten(0, 1)
    out = {"psnr": psnr(p, t).view(b, -1).mean(1), "ssim": ssim(p, t).view(b, -1).mean(1)}
    if isinstance(lpips_model, nn.Module):
        out["lpips"] = lpips_distance(lpips_model, p, t).view(b, -1).mean(1)
    return out


def copy_input_baseline(input_view: torch.Tensor, num_views: int) -> torch.Tensor:
    """The trivial prediction that every view looks like the input view: (B, 3, H, W) -> (B, V, 3, H, W)."""
    return input_view[:, None].expand(-1, num_views, -1, -1, -1)


def white_baseline(like: torch.Tensor) -> torch.Tensor:
    """The trivial prediction of a blank white image at every view."""
    return torch.ones_like(like)


# --- FID (clean-fid) -----------------------------------------------------------------


def cleanfid_weights_path() -> Path:
    """Where clean-fid keeps its InceptionV3 weights ("/tmp" on Linux/macOS), or ``$OUROBOROS3D_CLEANFID_DIR``."""
    folder = os.environ.get(CLEANFID_DIR_ENV) or ("./" if os.name == "nt" else "/tmp")
    return Path(folder) / CLEANFID_WEIGHTS


def load_inception() -> nn.Module | Unavailable:
    """clean-fid's InceptionV3 (torchscript) from its cache file, never downloaded; else :class:`Unavailable`."""
    path = cleanfid_weights_path()
    if not path.is_file():
        return Unavailable(
            f"FID needs clean-fid's InceptionV3 weights at {path}, which are missing. On a machine with network "
            f"access download https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
            f"{CLEANFID_WEIGHTS} there (or set {CLEANFID_DIR_ENV} to the folder holding it)."
        )
    from cleanfid.inception_torchscript import InceptionV3W

    return InceptionV3W(str(path.parent), download=False, resize_inside=False).eval()


def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """clean-fid "clean" features (N, 2048) of (N, 3, H, W) images in [0, 1]: uint8, PIL bicubic to 299²."""
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    device = next(iter(model.parameters()), torch.empty(0)).device
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    feats = []
    for start in range(0, len(arrays), batch_size):
        chunk = [np.asarray(resize(a), dtype=np.float32).transpose(2, 0, 1) for a in arrays[start : start + batch_size]]
        with torch.no_grad():
            feats.append(model(torch.from_numpy(np.stack(chunk)).to(device)).cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 2048), np.float32)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets (clean-fid's formula)."""
    from cleanfid.fid import fid_from_feats

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}")
    with warnings.catch_warnings():  # clean-fid passes scipy's deprecated `disp` to sqrtm
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(fid_from_feats(np.asarray(a, np.float64), np.asarray(b, np.float64)))


# --- geometry ------------------------------------------------------------------------


def fscore_key(threshold: float) -> str:
    """Column name of the F-score at a threshold: ``fscore@0.05``."""
    return f"fscore@{threshold:g}"


def depth_points(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, mask: torch.Tensor | None = None):
    """World points (N, 3) float64 numpy of one object's depth maps (V, H, W) where ``mask`` (default depth > 0)."""
    from ..geometry.ccm import depth_to_world

    if mask is None:
        mask = depth > 0
    points = depth_to_world(depth.float(), K.float(), c2w.float())
    return points[mask & (depth > 0)].double().cpu().numpy()


def render_depth_points(recon, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> list[np.ndarray]:
    """Reconstruction points per object of a batch: the Gaussians' depth at the V cameras, back-projected.

    ``recon`` is a :class:`ouroboros3d.model.Reconstruction` (or anything with ``gaussians``);
    depth is non-zero exactly where the accumulated alpha exceeds 0.5.
    """
    from ..gaussians.splatting import render

    with torch.no_grad():
        out = render(recon.gaussians, K, c2w, height, width)
    return [depth_points(out.depth[i], K[i], c2w[i]) for i in range(out.depth.shape[0])]


def sample_surface_points(mesh, count: int, seed: int) -> np.ndarray:
    """``count`` points uniformly by area on a trimesh surface, reproducibly from ``seed``."""
    import trimesh

    points, _ = trimesh.sample.sample_surface(mesh, count, seed=np.random.default_rng(seed))
    return np.asarray(points, dtype=np.float64)


@functools.lru_cache(maxsize=8)
def _source_objects(source: str, folder: str | None) -> dict:
    from ..config import DataParams
    from ..data.sources import make_source

    return {o.object_id: o for o in make_source(source, DataParams(folder=folder)).objects()}


def ground_truth_mesh(object_id: str, source: str, folder: str | None = None):
    """The object's mesh exactly as the renderer placed it: the source's loader, then the unit-box normalisation."""
    from ..data.mesh import normalize_to_unit_box

    objects = _source_objects(source, folder)
    if object_id not in objects:
        raise KeyError(f"object {object_id!r} is not in source {source!r} (has it been removed since rendering?)")
    obj = objects[object_id]
    return normalize_to_unit_box(obj.load(), obj.up_axis)


def _tree(points: np.ndarray):
    from scipy.spatial import cKDTree

    return cKDTree(points, balanced_tree=False, compact_nodes=False)


def chamfer_fscore(pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """Chamfer distance and F-scores between point sets (N, 3) and (M, 3); see the module docstring.

    Returns ``{"cd", "cd_pred_to_gt" (accuracy), "cd_gt_to_pred" (completeness), "fscore@t",
    "precision@t", "recall@t", "points"}``.
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 3)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 3)
    if len(gt) == 0:
        raise ValueError("no ground-truth points")
    out: dict[str, float] = {"points": float(len(pred))}
    if len(pred) == 0:
        out |= {"cd": math.nan, "cd_pred_to_gt": math.nan, "cd_gt_to_pred": math.nan}
        for t in thresholds:
            out |= {fscore_key(t): 0.0, f"precision@{t:g}": math.nan, f"recall@{t:g}": 0.0}
        return out
    # On the eval's point sets (50,000 mesh points against 50,000 on the ground truth) scipy's
    # default tree (median splits, compacted) searched 2.1x slower than this one (sliding midpoint),
    # and the queries use every core: 3.6x in all on 2 cores, 2026-12-05. Nearest distances are
    # exact whatever the tree, so the metric keeps its bits (tests/test_metrics.py).
    d_pred, _ = _tree(gt).query(pred, k=1, workers=-1)
    d_gt, _ = _tree(pred).query(gt, k=1, workers=-1)
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    out |= {"cd": 0.5 * (acc + comp), "cd_pred_to_gt": acc, "cd_gt_to_pred": comp}
    for t in thresholds:
        precision, recall = float((d_pred <= t).mean()), float((d_gt <= t).mean())
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out |= {fscore_key(t): f, f"precision@{t:g}": precision, f"recall@{t:g}": recall}
    return out


def occupancy(surface_points: np.ndarray, resolution: int = 64, bound: float = 0.6) -> np.ndarray:
    """Solid occupancy (resolution³ bools) on the grid over ``[-bound, bound]³`` of a closed surface
    given by points sampled densely on it (:func:`sample_surface_points`).

    The voxels holding a point form the shell; a morphological closing seals pinholes left by
    the sampling, and filling the enclosed voxels gives the solid. Predicted and ground-truth
    meshes go through exactly this, so their IoU compares like with like (both shells count
    as occupied: half a voxel of inflation each).
    """
    from scipy.ndimage import binary_closing, binary_fill_holes

    pitch = 2.0 * bound / resolution
    index = np.floor((np.asarray(surface_points) + bound) / pitch).astype(np.int64)
    index = index[((index >= 0) & (index < resolution)).all(1)]
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[tuple(index.T)] = True
    # pad so the closing cannot glue the shell to the grid's border
    closed = binary_closing(np.pad(grid, 2), iterations=1)[2:-2, 2:-2, 2:-2] | grid
    return binary_fill_holes(closed)


def volume_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two occupancy grids (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


# --- summaries -----------------------------------------------------------------------


def summarize(rows: Sequence[Mapping[str, float]], columns: Sequence[str], confidence: float = 0.95) -> dict:
    """``{column: mean_ci(...)}`` over per-object rows (dicts), for the columns present in them."""
    return {c: mean_ci([r[c] for r in rows if c in r], confidence) for c in columns if any(c in r for r in rows)}

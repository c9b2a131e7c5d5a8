"""Scoring sampled views and Gaussians against an eval split: what experiments/evaluate.py runs.

:class:`Evaluator` samples batches of eval items with a trained model and turns them into
per-object rows (the generated views, the final Gaussians' renders and geometry, the
references: G on the ground-truth views, the 1-step sample, the oracle geometry and the
trivial baselines) and per-step rows for the recorded objects (Figure 3).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from . import metrics
from .config import Params
from .data.sources import SourceUnavailableError
from .meshing import MeshError, gaussians_to_mesh
from .model import sample

__all__ = ["IMAGE_METRICS", "Evaluator", "dvc_metrics", "json_safe"]

IMAGE_METRICS = ("psnr", "ssim", "lpips")


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _noise(model, seeds: list[int], num_views: int, height: int, width: int) -> torch.Tensor:
    """Each object's unit-variance initial noise from its own seed (as ``sample`` draws it for a batch of one)."""
    ae = model.autoencoder
    shape = (1, num_views, ae.latent_channels, height // ae.downscale, width // ae.downscale)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


class Evaluator:
    """Samples batches of eval items and turns them into per-object rows and per-step rows."""

    def __init__(
        self, model, params: Params, sample_kwargs: dict, *, lpips, inception, record: set[str], device, mesh: bool
    ):
        self.model, self.params, self.sample_kwargs, self.mesh = model, params, sample_kwargs, mesh
        self.lpips, self.inception, self.record, self.device = lpips, inception, record, device
        self.thresholds = params.evaluation.fscore_thresholds
        self.features: dict[str, list[np.ndarray]] = {}
        self.step_rows: list[dict] = []
        self.step_arrays: dict[str, list] = {"object_ids": [], "recon_rgb": [], "pred_views": [], "gt_views": []}
        self.sigmas: list[float] = []
        self.geometry_unavailable: dict[str, str] = {}
        self.seconds_sampling = 0.0

    def gt_points(self, item: dict) -> np.ndarray | None:
        object_id = item["object_id"]
        try:
            mesh = metrics.ground_truth_mesh(object_id, item["source"], self.params.data.folder)
        except (SourceUnavailableError, KeyError, OSError, ValueError) as e:
            self.geometry_unavailable[object_id] = f"{type(e).__name__}: {e}"
            return None
        seed = metrics.object_seed(self.params.seed, object_id, "gt_points")
        return metrics.sample_surface_points(mesh, self.params.evaluation.gt_points, seed)

    def mesh_geometry(self, gaussians, object_id: str, gt: np.ndarray) -> dict:
        """Mesh Chamfer/F-score and volume IoU of one object's Gaussians (protocol: ouroboros3d.metrics)."""
        ev = self.params.evaluation
        try:
            mesh = gaussians_to_mesh(gaussians, resolution=64, num_cameras=16, image_size=64)
        except MeshError:  # nothing rendered: no surface
            return self.geometry(np.zeros((0, 3)), gt, "mesh_") | {"volume_iou": 0.0}
        seed = metrics.object_seed(self.params.seed, object_id, "gt_points")
        points = metrics.sample_surface_points(mesh, ev.gt_points, seed)
        iou = metrics.volume_iou(metrics.occupancy(points, ev.iou_grid), metrics.occupancy(gt, ev.iou_grid))
        return self.geometry(points, gt, "mesh_") | {"volume_iou": iou}

    def geometry(self, points: np.ndarray, gt: np.ndarray | None, prefix: str = "") -> dict:
        if gt is None:
            return {}
        return {prefix + k: v for k, v in metrics.chamfer_fscore(points, gt, self.thresholds).items()}

    def images(self, pred: torch.Tensor, gt: torch.Tensor, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{k}": v.cpu().numpy() for k, v in metrics.view_metrics(pred, gt, self.lpips).items()}

    def add_features(self, name: str, views: torch.Tensor) -> None:
        if isinstance(self.inception, torch.nn.Module):
            images = metrics.exclude_input_view(views).flatten(0, 1)
            self.features.setdefault(name, []).append(metrics.inception_features(self.inception, images))

    def run_batch(self, items: list[dict], on_progress=None) -> list[dict]:
        dev = self.device
        stack = {k: torch.stack([it[k] for it in items]).to(dev) for k in ("input_view", "views", "depth", "K", "c2w")}
        _, v, _, h, w = stack["views"].shape
        seeds = [metrics.object_seed(self.params.seed, it["object_id"]) for it in items]
        gts = [self.gt_points(it) for it in items]
        recorded = [i for i, it in enumerate(items) if it["object_id"] in self.record]
        per_step: dict[int, list] = {i: [] for i in recorded}

        def on_step(info):
            if on_progress is not None:
                on_progress(info)
            record = info["record"]
            if not recorded or record is None:
                return
            for i in recorded:
                per_step[i].append((info["i"], info["sigma"], record, self._step_row(record, stack, i, gts[i])))

        start = time.perf_counter()
        kwargs = dict(self.sample_kwargs, on_step=on_step, noise=_noise(self.model, seeds, v, h, w).to(dev))
        result = sample(self.model, stack["input_view"], stack["K"], stack["c2w"], **kwargs)
        self.seconds_sampling += time.perf_counter() - start

        gt_views = stack["views"]
        rows = [
            {"object_id": it["object_id"], "source": it["source"], "seed": s}
            for it, s in zip(items, seeds, strict=True)
        ]
        columns = self.images(result.views, gt_views, "mv") | self.images(result.recon.rgb, gt_views, "3d")
        for k in IMAGE_METRICS:
            if f"mv_{k}" in columns:
                columns[f"delta_{k}"] = columns[f"mv_{k}"] - columns[f"3d_{k}"]
        # references: G on the ground-truth views (the ceiling of the 3D columns) and the
        # 1-step sample D(sigma_max * noise; sigma_max), the model's conditional mean
        with torch.no_grad():
            recon_gt = self.model.reconstruct(gt_views, stack["K"], stack["c2w"], None)
        columns |= self.images(recon_gt.rgb, gt_views, "recon_gt")
        one_step = dict(self.sample_kwargs, steps=1, guidance=(1.0, 1.0), reconstruct="none", noise=kwargs["noise"])
        x0 = sample(self.model, stack["input_view"], stack["K"], stack["c2w"], **one_step).views
        columns |= self.images(x0, gt_views, "x0")
        copy = metrics.copy_input_baseline(stack["input_view"], v)
        columns |= self.images(copy, gt_views, "copy_input")
        columns |= self.images(metrics.white_baseline(gt_views), gt_views, "white")
        points = metrics.render_depth_points(result.recon, stack["K"], stack["c2w"], h, w)
        for i, row in enumerate(rows):
            row.update({k: float(col[i]) for k, col in columns.items()})
            row.update(self.geometry(points[i], gts[i]))
            oracle = metrics.depth_points(stack["depth"][i], stack["K"][i], stack["c2w"][i])
            row.update(self.geometry(oracle, gts[i], "oracle_"))
            if self.mesh and gts[i] is not None:
                row.update(self.mesh_geometry(result.recon.gaussians[i], row["object_id"], gts[i]))
        for name, views in (("mv", result.views), ("3d", result.recon.rgb), ("gt", gt_views), ("copy_input", copy)):
            self.add_features(name, views)
        self.add_features("white", metrics.white_baseline(gt_views))

        for i in recorded:
            self._keep_steps(items[i]["object_id"], i, per_step[i], gt_views[i])
        return rows

    def _step_row(self, record, stack: dict, i: int, gt: np.ndarray | None) -> dict:
        views, rgb = record.views[i : i + 1], record.recon.rgb[i : i + 1]
        gt_views = stack["views"][i : i + 1]
        row = {"sigma": record.sigma, "fed_back": bool(record.fed_back)}
        row |= {k: float(x[0]) for k, x in self.images(views, gt_views, "mv").items()}
        row |= {k: float(x[0]) for k, x in self.images(rgb, gt_views, "3d").items()}
        h, w = gt_views.shape[-2:]
        recon_i = dataclasses.replace(record.recon, gaussians=record.recon.gaussians[i])
        points = metrics.render_depth_points(recon_i, stack["K"][i : i + 1], stack["c2w"][i : i + 1], h, w)[0]
        return row | self.geometry(points, gt)

    def _keep_steps(self, object_id: str, i: int, steps: list, gt_views: torch.Tensor) -> None:
        """Rows of steps.csv and the uint8 renders of steps.npz for object ``i`` of the batch."""
        self.step_rows += [{"object_id": object_id, "step": step} | row for step, _, _, row in steps]
        if not self.sigmas:
            self.sigmas = [sigma for _, sigma, _, _ in steps]
        self.step_arrays["object_ids"].append(object_id)
        self.step_arrays["recon_rgb"].append(np.stack([_uint8(rec.recon.rgb[i]) for _, _, rec, _ in steps]))
        self.step_arrays["pred_views"].append(np.stack([_uint8(rec.views[i]) for _, _, rec, _ in steps]))
        self.step_arrays["gt_views"].append(_uint8(gt_views))

    def fid(self) -> dict | metrics.Unavailable:
        if not isinstance(self.inception, torch.nn.Module):
            return self.inception
        feats = {k: np.concatenate(v) for k, v in self.features.items()}
        if len(feats.get("gt", ())) < 2:
            return metrics.Unavailable("FID needs at least 2 ground-truth images")
        return {k: metrics.fid_from_features(f, feats["gt"]) for k, f in feats.items() if k != "gt"}


def json_safe(x):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dvc_metrics(summary: dict, fid, thresholds) -> dict:
    """The headline means as nested numbers, for `dvc metrics show` / `dvc exp show`."""
    out: dict = {}
    for group in ("mv", "3d", "delta", "copy_input", "white"):
        values = {k: summary[f"{group}_{k}"]["mean"] for k in IMAGE_METRICS if f"{group}_{k}" in summary}
        if values:
            out[group] = values
    geo = ["cd"] + [metrics.fscore_key(t) for t in thresholds]
    out["geometry"] = {k: summary[k]["mean"] for k in geo if k in summary}
    out["oracle"] = {k: summary[f"oracle_{k}"]["mean"] for k in geo if f"oracle_{k}" in summary}
    mesh = {k: summary[k]["mean"] for k in [f"mesh_{g}" for g in geo] + ["volume_iou"] if k in summary}
    if mesh:  # Table 2's runs only: Table 3's windows compute no mesh
        out["mesh"] = mesh
    if isinstance(fid, dict) and "status" not in fid:  # numbers only: an unavailable FID stays in metrics.json
        out["fid"] = fid
    return json_safe(out)

"""Scoring sampled views and Gaussians against an eval split: what experiments/evaluate.py runs.

:class:`Evaluator` samples batches of eval items with a trained model and turns them into
per-object rows (the generated views, the final Gaussians' renders and geometry, the
references: G on the ground-truth views, the 1-step sample, the oracle geometry and the
trivial baselines) and per-step rows for the recorded objects (Figure 3).

A whole run, as the `evaluate` stages do it: :func:`evaluate_objects` scores every object,
:func:`run_report` makes its ``metrics.json`` (settings, protocol, t-intervals, what is
unavailable and why), :func:`write_run` writes the run folder (``per_object.csv``,
``metrics.json``, ``steps.csv``, ``steps.npz``) and :func:`dvc_metrics` the small metrics file
DVC shows. They live here, beside the Evaluator whose state they read, so the stage script
only parses its arguments and the protocol a table cites is the one the code ran.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Params
from ..data import layout
from ..data.dataset import collate
from ..data.sources import SourceUnavailableError
from ..files import atomic_write_bytes, atomic_write_text
from ..gaussians.meshing import MeshError, gaussians_to_mesh
from ..progress import bar as progress_bar
from ..sampling import sample
from . import metrics

__all__ = [
    "IMAGE_METRICS",
    "Evaluator",
    "dvc_metrics",
    "evaluate_objects",
    "json_safe",
    "load_metric_networks",
    "run_name",
    "run_report",
    "summary_line",
    "write_run",
]

IMAGE_METRICS = ("psnr", "ssim", "lpips")


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


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
        """Mesh Chamfer/F-score and volume IoU of one object's Gaussians (protocol: ouroboros3d.evaluation.metrics)."""
        ev, cam = self.params.evaluation, self.params.camera
        try:
            mesh = gaussians_to_mesh(
                gaussians, resolution=64, num_cameras=16, image_size=64, radius=cam.radius, fov_deg=cam.fov_deg
            )
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
        stack = {k: v.to(dev) for k, v in collate(items, ("input_view", "views", "depth", "K", "c2w")).items()}
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
        kwargs = dict(self.sample_kwargs, on_step=on_step, seeds=seeds)
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
        one_step = dict(self.sample_kwargs, steps=1, guidance=(1.0, 1.0), reconstruct="none", seeds=seeds)
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


# --- a whole evaluation run (experiments/evaluate.py) ---------------------------------


def run_name(variant: str, feedback_start: float | None = None) -> str:
    """The results folder of a run: the variant, or ``<variant>-fs<start>`` (``main-fs0.4``) for a Table 3 window."""
    return variant if feedback_start is None else f"{variant}-fs{float(feedback_start)}"


def load_metric_networks(device) -> tuple:
    """``(lpips, inception)`` on ``device``: LPIPS (alex) and the FID Inception, each a
    :class:`~ouroboros3d.evaluation.metrics.Unavailable` when its weights are not on this machine."""
    lpips = metrics.load_lpips_metric()
    if isinstance(lpips, torch.nn.Module):
        lpips = lpips.to(device)
    inception = metrics.load_inception()
    if isinstance(inception, torch.nn.Module):
        inception = inception.to(device)
    return lpips, inception


def evaluate_objects(
    evaluator: Evaluator, dataset, object_ids: list[str], batch_size: int, *, seed: int, desc: str, progress: bool
) -> tuple[list[dict], float]:
    """Every object of ``object_ids`` (of ``dataset``, a MultiViewDataset) in batches of ``batch_size``:
    the per-object rows and the wall time in seconds.

    The global torch generator is seeded with ``seed`` first (each object's noise has its own
    seed, see :func:`~ouroboros3d.evaluation.metrics.object_seed`); ``progress`` shows a bar on stderr.
    """
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    rows: list[dict] = []
    bar = progress_bar(total=len(object_ids), desc=desc, unit="obj", disable=not progress)
    index = {oid: i for i, oid in enumerate(dataset.object_ids)}

    def on_progress(info):
        bar.set_postfix_str(f"step {info['i'] + 1}/{info['steps']}", refresh=False)

    for start in range(0, len(object_ids), batch_size):
        items = []
        for oid in object_ids[start : start + batch_size]:
            item = dataset[index[oid]]
            item["source"] = layout.read_cameras(dataset.renders_dir / oid).get("source", "")
            items.append(item)
        rows += evaluator.run_batch(items, on_progress)
        bar.update(len(items))
    bar.close()
    return rows, time.perf_counter() - t0


def run_report(
    evaluator: Evaluator,
    rows: list[dict],
    *,
    name: str,
    variant: str,
    split: str,
    model_params: Params,
    object_ids: list[str],
    wall_seconds: float,
    batch_size: int,
) -> dict:
    """The run's ``metrics.json``: the model, the sampling settings, the protocol, the mean and
    t-interval of every per-object column, FID, what is unavailable here and why, the timings."""
    ev = evaluator.params.evaluation
    columns = [c for c in rows[0] if c not in {"object_id", "source", "seed"}]
    summary = metrics.summarize(rows, columns, ev.confidence)
    fid = evaluator.fid()
    unavailable = {}
    if isinstance(evaluator.lpips, metrics.Unavailable):
        unavailable["lpips"] = evaluator.lpips.to_json()
    if isinstance(fid, metrics.Unavailable):
        unavailable["fid"] = fid.to_json()
    if evaluator.geometry_unavailable:
        unavailable["geometry"] = {"status": "unavailable", "objects": evaluator.geometry_unavailable}
    kwargs = evaluator.sample_kwargs
    return {
        "name": name,
        "variant": variant,
        "model": {
            "feedback": model_params.feedback,
            "feedback_maps": list(model_params.feedback_maps) if model_params.feedback else [],
            "joint": model_params.joint,
            "resolution": model_params.data.resolution,
            "train_steps": model_params.train.steps,
        },
        "sample": {k: v for k, v in kwargs.items() if k != "sampler"} | {"sampler": evaluator.params.sample.sampler},
        "split": split,
        "objects": len(rows),
        "object_ids": object_ids,
        "protocol": {
            "input_view_excluded": True,
            "image_metrics": "mean over the non-input views of per-image PSNR/SSIM(/LPIPS alex), per object",
            "fscore_thresholds": list(ev.fscore_thresholds),
            "gt_points": ev.gt_points,
            "recon_points": "final Gaussians' depth at all views (alpha > 0.5), back-projected",
            "chamfer": "0.5 * (mean pred->gt + mean gt->pred nearest-neighbour distance), unit-box units",
            "interval": f"{ev.confidence:.0%} t-interval over objects",
            "seeds": "per object, from (seed, object id)",
            "mesh": (
                f"final Gaussians -> TSDF mesh (64³, 16 cameras at 64²); mesh_* from {ev.gt_points} points on it; "
                f"volume_iou on a {ev.iou_grid}³ grid over [-0.6, 0.6]³"
                if evaluator.mesh
                else "not computed (Table 3 windows compare depth points)"
            ),
        },
        "summary": summary,
        "fid": fid if isinstance(fid, dict) else fid.to_json(),
        "unavailable": unavailable,
        "wall_seconds": wall_seconds,
        "sampling_seconds": evaluator.seconds_sampling,
        "seconds_per_object": wall_seconds / max(len(rows), 1),
        "batch_size": batch_size,
        "device": evaluator.device,
        "threads": torch.get_num_threads(),
    }


def _csv(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_csv(index=False, lineterminator="\n")


def write_run(out_dir: str | Path, rows: list[dict], report: dict, evaluator: Evaluator) -> None:
    """The run folder, each file written atomically: ``per_object.csv``, ``metrics.json`` (strict
    JSON: NaN -> null), and the recorded objects' ``steps.csv`` and ``steps.npz`` (uint8 renders)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "per_object.csv", _csv(rows))
    atomic_write_text(out_dir / "metrics.json", json.dumps(json_safe(report), indent=2) + "\n")
    atomic_write_text(out_dir / "steps.csv", _csv(evaluator.step_rows))
    buffer = io.BytesIO()
    arrays = {k: np.stack(v) if k != "object_ids" else np.array(v) for k, v in evaluator.step_arrays.items() if v}
    np.savez_compressed(buffer, sigmas=np.array(evaluator.sigmas, dtype=np.float64), **arrays)
    atomic_write_bytes(out_dir / "steps.npz", buffer.getvalue())


def summary_line(report: dict) -> str:
    """One line for the log: objects, time, the headline means, and what is unavailable."""
    s, n, wall = report["summary"], report["objects"], report["wall_seconds"]
    return (
        f"{report['name']}: {n} objects in {wall:.0f} s ({wall / max(n, 1):.1f} s/object); "
        f"MV PSNR {s['mv_psnr']['mean']:.2f}, 3D PSNR {s['3d_psnr']['mean']:.2f}, "
        f"Δ {s['delta_psnr']['mean']:.3f}"
        + (f", CD {s['cd']['mean']:.4f}" if "cd" in s else "")
        + "".join(f"; {k} unavailable" for k in report["unavailable"])
    )

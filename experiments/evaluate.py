"""DVC stage `evaluate`: sample every eval object with a trained model and score it (ouroboros3d.metrics).

    python experiments/evaluate.py --variant main [--feedback-start 0.4] [--record-steps 3]
                                   [--metrics-out results/metrics.json]

The model is ``models/<variant>/`` (``model.safetensors`` + ``params.json``, written by
experiments/train.py); sampling and evaluation settings (``seed``, ``sample``, ``evaluation``,
``data.folder``) come from ``--params``. Each object is sampled with its own noise, seeded from
(seed, object id), so its result does not depend on which objects share its batch. Writes
``results/eval/<name>/`` (name = the variant, or ``<variant>-fs<start>``, e.g. ``main-fs0.4``,
with ``--feedback-start``):

* ``per_object.csv``: one row per object: ``mv_*`` (generated views), ``3d_*`` (renders of the
  final Gaussians), ``delta_*`` = mv − 3d for psnr/ssim[/lpips], all over the non-input views;
  geometry (``cd``, ``fscore@t``, precision/recall); the oracle (ground-truth depth points,
  ``oracle_*``) and the trivial baselines (``copy_input_*``, ``white_*``).
* ``metrics.json``: the settings, the protocol, mean and 95% t-interval per column, FID, the
  metrics that are unavailable here and why, and the wall time.
* ``steps.csv`` and ``steps.npz``: for the first ``--record-steps`` objects, the reconstruction
  at every denoising step (3D render PSNR/SSIM, Chamfer, F-scores; the renders as uint8).

``--metrics-out`` also writes the means as a small JSON of numbers (the DVC metrics file).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ouroboros3d import edm, metrics
from ouroboros3d.config import Params, ParamsError, load_params
from ouroboros3d.data import layout
from ouroboros3d.data.dataset import MultiViewDataset
from ouroboros3d.data.sources import SourceUnavailableError
from ouroboros3d.errors import guard
from ouroboros3d.generate import GenerationError, load_checkpoint
from ouroboros3d.io import atomic_write_bytes, atomic_write_text
from ouroboros3d.model import sample

IMAGE_METRICS = ("psnr", "ssim", "lpips")
SAMPLERS = {"euler": edm.sample_euler, "heun": edm.sample_heun}


def load_trained(model_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Params]:
    """The model in ``model_dir`` (model.safetensors + params.json), in eval mode, and its params."""
    checkpoint = load_checkpoint(model_dir, device)
    return checkpoint.model, checkpoint.params


def run_name(variant: str, feedback_start: float | None = None) -> str:
    """The results folder of a run: the variant, or ``<variant>-fs<start>`` (``main-fs0.4``) for a Table 3 window."""
    return variant if feedback_start is None else f"{variant}-fs{float(feedback_start)}"


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _noise(model, seeds: list[int], num_views: int, height: int, width: int) -> torch.Tensor:
    """Each object's unit-variance initial noise from its own seed (as ``sample`` draws it for a batch of one)."""
    ae = model.autoencoder
    shape = (1, num_views, ae.latent_channels, height // ae.downscale, width // ae.downscale)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


class Evaluator:
    """Samples batches of eval items and turns them into per-object rows and per-step rows."""

    def __init__(self, model, params: Params, sample_kwargs: dict, *, lpips, inception, record: set[str], device):
        self.model, self.params, self.sample_kwargs = model, params, sample_kwargs
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


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode()


def _json_safe(x):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
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
    if isinstance(fid, dict) and "status" not in fid:  # numbers only: an unavailable FID stays in metrics.json
        out["fid"] = fid
    return _json_safe(out)


@guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", default="main", help="the model folder name under --models")
    parser.add_argument("--models", default="models", help="folder holding models/<variant>/")
    parser.add_argument("--data", default="data", help="the data/ folder of the render stage")
    parser.add_argument("--out", default="results/eval", help="results go to <out>/<name>/")
    parser.add_argument("--name", default=None, help="output folder name (default: variant[-fs<start>])")
    parser.add_argument("--feedback-start", type=float, default=None, help="Table 3: feed back from this fraction")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: params sample.steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="objects per batch (default: params)")
    parser.add_argument("--max-objects", type=int, default=None, help="only the first N eval objects (by id)")
    parser.add_argument("--record-steps", type=int, default=None, help="objects with per-step records (default params)")
    parser.add_argument("--split", default="eval", choices=("eval", "val"), help="val: for choosing settings")
    parser.add_argument("--metrics-out", default=None, help="also write the means here (the DVC metrics file)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        start_fb = params.sample.feedback_start if args.feedback_start is None else args.feedback_start
        if not 0 <= start_fb <= 1:
            raise ParamsError(f"--feedback-start must lie in [0, 1], got {start_fb}")
        model, model_params = load_trained(Path(args.models) / args.variant, args.device)
    except (ParamsError, GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.name or run_name(args.variant, args.feedback_start)
    out_dir = Path(args.out) / name
    ev = params.evaluation
    batch_size = args.batch_size or ev.batch_size
    sp = params.sample
    steps = args.steps or sp.steps
    sample_kwargs = dict(
        steps=steps,
        sigma_min=sp.sigma_min,
        sigma_max=sp.sigma_max,
        guidance=tuple(sp.guidance),
        guidance_sigmas=sp.guidance_sigmas,
        feedback_start=start_fb,
        reconstruct="every_step",
        sampler=SAMPLERS[sp.sampler],
    )

    dataset = MultiViewDataset.for_split(args.split, args.data, model_params.ccm.normalization)
    ids = dataset.object_ids[: args.max_objects] if args.max_objects else dataset.object_ids
    if dataset[0]["views"].shape[-1] != model_params.data.resolution:
        print(
            f"error: the eval renders are {dataset[0]['views'].shape[-1]}² but the model was trained at "
            f"{model_params.data.resolution}²",
            file=sys.stderr,
        )
        return 2
    n_record = ev.step_objects if args.record_steps is None else args.record_steps
    lpips = metrics.load_lpips_metric()
    if isinstance(lpips, torch.nn.Module):
        lpips = lpips.to(args.device)
    inception = metrics.load_inception()
    if isinstance(inception, torch.nn.Module):
        inception = inception.to(args.device)
    evaluator = Evaluator(
        model, params, sample_kwargs, lpips=lpips, inception=inception, record=set(ids[:n_record]), device=args.device
    )
    torch.manual_seed(params.seed)

    t0 = time.perf_counter()
    rows: list[dict] = []
    bar = tqdm(total=len(ids), desc=f"evaluate {name}", unit="obj", disable=args.no_progress, file=sys.stderr)
    index = {oid: i for i, oid in enumerate(dataset.object_ids)}

    def progress(info):
        bar.set_postfix_str(f"step {info['i'] + 1}/{info['steps']}", refresh=False)

    for start in range(0, len(ids), batch_size):
        items = []
        for oid in ids[start : start + batch_size]:
            item = dataset[index[oid]]
            item["source"] = layout.read_cameras(dataset.renders_dir / oid).get("source", "")
            items.append(item)
        rows += evaluator.run_batch(items, progress)
        bar.update(len(items))
    bar.close()
    wall = time.perf_counter() - t0

    skip = {"object_id", "source", "seed"}
    columns = [c for c in rows[0] if c not in skip]
    summary = metrics.summarize(rows, columns, ev.confidence)
    fid = evaluator.fid()
    unavailable = {}
    if isinstance(lpips, metrics.Unavailable):
        unavailable["lpips"] = lpips.to_json()
    if isinstance(fid, metrics.Unavailable):
        unavailable["fid"] = fid.to_json()
    if evaluator.geometry_unavailable:
        unavailable["geometry"] = {"status": "unavailable", "objects": evaluator.geometry_unavailable}
    report = {
        "name": name,
        "variant": args.variant,
        "model": {
            "feedback": model_params.feedback,
            "feedback_maps": list(model_params.feedback_maps) if model_params.feedback else [],
            "joint": model_params.joint,
            "resolution": model_params.data.resolution,
            "train_steps": model_params.train.steps,
        },
        "sample": {k: v for k, v in sample_kwargs.items() if k != "sampler"} | {"sampler": sp.sampler},
        "split": args.split,
        "objects": len(rows),
        "object_ids": ids,
        "protocol": {
            "input_view_excluded": True,
            "image_metrics": "mean over the non-input views of per-image PSNR/SSIM(/LPIPS alex), per object",
            "fscore_thresholds": list(ev.fscore_thresholds),
            "gt_points": ev.gt_points,
            "recon_points": "final Gaussians' depth at all views (alpha > 0.5), back-projected",
            "chamfer": "0.5 * (mean pred->gt + mean gt->pred nearest-neighbour distance), unit-box units",
            "interval": f"{ev.confidence:.0%} t-interval over objects",
            "seeds": "per object, from (seed, object id)",
        },
        "summary": summary,
        "fid": fid if isinstance(fid, dict) else fid.to_json(),
        "unavailable": unavailable,
        "wall_seconds": wall,
        "sampling_seconds": evaluator.seconds_sampling,
        "seconds_per_object": wall / max(len(rows), 1),
        "batch_size": batch_size,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    atomic_write_bytes(out_dir / "per_object.csv", _csv(rows))
    atomic_write_text(out_dir / "metrics.json", json.dumps(_json_safe(report), indent=2) + "\n")
    atomic_write_bytes(out_dir / "steps.csv", _csv(evaluator.step_rows))
    buffer = io.BytesIO()
    arrays = {k: np.stack(v) if k != "object_ids" else np.array(v) for k, v in evaluator.step_arrays.items() if v}
    np.savez_compressed(buffer, sigmas=np.array(evaluator.sigmas, dtype=np.float64), **arrays)
    atomic_write_bytes(out_dir / "steps.npz", buffer.getvalue())
    if args.metrics_out:
        dvc = dvc_metrics(summary, report["fid"], ev.fscore_thresholds)
        atomic_write_text(args.metrics_out, json.dumps(dvc, indent=2) + "\n")

    s = summary
    print(
        f"{name}: {len(rows)} objects in {wall:.0f} s ({wall / max(len(rows), 1):.1f} s/object); "
        f"MV PSNR {s['mv_psnr']['mean']:.2f}, 3D PSNR {s['3d_psnr']['mean']:.2f}, "
        f"Δ {s['delta_psnr']['mean']:.3f}"
        + (f", CD {s['cd']['mean']:.4f}" if "cd" in s else "")
        + "".join(f"; {k} unavailable" for k in unavailable)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ouroboros3d import metrics
from ouroboros3d.checkpoint import load_checkpoint
from ouroboros3d.config import ParamsError, load_params
from ouroboros3d.data import layout
from ouroboros3d.data.dataset import MultiViewDataset
from ouroboros3d.errors import GenerationError, guard
from ouroboros3d.evaluation import Evaluator, dvc_metrics, json_safe
from ouroboros3d.io import atomic_write_bytes, atomic_write_text
from ouroboros3d.model import sample_kwargs


def run_name(variant: str, feedback_start: float | None = None) -> str:
    """The results folder of a run: the variant, or ``<variant>-fs<start>`` (``main-fs0.4``) for a Table 3 window."""
    return variant if feedback_start is None else f"{variant}-fs{float(feedback_start)}"


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode()


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
        checkpoint = load_checkpoint(Path(args.models) / args.variant, args.device)
        model, model_params = checkpoint.model, checkpoint.params
    except (ParamsError, GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.name or run_name(args.variant, args.feedback_start)
    out_dir = Path(args.out) / name
    ev = params.evaluation
    batch_size = args.batch_size or ev.batch_size
    sp = params.sample
    steps = args.steps or sp.steps
    kwargs = sample_kwargs(sp, steps=steps, feedback_start=start_fb, reconstruct="every_step")

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
        model,
        params,
        kwargs,
        lpips=lpips,
        inception=inception,
        record=set(ids[:n_record]),
        device=args.device,
        mesh=ev.mesh_metrics and args.feedback_start is None,  # Table 3's windows: depth points only
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
        "sample": {k: v for k, v in kwargs.items() if k != "sampler"} | {"sampler": sp.sampler},
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
            "mesh": (
                f"final Gaussians -> TSDF mesh (64³, 16 cameras at 64²); mesh_* from {ev.gt_points} points on it; "
                f"volume_iou on a {ev.iou_grid}³ grid over [-0.6, 0.6]³"
                if ev.mesh_metrics and args.feedback_start is None
                else "not computed (Table 3 windows compare depth points)"
            ),
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
    atomic_write_text(out_dir / "metrics.json", json.dumps(json_safe(report), indent=2) + "\n")
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

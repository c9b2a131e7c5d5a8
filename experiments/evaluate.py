"""DVC stage `evaluate`: sample every eval object with a trained model and score it (ouroboros3d.evaluation.metrics).

    python experiments/evaluate.py --variant main [--feedback-start 0.4] [--record-steps 3]
                                   [--metrics-out results/metrics.json]

The model is ``models/<variant>/`` (an ``Ouroboros3DPipeline`` folder, written by
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

``--metrics-out`` also writes the means as a small JSON of numbers (the DVC metrics file). The
run, its report and its files: ouroboros3d/evaluation/evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ouroboros3d.config import ParamsError, load_params
from ouroboros3d.data.dataset import MultiViewDataset
from ouroboros3d.errors import ArgumentParser, GenerationError, count, guard
from ouroboros3d.evaluation.evaluate import (
    Evaluator,
    dvc_metrics,
    evaluate_objects,
    load_metric_networks,
    run_name,
    run_report,
    summary_line,
    write_run,
)
from ouroboros3d.files import atomic_write_text
from ouroboros3d.inference.pipeline import Ouroboros3DPipeline
from ouroboros3d.sampling import sample_kwargs


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", default="main", help="the model folder name under --models")
    parser.add_argument("--models", default="models", help="folder holding models/<variant>/")
    parser.add_argument("--data", default="data", help="the data/ folder of the render stage")
    parser.add_argument("--out", default="results/eval", help="results go to <out>/<name>/")
    parser.add_argument("--name", default=None, help="output folder name (default: variant[-fs<start>])")
    parser.add_argument("--feedback-start", type=float, default=None, help="Table 3: feed back from this fraction")
    parser.add_argument("--steps", type=count(1), default=None, help="sampling steps (default: params sample.steps)")
    parser.add_argument("--batch-size", type=count(1), default=None, help="objects per batch (default: params)")
    parser.add_argument("--max-objects", type=count(1), default=None, help="only the first N eval objects (by id)")
    parser.add_argument(
        "--record-steps", type=count(0), default=None, help="objects with per-step records (default params)"
    )
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
        checkpoint = Ouroboros3DPipeline.from_pretrained(Path(args.models) / args.variant, device=args.device)
        model, model_params = checkpoint.model, checkpoint.params
    except (ParamsError, GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.name or run_name(args.variant, args.feedback_start)
    ev, sp = params.evaluation, params.sample
    batch_size = ev.batch_size if args.batch_size is None else args.batch_size
    steps = sp.steps if args.steps is None else args.steps
    kwargs = sample_kwargs(sp, steps=steps, feedback_start=start_fb, reconstruct="every_step")

    dataset = MultiViewDataset.for_split(args.split, args.data, model_params.ccm.normalization)
    ids = dataset.object_ids if args.max_objects is None else dataset.object_ids[: args.max_objects]
    if dataset[0]["views"].shape[-1] != model_params.data.resolution:
        print(
            f"error: the eval renders are {dataset[0]['views'].shape[-1]}² but the model was trained at "
            f"{model_params.data.resolution}²",
            file=sys.stderr,
        )
        return 2
    n_record = ev.step_objects if args.record_steps is None else args.record_steps
    lpips, inception = load_metric_networks(args.device)
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
    rows, wall = evaluate_objects(
        evaluator, dataset, ids, batch_size, seed=params.seed, desc=f"evaluate {name}", progress=not args.no_progress
    )
    report = run_report(
        evaluator,
        rows,
        name=name,
        variant=args.variant,
        split=args.split,
        model_params=model_params,
        object_ids=ids,
        wall_seconds=wall,
        batch_size=batch_size,
    )
    write_run(Path(args.out) / name, rows, report, evaluator)
    if args.metrics_out:
        dvc = dvc_metrics(report["summary"], report["fid"], ev.fscore_thresholds)
        atomic_write_text(args.metrics_out, json.dumps(dvc, indent=2) + "\n")
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

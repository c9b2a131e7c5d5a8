"""DVC stage `figures`: the analogue of the supplementary's Figure 3 (reconstructions across denoising steps).

    python experiments/figures.py [--runs feedback=main no_feedback=main-fs1.0] [--view 2]

For each run (a label and an experiments/evaluate.py results folder whose ``steps.npz`` /
``steps.csv`` record per-step reconstructions), writes under ``results/figures/``:

* ``denoising_steps.png``: for each recorded object, one row per run: the reconstruction
  rendered at one non-input view after several denoising steps, and the ground truth;
* ``denoising_curves.png``: 3D render PSNR (non-input views) and Chamfer distance against
  the denoising step, the mean over the recorded objects, one line per run;
* ``denoising_curves.csv``: the same curves (``step, sigma, psnr_3d_<label>, cd_<label>``),
  declared as a DVC plot;
* ``learning_curves.png``: the validation-split PSNR of every training run whose dvclive log
  (``--train``, ``results/train/<run>/plots/metrics/val/``) has one, against its steps, beside
  the trivial baselines.

By default the runs are the main model with feedback at every step and the same model with
no feedback at inference (``--feedback-start 1.0``): the same weights, the only difference
being whether the reconstructions are fed back. The figures: ouroboros3d/reporting/figures.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ouroboros3d.errors import ArgumentParser, guard
from ouroboros3d.files import atomic_write_bytes, atomic_write_text
from ouroboros3d.reporting.figures import curves, curves_figure, learning_figure, load_run, png_bytes, steps_figure


@guard
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", default="results/eval", help="the folder of experiments/evaluate.py's runs")
    parser.add_argument(
        "--runs", nargs="+", default=["feedback=main", "no_feedback=main-fs1.0"], help="label=run folder pairs"
    )
    parser.add_argument(
        "--train",
        default="results/train",
        help="training runs (dvclive logs) whose validation scores give learning curves",
    )
    parser.add_argument("--out", default="results/figures")
    parser.add_argument("--view", type=int, default=None, help="view shown (default: the middle view, not the input)")
    parser.add_argument("--columns", type=int, default=6, help="denoising steps shown")
    parser.add_argument("--objects", type=int, default=3, help="objects shown")
    args = parser.parse_args(argv)
    runs = {}
    try:
        for pair in args.runs:
            label, _, folder = pair.partition("=")
            if not folder or not label.isidentifier():
                raise ValueError(f"--runs takes label=folder with a label like no_feedback, got {pair!r}")
            runs[label] = load_run(Path(args.eval) / folder)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    num_views = next(iter(runs.values()))[1]["recon_rgb"].shape[2]
    view = num_views // 2 if args.view is None else args.view
    if not 0 < view < num_views:
        print(f"error: --view must be a non-input view in [1, {num_views}), got {view}", file=sys.stderr)
        return 2
    out = Path(args.out)
    learning = learning_figure(Path(args.train))  # every input read before the first file is written
    table = curves(runs)
    atomic_write_text(out / "denoising_curves.csv", table.to_csv(index=False, lineterminator="\n"))
    atomic_write_bytes(out / "denoising_steps.png", png_bytes(steps_figure(runs, view, args.columns, args.objects)))
    atomic_write_bytes(out / "denoising_curves.png", png_bytes(curves_figure(table, list(runs))))
    if learning is not None:
        atomic_write_bytes(out / "learning_curves.png", png_bytes(learning))
    print(f"wrote {out / 'denoising_steps.png'}, {out / 'denoising_curves.png'}, {out / 'denoising_curves.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

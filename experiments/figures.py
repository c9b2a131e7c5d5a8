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
being whether the reconstructions are fed back.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ouroboros3d.errors import guard
from ouroboros3d.io import atomic_write_bytes
from ouroboros3d.tracking import read_curves


def load_run(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """A run's steps.csv and steps.npz arrays (``object_ids``, ``sigmas``, ``recon_rgb`` (O, S, V, 3, H, W), ...)."""
    folder = Path(folder)
    missing = [f for f in ("steps.csv", "steps.npz") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: run experiments/evaluate.py with --record-steps > 0")
    with np.load(folder / "steps.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    if "recon_rgb" not in arrays:
        raise ValueError(f"{folder} recorded no steps (evaluation.step_objects = 0?)")
    return pd.read_csv(folder / "steps.csv", keep_default_na=False, na_values=["", "nan"]), arrays


def pick_steps(num_steps: int, count: int) -> list[int]:
    """``count`` step indices spread from the first to the last step (both included)."""
    count = max(1, min(count, num_steps))
    return sorted({round(x) for x in np.linspace(0, num_steps - 1, count)})


def curves(runs: dict[str, tuple[pd.DataFrame, dict]]) -> pd.DataFrame:
    """Mean over recorded objects of 3D render PSNR and Chamfer per step, one column per run."""
    out = None
    for label, (steps, _) in runs.items():
        cols = {"3d_psnr": f"psnr_3d_{label}", "cd": f"cd_{label}"}
        have = [c for c in cols if c in steps]
        mean = steps.groupby("step")[["sigma", *have]].mean().rename(columns=cols).reset_index()
        out = mean if out is None else out.merge(mean.drop(columns="sigma"), on="step", how="outer")
    return out


def _image(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (1, 2, 0))  # (3, H, W) uint8 -> (H, W, 3)


def steps_figure(runs: dict[str, tuple[pd.DataFrame, dict]], view: int, count: int, max_objects: int):
    first = next(iter(runs.values()))[1]
    objects = [str(o) for o in first["object_ids"]][:max_objects]
    num_steps = first["recon_rgb"].shape[1]
    chosen = pick_steps(num_steps, count)
    sigmas = first["sigmas"]
    rows = [(o, label) for o in objects for label in runs]
    fig, axes = plt.subplots(
        len(rows), len(chosen) + 1, figsize=(1.5 * (len(chosen) + 1), 1.6 * len(rows)), squeeze=False
    )
    for r, (obj, label) in enumerate(rows):
        arrays = runs[label][1]
        ids = [str(o) for o in arrays["object_ids"]]
        for c, s in enumerate(chosen):
            ax = axes[r, c]
            if obj in ids:
                ax.imshow(_image(arrays["recon_rgb"][ids.index(obj), s, view]))
            if r == 0:
                sigma = f"\nσ={sigmas[s]:.3g}" if s < len(sigmas) else ""
                ax.set_title(f"step {s + 1}/{num_steps}{sigma}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{obj}\n{label}", fontsize=6)
        if obj in ids:
            axes[r, -1].imshow(_image(arrays["gt_views"][ids.index(obj), view]))
        if r == 0:
            axes[r, -1].set_title("ground truth", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"3D reconstruction (view {view}) across denoising steps", fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(table: pd.DataFrame, labels: list[str]):
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for label in labels:
        for ax, col, name in ((axes[0], f"psnr_3d_{label}", "3D render PSNR (dB)"), (axes[1], f"cd_{label}", "CD")):
            if col in table:
                ax.plot(table["step"] + 1, table[col], marker="o", markersize=2, label=label.replace("_", " "))
            ax.set_xlabel("denoising step")
            ax.set_ylabel(name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False)
    axes[0].set_title("3D render PSNR (non-input views)", fontsize=9)
    axes[1].set_title("Chamfer distance (unit box)", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# validation scores (ouroboros3d/validation.py) in each run's dvclive log: F's runs have the first two, G's the third
CURVES = {
    "mv_psnr": ("o-", "sampled views (no G)"),
    "x0_psnr": ("s-", "1-step: D(σ_max)"),
    "recon_psnr": ("^-", "G on ground-truth views"),
}


def learning_figure(train_dir: Path):
    """Validation-split PSNR against training steps, one panel per training run with a validation curve."""
    curves_ = {p.parent.name: read_curves(p.parent, "val") for p in sorted(train_dir.glob("*/metrics.json"))}
    curves_ = {name: df for name, df in curves_.items() if len(df)}
    if not curves_:
        return None
    fig, axes = plt.subplots(1, len(curves_), figsize=(4.2 * len(curves_), 3.4), squeeze=False, sharey=True)
    for ax, (name, df) in zip(axes[0], curves_.items(), strict=True):
        for column, (marker, label) in CURVES.items():
            if column in df:
                ax.plot(df["step"], df[column], marker, label=label)
        ax.axhline(df["copy_input_psnr"].iloc[-1], color="k", ls="--", lw=1, label="copy input view")
        ax.axhline(df["white_psnr"].iloc[-1], color="grey", ls=":", lw=1, label="white image")
        ax.set(title=name, xlabel="training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("PSNR of non-input views, val split (dB)")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


@guard
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    table = curves(runs)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n")
    atomic_write_bytes(out / "denoising_curves.csv", buffer.getvalue().encode())
    atomic_write_bytes(out / "denoising_steps.png", _png(steps_figure(runs, view, args.columns, args.objects)))
    atomic_write_bytes(out / "denoising_curves.png", _png(curves_figure(table, list(runs))))
    learning = learning_figure(Path(args.train))
    if learning is not None:
        atomic_write_bytes(out / "learning_curves.png", _png(learning))
    print(f"wrote {out / 'denoising_steps.png'}, {out / 'denoising_curves.png'}, {out / 'denoising_curves.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

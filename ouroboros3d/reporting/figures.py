"""The results figures: the supplementary's Figure 3 (reconstructions across denoising steps) and learning curves.

experiments/figures.py (the DVC stage `figures`) loads the runs and writes what these functions
return. The figures are built on :class:`matplotlib.figure.Figure`, not pyplot, so importing
this module leaves a notebook's backend alone and a figure is never kept in pyplot's registry;
:func:`png_bytes` saves without the matplotlib version in the metadata, so the same results
give the same PNG bytes (and DVC sees no change). The dataset figure of the `ccm` stage is
ouroboros3d.data.previews.

* :func:`steps_figure`: per recorded object, one row per run: the reconstruction rendered at
  one non-input view after several denoising steps, and the ground truth;
* :func:`curves` / :func:`curves_figure`: 3D render PSNR (non-input views) and Chamfer distance
  against the denoising step, the mean over the recorded objects, one column/line per run;
* :func:`learning_figure`: the validation-split PSNR of every training run whose dvclive log
  has one, against its steps, beside the trivial baselines.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import one_line
from .results_files import ResultsError, checked_curves, eval_remedy, read_csv_file

__all__ = ["curves", "curves_figure", "learning_figure", "load_run", "pick_steps", "png_bytes", "steps_figure"]


def load_run(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """A run's steps.csv and steps.npz arrays (``object_ids``, ``sigmas``, ``recon_rgb`` (O, S, V, 3, H, W), ...)."""
    folder = Path(folder)
    missing = [f for f in ("steps.csv", "steps.npz") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: run experiments/evaluate.py with --record-steps > 0")
    remedy, npz_file = eval_remedy(folder.name), folder / "steps.npz"
    with open(npz_file, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would try it as a pickle
            raise ResultsError(f"{npz_file} is not a NumPy .npz archive; {remedy}")
    try:  # never with allow_pickle: a steps.npz holds plain arrays
        with np.load(npz_file) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        problem = "holds Python objects (a pickled array), which are never loaded"
        problem = problem if "pickle" in str(e) else f"is damaged ({one_line(e)})"
        raise ResultsError(f"{npz_file} {problem}; {remedy}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ResultsError(f"{npz_file} is damaged ({one_line(e)}); {remedy}") from None
    if "recon_rgb" not in arrays:
        raise ValueError(f"{folder} recorded no steps (evaluation.step_objects = 0?)")
    problem = _steps_problem(arrays)
    if problem:
        raise ResultsError(f"{npz_file} {problem}; {remedy}")
    steps = read_csv_file(
        folder / "steps.csv",
        remedy,
        ("step", "sigma"),
        ("step", "sigma", "3d_psnr", "cd"),
        keep_default_na=False,
        na_values=["", "nan"],
    )
    return steps, arrays


def _steps_problem(arrays: dict) -> str | None:
    """What is wrong with a steps.npz's arrays for the figures (None if nothing)."""
    missing = [k for k in ("object_ids", "sigmas", "gt_views") if k not in arrays]
    if missing:
        return f"lacks the array(s) {missing}"
    recon, gt, ids = arrays["recon_rgb"], arrays["gt_views"], arrays["object_ids"]
    if recon.ndim != 6 or recon.shape[3] != 3 or recon.dtype != np.uint8:
        return f"has recon_rgb of {recon.dtype} {recon.shape}, not uint8 (objects, steps, views, 3, H, W)"
    if gt.shape != (recon.shape[0], *recon.shape[2:]) or gt.dtype != np.uint8:
        return f"has gt_views of {gt.dtype} {gt.shape}, not uint8 {(recon.shape[0], *recon.shape[2:])} as recon_rgb"
    if ids.shape != (recon.shape[0],) or arrays["sigmas"].ndim != 1:
        return f"has {ids.shape} object_ids and {arrays['sigmas'].shape} sigmas for {recon.shape[0]} recorded objects"
    return None


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


def steps_figure(runs: dict[str, tuple[pd.DataFrame, dict]], view: int, count: int, max_objects: int) -> Figure:
    """Figure 3: the first ``max_objects`` recorded objects at ``view`` after ``count`` steps, per run; the truth."""
    first = next(iter(runs.values()))[1]
    objects = [str(o) for o in first["object_ids"]][:max_objects]
    num_steps = first["recon_rgb"].shape[1]
    chosen = pick_steps(num_steps, count)
    sigmas = first["sigmas"]
    rows = [(o, label) for o in objects for label in runs]
    fig = Figure(figsize=(1.5 * (len(chosen) + 1), 1.6 * len(rows)))
    axes = fig.subplots(len(rows), len(chosen) + 1, squeeze=False)
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


def curves_figure(table: pd.DataFrame, labels: list[str]) -> Figure:
    """3D render PSNR and Chamfer distance against the denoising step (:func:`curves`), one line per label."""
    fig = Figure(figsize=(8, 3))
    axes = fig.subplots(1, 2)
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


# validation scores (ouroboros3d/training/validation.py) in each run's dvclive log:
# F's runs have the first two, G's the third
LEARNING_CURVES = {
    "mv_psnr": ("o-", "sampled views (no G)"),
    "x0_psnr": ("s-", "1-step: D(σ_max)"),
    "recon_psnr": ("^-", "G on ground-truth views"),
}


def learning_figure(train_dir: Path) -> Figure | None:
    """Validation-split PSNR against training steps, one panel per training run with a validation curve.

    None when no run under ``train_dir`` has one.
    """
    curves_ = {p.parent.name: checked_curves(p.parent, "val") for p in sorted(train_dir.glob("*/metrics.json"))}
    curves_ = {name: df for name, df in curves_.items() if len(df)}
    if not curves_:
        return None
    fig = Figure(figsize=(4.2 * len(curves_), 3.4))
    axes = fig.subplots(1, len(curves_), squeeze=False, sharey=True)
    for ax, (name, df) in zip(axes[0], curves_.items(), strict=True):
        for column, (marker, label) in LEARNING_CURVES.items():
            if column in df:
                ax.plot(df["step"], df[column], marker, label=label)
        for column, style, label in (("copy_input_psnr", "--", "copy input view"), ("white_psnr", ":", "white image")):
            if column in df:  # the baselines, when the run scored them
                ax.axhline(df[column].iloc[-1], color="k" if style == "--" else "grey", ls=style, lw=1, label=label)
        ax.set(title=name, xlabel="training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("PSNR of non-input views, val split (dB)")
    for ax in axes[0]:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG at 150 dpi, with no "Software" metadata, so the same figure gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, metadata={"Software": None})
    return buffer.getvalue()

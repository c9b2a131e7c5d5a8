"""The report's learning-study section: the tables of benchmarks/learning_study.py (val split),
read from their committed CSVs in results/study/."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .comparison import paired
from .results_files import read_csv_file

__all__ = ["finetune_leads", "sampling_leads", "study_tables"]

LEAD_COLUMNS = ("3d_psnr", "mv_psnr")  # full against baseline: the paper's measure first, then the views
STUDY_COLUMNS = {
    "x0_psnr": "1-step x0",
    "mv_psnr": "sampled MV",
    "copy_input_psnr": "copy-input",
    "white_psnr": "white",
}


def study_tables(results: Path) -> str:
    """The learning study's committed tables (benchmarks/learning_study.py; val split)."""
    parts = []
    for part, key in (
        ("sampling", "setting"),
        ("noise", "run"),
        ("size", "run"),
        ("mix", "run"),
        ("heldout", "objects"),
    ):
        path = results / "study" / f"{part}.csv"
        if not path.exists():
            parts.append(f"*{part}: not run (`python benchmarks/learning_study.py {part}`)*\n")
            continue
        remedy = f"re-create it with `python benchmarks/learning_study.py {part}` (not a DVC stage: hours of CPU)"
        df = read_csv_file(path, remedy, (key,), ("step", *STUDY_COLUMNS))
        cols = [c for c in ("step", *STUDY_COLUMNS) if c in df.columns]
        head = [key, *[STUDY_COLUMNS.get(c, c) for c in cols]]
        lines = [f"**{part}** (`{path}`)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in df.to_dict("records"):
            cells = [str(row[c]) if c == "step" else f"{row[c]:.2f}" for c in cols]
            lines.append(f"| {row[key]} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    parts.append(_study_mean(results / "study" / "mean.csv"))
    parts.append(_study_finetune(results / "study" / "finetune.csv"))
    parts.append(_study_sampling_finetuned(results / "study" / "sampling_finetuned.csv"))
    return "\n".join(parts)


def finetune_leads(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The ``finetune`` study (runs "full, <n> steps, <setting>" and "baseline, …", one row per
    val object): per fine-tune setting and length, :func:`_full_against_baseline`."""
    out = []
    for (setting, steps), g in df.groupby(["setting", "steps"], sort=False):
        runs = {run.split(",")[0]: x.set_index("object_id") for run, x in g.groupby("run")}
        if (leads := _full_against_baseline(runs, confidence)) is not None:
            out.append({"setting": setting, "steps": int(steps)} | leads)
    return pd.DataFrame(out)


def sampling_leads(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The ``sampling-finetuned`` study (rows: model "full" or "baseline", setting, val object):
    per sampling setting, :func:`_full_against_baseline`, and the copy-input mean beside."""
    out = []
    for setting, g in df.groupby("setting", sort=False):
        runs = {m: x.set_index("object_id") for m, x in g.groupby("model")}
        if (leads := _full_against_baseline(runs, confidence)) is not None:
            out.append({"setting": setting} | leads | {"copy-input": runs["full"]["copy_input_psnr"].mean()})
    return pd.DataFrame(out)


def _full_against_baseline(runs: dict[str, pd.DataFrame], confidence: float) -> dict | None:
    """Per column of :data:`LEAD_COLUMNS`: both models' means over the val objects and the full
    model's paired lead over the baseline, mean and t-interval (the claims table's method); None
    unless ``runs`` (model -> its rows, indexed by object) holds both."""
    if not {"full", "baseline"} <= set(runs):
        return None
    row = {}
    for c in LEAD_COLUMNS:
        lead = paired(runs["full"], runs["baseline"], c, confidence) or dict.fromkeys(("mean", "lo", "hi"), math.nan)
        row |= {f"full {c}": runs["full"][c].mean(), f"baseline {c}": runs["baseline"][c].mean()}
        row |= {f"lead {c}": lead["mean"], f"lead {c} low": lead["lo"], f"lead {c} high": lead["hi"]}
    return row


def _lead_cells(row: dict) -> list[str]:
    """A row of :func:`_full_against_baseline` as table cells: full, baseline, lead [CI] per column."""
    cells = []
    for c in LEAD_COLUMNS:
        lead = f"{row[f'lead {c}']:+.2f} [{row[f'lead {c} low']:+.2f}, {row[f'lead {c} high']:+.2f}]"
        cells += [f"{row[f'full {c}']:.2f}", f"{row[f'baseline {c}']:.2f}", lead]
    return cells


def _study_sampling_finetuned(path: Path) -> str:
    """The ``sampling-finetuned`` part: Table 2's full model and baseline under each sampler, on val."""
    if not path.exists():
        return "*sampling-finetuned: not run (`python benchmarks/learning_study.py sampling-finetuned`)*\n"
    remedy = "re-create it with `python benchmarks/learning_study.py sampling-finetuned`"
    df = read_csv_file(
        path, remedy, ("model", "setting", "object_id", "mv_psnr", "3d_psnr", "copy_input_psnr"),
        ("mv_psnr", "3d_psnr", "copy_input_psnr"),
    )  # fmt: skip
    lines = [
        f"**sampling-finetuned** (`{path}`, {df['object_id'].nunique()} val objects, the `train` stages' "
        "weights; lead: full − baseline, paired, 95% CI)",
        "",
        "| sampling | full 3D | baseline 3D | lead 3D | full MV | baseline MV | lead MV | copy-input |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sampling_leads(df).to_dict("records"):
        lines.append("| " + " | ".join([r["setting"], *_lead_cells(r), f"{r['copy-input']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def _study_finetune(path: Path) -> str:
    """The ``finetune`` part: Table 2's full model and baseline at each fine-tune length, on val."""
    if not path.exists():
        return "*finetune: not run (`python benchmarks/learning_study.py finetune`)*\n"
    remedy = "re-create it with `python benchmarks/learning_study.py finetune`"
    df = read_csv_file(
        path, remedy, ("run", "setting", "steps", "object_id", "mv_psnr", "3d_psnr"), ("steps", "mv_psnr", "3d_psnr")
    )
    lines = [
        f"**finetune** (`{path}`, {df['object_id'].nunique()} val objects; lead: full − baseline, paired, 95% CI)",
        "",
        "| setting | fine-tune steps | full 3D | baseline 3D | lead 3D | full MV | baseline MV | lead MV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in finetune_leads(df).to_dict("records"):
        lines.append("| " + " | ".join([r["setting"], str(r["steps"]), *_lead_cells(r)]) + " |")
    return "\n".join(lines) + "\n"


def _study_mean(path: Path) -> str:
    """The ``mean`` part: per prediction, the mean over val objects of PSNR, the PSNR of the
    mean MSE (what an MSE-trained F minimises), and the objects on which it beats copy-input."""
    if not path.exists():
        return "*mean: not run (`python benchmarks/learning_study.py mean`)*\n"
    remedy = "re-create it with `python benchmarks/learning_study.py mean`"
    df = read_csv_file(path, remedy, ("prediction",), ("object", "psnr", "mse"))
    copy = df[df["prediction"] == "copy-input"].set_index("object")["psnr"]
    lines = [
        f"**mean** (`{path}`)",
        "",
        "| prediction | mean PSNR | PSNR of the mean MSE | objects above copy-input |",
        "|---|---|---|---|",
    ]
    for name, g in df.groupby("prediction", sort=False):
        wins = "–" if name == "copy-input" else f"{int((g.set_index('object')['psnr'] > copy).sum())} of {len(g)}"
        lines.append(f"| {name} | {g['psnr'].mean():.2f} | {-10 * math.log10(g['mse'].mean()):.2f} | {wins} |")
    return "\n".join(lines) + "\n"

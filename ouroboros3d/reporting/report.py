"""paper/report.md filled in: the template's placeholders from the pipeline's results.

The report's prose lives in paper/report_template.md; every number, table and verdict in it
comes from ``results/`` through the placeholders below, so the report is regenerated with the
results and never edited by hand (experiments/report.py, the DVC stage `report`, only reads
the template and writes the report). Verdicts are computed from paired per-object differences
and their 95% t-intervals (ouroboros3d.evaluation.stats, the interval the tables use too): "better" or
"worse" only when the interval excludes zero.

  {{setup}}           data, model and training sizes of this run
  {{training}}        per trained model: steps, wall time, final losses
  {{learning}}        validation-split learning curves (the dvclive logs results/train/*/)
  {{study}}           the learning study's tables (results/study/*.csv, benchmarks/learning_study.py)
  {{main_metrics}}    the main model's metrics.json
  {{table2}}          results/tables/table2_ablation.md (body)
  {{table3}}          results/tables/table3_feedback_window.md (body)
  {{claims}}          the paper's claims, each with our measured paired difference and a verdict

A placeholder with no filler is an error, not an empty section.

Every results file is read through the checked readers below (shared with ouroboros3d.reporting.tables and
ouroboros3d.reporting.figures): a file that is damaged, not UTF-8, or lacks what its stage writes stops the
stage with one line naming the file and the stage that re-creates it (:class:`ResultsError`).
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path

import pandas as pd

from ..config import Params
from ..errors import UserError
from .comparison import paired
from .results_files import (
    ResultsError,
    checked_curves,
    eval_remedy,
    read_csv_file,
    read_json_file,
    read_text_file,
    stage_remedy,
    train_remedy,
)
from .study import study_tables

__all__ = ["PlaceholderError", "claims_table", "render_report", "verdict"]


# --- the report ------------------------------------------------------------------------------------------------


class PlaceholderError(UserError, KeyError):
    """A template placeholder with no filler (a KeyError, as a missing key of the fillers)."""

    __str__ = Exception.__str__  # the message, not KeyError's quoted repr


def _train_summary(path: Path) -> dict:
    """A training run's dvclive metrics.json, checked for the parts the report reads."""
    remedy = train_remedy(path.parent.name)
    s = read_json_file(path, remedy)
    for key in ("train", "run", "val"):
        if not isinstance(s.get(key, {}), dict):
            raise ResultsError(f"{path}: its {key!r} is not a JSON object; {remedy}")
    values = [v for k, v in s.get("train", {}).items() if k in ("loss", "loss_mv", "loss_recon")]
    values += [v for k, v in s.get("run", {}).items() if k == "seconds"]
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
        raise ResultsError(f"{path}: its train losses or run seconds are not numbers; {remedy}")
    return s


def verdict(diff: dict | None, higher_is_better: bool) -> str:
    """ "better"/"worse" when the interval of :func:`paired` excludes zero, else no detectable difference."""
    if diff is None:
        return "not measured"
    if diff["lo"] <= 0 <= diff["hi"]:
        return "no detectable difference"
    better = (diff["mean"] > 0) == higher_is_better
    return "better" if better else "worse"


def _fmt(diff: dict | None, digits: int) -> str:
    if diff is None:
        return "–"
    return f"{diff['mean']:+.{digits}f} [{diff['lo']:+.{digits}f}, {diff['hi']:+.{digits}f}] (n={diff['n']})"


CLAIM_COLUMNS = ("3d_psnr", "mv_psnr", "x0_psnr", "cd", "copy_input_psnr", "white_psnr")


def _per_object(results: Path, run: str) -> pd.DataFrame | None:
    path = results / "eval" / run / "per_object.csv"
    if not path.exists():
        return None
    return read_csv_file(path, eval_remedy(run), ("object_id",), CLAIM_COLUMNS).set_index("object_id")


def claims_table(results: Path, variants: list[str]) -> str:
    """The paper's claims against paired differences on our eval objects."""
    main, no_fb = _per_object(results, "main"), _per_object(results, "main-fs1.0")
    rows = []

    def add(claim, a, b, column, higher, digits):
        if a is None or b is None:
            rows.append((claim, column, "–", "not measured (run missing)"))
            return
        d = paired(a, b, column)
        rows.append((claim, column, _fmt(d, digits), verdict(d, higher)))

    add(
        "3D feedback at inference improves the 3D renders (same weights, Table 3's feedback at every step vs none)",
        main,
        no_fb,
        "3d_psnr",
        True,
        2,
    )
    add("... and the 3D geometry", main, no_fb, "cd", False, 4)
    add("... and the multi-view images", main, no_fb, "mv_psnr", True, 2)
    for name, claim in (
        ("baseline", "the full model beats no joint training / no feedback (Table 2, row 1 vs 5)"),
        ("joint", "the full model beats joint training without feedback (Table 2, row 2 vs 5)"),
        ("ccm", "adding RGB to CCM feedback helps (Table 2, row 3 vs 5)"),
        ("rgb", "adding CCM to RGB feedback helps (Table 2, row 4 vs 5)"),
    ):
        if name in variants:
            other = _per_object(results, name)
            add(claim, main, other, "3d_psnr", True, 2)
            add("... geometry", main, other, "cd", False, 4)
    if main is not None:  # the model against the trivial baselines on the same objects
        for ours, base, text in (
            ("3d_psnr", "copy_input_psnr", "3D renders beat copying the input view into every view"),
            ("mv_psnr", "copy_input_psnr", "generated views beat copying the input view"),
            ("x0_psnr", "copy_input_psnr", "F's 1-step conditional mean beats copying the input view"),
            ("mv_psnr", "white_psnr", "generated views beat a blank white image"),
        ):
            if {ours, base} <= set(main.columns):
                d = paired(main[[ours]], main[[base]].rename(columns={base: ours}), ours)
                rows.append((f"(sanity) {text}", f"{ours} − {base}", _fmt(d, 2), verdict(d, True)))
    if main is not None and {"mv_psnr", "3d_psnr"} <= set(main.columns):
        gap = main["mv_psnr"] - main["3d_psnr"]
        rows.append(
            (
                "multi-view and 3D agree (the paper's Δ PSNR of the full model: 0.009 dB)",
                "Δ PSNR = MV − 3D",
                f"{gap.mean():+.2f} dB over {len(gap)} objects",
                "as measured",
            )
        )
    body = "| claim | metric | ours: paired difference, mean [95% CI] | verdict |\n|---|---|---|---|\n"
    return body + "".join(f"| {c} | {m} | {d} | {v} |\n" for c, m, d, v in rows)


def _table_body(path: Path) -> str:
    if not path.exists():
        return f"({path} is missing: run `dvc repro`)\n"
    return re.sub(r"\A# [^\n]*\n\n", "", read_text_file(path, stage_remedy("experiments/tables.py", "tables")))


def _training(results: Path) -> str:
    lines = [
        "| model | steps | wall time | final loss | multi-view loss | reconstruction loss |",
        "|---|---|---|---|---|---|",
    ]
    for path in sorted((results / "train").glob("*/metrics.json")):  # dvclive's summary of each run
        s = _train_summary(path)
        losses = [s.get("train", {}).get(k, float("nan")) for k in ("loss", "loss_mv", "loss_recon")]
        run = s.get("run", {})
        minutes = f"{run['seconds'] / 60:.1f} min (last run)" if "seconds" in run else "–"
        lines.append(
            f"| {path.parent.name} | {run.get('steps', s.get('step', '–'))} | {minutes} | "
            + " | ".join(f"{v:.4f}" for v in losses)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _schedule(t) -> str:
    decay = f"constant, cosine decay over the last {t.lr_decay_fraction:.0%}" if t.lr_decay_fraction < 1 else "cosine"
    mix = t.noise_mixture
    return (
        f"{t.steps} steps of {t.batch_size} objects, AdamW lr {t.lr} ({decay}), EMA {t.ema_decay}, "
        f"ln σ ~ N({t.p_mean}, {t.p_std}²)"
        + (f" ({mix[0]:.0%} from N({mix[1]}, {mix[2]}²))" if mix else "")
        + f", recolouring {'on' if t.recolour else 'off'}"
    )


def _setup(params) -> str:
    d, m, t, s = params.data, params.model, params.train, params.sample
    pre = params.pretrain
    return (
        f"- data: {d.train.max_objects} `{d.train.source}` training objects"
        + (
            f" and {d.train.real_objects} real `ycb` objects in neither val nor eval, each along "
            f"{d.train.real_orbits} random orbits"
            if d.train.real_objects
            else ""
        )
        + (
            f", the textured `libero` scans of {d.train.textured_objects} shapes, each along "
            f"{d.train.real_orbits} orbits"
            if d.train.textured_objects
            else ""
        )
        + f", {d.val.max_objects} `{d.val.source}` "
        f"validation objects (for choosing settings), {d.eval.max_objects} `{d.eval.source}` eval objects, "
        f"{params.camera.num_views} views at {d.resolution}², elevation {list(d.train.elevation_deg)}° "
        f"(train) / {list(d.eval.elevation_deg)}° (val, eval)\n"
        f"- model: preset `{params.preset}`, latent `{m.latent}`, reconstructor input {m.reconstructor.image_size}² "
        f"from views {list(m.recon_views)}, {m.reconstructor.splat_size}² splats per view\n"
        f"- pretraining F (plain multi-view diffusion, the SVD analogue): {_schedule(pre.denoiser)}\n"
        + (
            f"- F published again, continued from the first: {_schedule(pre.denoiser_continued)}, "
            f"real share {pre.denoiser_continued.real_share} (the first: {pre.denoiser.real_share})\n"
            if pre.denoiser_continued
            else ""
        )
        + f"- pretraining G (on ground-truth views, the LGM analogue): {_schedule(pre.reconstructor)}\n"
        f"- fine-tuning every Table 2 model from them: {_schedule(t)}, "
        f"LPIPS weight {t.lpips_weight}, second pass with probability {t.feedback_prob}\n"
        f"- sampling: {s.steps} steps of {SAMPLER_NAMES[s.sampler]}, sigma {s.sigma_max} → {s.sigma_min}, "
        f"guidance {list(s.guidance)}" + (f" for σ in {list(s.guidance_sigmas)}" if s.guidance_sigmas else "") + "\n"
        f"- seed {params.seed}; ablation switches: feedback={params.feedback}, maps={list(params.feedback_maps)}, "
        f"joint={params.joint}; variants trained: {list(params.train_variants)}\n"
    )


# params ``sample.sampler`` -> its name in the report's prose
SAMPLER_NAMES = {"euler": "Euler", "heun": "Heun", "euler_churn": "EDM's stochastic sampler (Euler, churn)"}


def _learning(results: Path) -> str:
    """The validation-split learning curves of the pretraining and fine-tuning runs."""
    columns = ("x0_psnr", "mv_psnr", "recon_psnr", "copy_input_psnr", "white_psnr")
    lines = [
        "| run | step | 1-step x0 PSNR | sampled MV PSNR | G on GT views PSNR | copy-input PSNR | white PSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted((results / "train").glob("*/metrics.json")):
        df = checked_curves(path.parent, "val")
        for _, row in df.iterrows():
            cells = [f"{row[k]:.2f}" if k in df else "–" for k in columns]
            lines.append(f"| {path.parent.name} | {int(row['step'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else "(no validation curves: run `dvc repro`)\n"


def render_report(template: str, params: Params, results: Path) -> str:
    """``template`` with every ``{{placeholder}}`` filled from ``results`` (the results/ folder) and ``params``."""
    main_metrics, main_text = results / "metrics.json", "{}"
    if main_metrics.exists():  # evaluate.py's --metrics-out: shown as it is, once checked to be JSON
        remedy = stage_remedy("experiments/evaluate.py --metrics-out", "evaluate")
        read_json_file(main_metrics, remedy)
        main_text = read_text_file(main_metrics, remedy)
    fills = {
        "setup": _setup(params),
        "training": _training(results),
        "learning": _learning(results),
        "study": study_tables(results),
        "main_metrics": "```json\n" + main_text + "```\n",
        "table2": _table_body(results / "tables" / "table2_ablation.md"),
        "table3": _table_body(results / "tables" / "table3_feedback_window.md"),
        "claims": claims_table(results, list(params.train_variants)),
    }
    unknown = set(re.findall(r"{{(\w+)}}", template)) - set(fills)
    if unknown:
        raise PlaceholderError(f"template placeholders with no filler: {sorted(unknown)}")
    return re.sub(r"{{(\w+)}}", lambda m: fills[m.group(1)].rstrip("\n"), template)

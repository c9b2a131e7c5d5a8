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

import json
import math
import numbers
import re
from pathlib import Path

import pandas as pd

from ..config import Params
from ..errors import UserError, one_line
from ..evaluation.stats import mean_ci
from ..training.tracking import read_curves

__all__ = [
    "PlaceholderError",
    "ResultsError",
    "checked_curves",
    "claims_table",
    "eval_remedy",
    "paired",
    "read_csv_file",
    "read_json_file",
    "read_text_file",
    "render_report",
    "train_remedy",
    "verdict",
]


# --- reading results files: one error line naming the file and the stage that writes it -----------------------------


class ResultsError(UserError):
    """A results file that is damaged or lacks what its stage writes."""


class PlaceholderError(UserError, KeyError):
    """A template placeholder with no filler (a KeyError, as a missing key of the fillers)."""

    __str__ = Exception.__str__  # the message, not KeyError's quoted repr


def _stage_remedy(script: str, stage: str) -> str:
    return f"re-create it with {script} (the DVC stage `{stage}`: `dvc repro -f {stage}`)"


def eval_remedy(run: str) -> str:
    """How to re-create ``results/eval/<run>/``: the evaluate stage that writes that run."""
    if run == "main":
        stage = "evaluate"
    elif run.startswith("main-fs"):
        stage = f"evaluate_window@{run.removeprefix('main-fs')}"
    else:
        stage = f"evaluate_variant@{run}"
    return _stage_remedy("experiments/evaluate.py", stage)


def train_remedy(run: str) -> str:
    """How to re-create ``results/train/<run>/`` (a training run's dvclive log)."""
    stage = "train" if run == "main" else run if run.startswith("pretrain_") else f"train_variant@{run}"
    return _stage_remedy("experiments/train.py", stage)


def read_text_file(path: str | Path, remedy: str) -> str:
    """A UTF-8 text file; :class:`ResultsError` (ending in ``remedy``) if it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(
            f"{path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); {remedy}"
        ) from None


def read_json_file(path: str | Path, remedy: str, expect: type = dict):
    """A UTF-8 JSON file holding an ``expect`` (an object by default); :class:`ResultsError` if not."""
    try:
        value = json.loads(read_text_file(path, remedy))
    except json.JSONDecodeError as e:
        raise ResultsError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {remedy}"
        ) from None
    if not isinstance(value, expect):
        names = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
        found, wanted = (names.get(t, t.__name__) for t in (type(value), expect))
        raise ResultsError(f"{path} holds a JSON {found}, not a JSON {wanted}; {remedy}")
    return value


def read_csv_file(
    path: str | Path, remedy: str, columns: tuple[str, ...] = (), numeric: tuple[str, ...] = (), **read_csv
) -> pd.DataFrame:
    """A CSV (or TSV) file with ``columns``; those of ``numeric`` it has hold numbers (else :class:`ResultsError`)."""
    try:
        df = pd.read_csv(path, **read_csv)
    except ValueError as e:  # pandas' ParserError and EmptyDataError, UnicodeDecodeError
        raise ResultsError(f"{path} is not a readable table ({one_line(e)}); {remedy}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultsError(f"{path} lacks the column(s) {missing}; {remedy}")
    wrong = [c for c in numeric if c in df.columns and not pd.api.types.is_numeric_dtype(df[c])]
    if wrong:
        raise ResultsError(f"{path} has non-numeric values in the column(s) {wrong}; {remedy}")
    return df


def checked_curves(run_dir: Path, kind: str = "val") -> pd.DataFrame:
    """:func:`ouroboros3d.training.tracking.read_curves` of a training run's log, each TSV checked first
    (readable, a ``step`` column and one numeric metric column)."""
    folder = Path(run_dir) / "plots" / "metrics" / kind
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else ():
        df = read_csv_file(path, train_remedy(Path(run_dir).name), ("step",), sep="\t")
        numeric = all(pd.api.types.is_numeric_dtype(df[c]) for c in df.columns)
        if len(df.columns) != 2 or not numeric or not df["step"].is_unique:
            raise ResultsError(
                f"{path} is not a dvclive metric log (a step column of distinct numbers and one numeric value "
                f"column); {train_remedy(Path(run_dir).name)}"
            )
    return read_curves(run_dir, kind)


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


def paired(a: pd.DataFrame, b: pd.DataFrame, column: str, confidence: float = 0.95) -> dict | None:
    """Mean and t-interval of ``a[column] - b[column]`` over the objects both runs share."""
    if column not in a or column not in b:
        return None
    joined = pd.concat([a[column], b[column]], axis=1, join="inner", keys=["a", "b"]).dropna()
    d = (joined["a"] - joined["b"]).to_numpy(dtype=float)
    if len(d) < 2:
        return None
    ci = mean_ci(d, confidence)
    return {"mean": ci["mean"], "lo": ci["ci_low"], "hi": ci["ci_high"], "n": ci["n"]}


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
    return re.sub(r"\A# [^\n]*\n\n", "", read_text_file(path, _stage_remedy("experiments/tables.py", "tables")))


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
        + f", {d.val.max_objects} `{d.val.source}` "
        f"validation objects (for choosing settings), {d.eval.max_objects} `{d.eval.source}` eval objects, "
        f"{params.camera.num_views} views at {d.resolution}², elevation {list(d.train.elevation_deg)}° "
        f"(train) / {list(d.eval.elevation_deg)}° (val, eval)\n"
        f"- model: preset `{params.preset}`, latent `{m.latent}`, reconstructor input {m.reconstructor.image_size}² "
        f"from views {list(m.recon_views)}, {m.reconstructor.splat_size}² splats per view\n"
        f"- pretraining F (plain multi-view diffusion, the SVD analogue): {_schedule(pre.denoiser)}\n"
        f"- pretraining G (on ground-truth views, the LGM analogue): {_schedule(pre.reconstructor)}\n"
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


STUDY_COLUMNS = {
    "x0_psnr": "1-step x0",
    "mv_psnr": "sampled MV",
    "copy_input_psnr": "copy-input",
    "white_psnr": "white",
}


def _study(results: Path) -> str:
    """The learning study's committed tables (benchmarks/learning_study.py; val split)."""
    parts = []
    for part, key in (("sampling", "setting"), ("noise", "run"), ("size", "run"), ("mix", "run")):
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
    return "\n".join(parts)


def finetune_leads(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """The ``finetune`` study (runs "full, <n> steps" and "baseline, <n> steps", one row per val
    object): per fine-tune length, both models' means and the full model's paired lead over the
    baseline, mean and t-interval over objects (the claims table's method), for MV and 3D PSNR."""
    out = []
    for steps, g in df.groupby("steps"):
        runs = {run.split(",")[0]: x.set_index("object_id") for run, x in g.groupby("run")}
        if not {"full", "baseline"} <= set(runs):
            continue
        row = {"steps": int(steps)}
        for c in ("mv_psnr", "3d_psnr"):
            lead = paired(runs["full"], runs["baseline"], c, confidence) or dict.fromkeys(
                ("mean", "lo", "hi"), math.nan
            )
            row |= {f"full {c}": runs["full"][c].mean(), f"baseline {c}": runs["baseline"][c].mean()}
            row |= {f"lead {c}": lead["mean"], f"lead {c} low": lead["lo"], f"lead {c} high": lead["hi"]}
        out.append(row)
    return pd.DataFrame(out)


def _study_finetune(path: Path) -> str:
    """The ``finetune`` part: Table 2's full model and baseline at each fine-tune length, on val."""
    if not path.exists():
        return "*finetune: not run (`python benchmarks/learning_study.py finetune`)*\n"
    remedy = "re-create it with `python benchmarks/learning_study.py finetune`"
    df = read_csv_file(
        path, remedy, ("run", "steps", "object_id", "mv_psnr", "3d_psnr"), ("steps", "mv_psnr", "3d_psnr")
    )
    lines = [
        f"**finetune** (`{path}`, {df['object_id'].nunique()} val objects; lead: full − baseline, paired, 95% CI)",
        "",
        "| fine-tune steps | full 3D | baseline 3D | lead 3D | full MV | baseline MV | lead MV |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in finetune_leads(df).to_dict("records"):
        cells = [str(r["steps"])]
        for c in ("3d_psnr", "mv_psnr"):
            lead = f"{r[f'lead {c}']:+.2f} [{r[f'lead {c} low']:+.2f}, {r[f'lead {c} high']:+.2f}]"
            cells += [f"{r[f'full {c}']:.2f}", f"{r[f'baseline {c}']:.2f}", lead]
        lines.append("| " + " | ".join(cells) + " |")
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


def render_report(template: str, params: Params, results: Path) -> str:
    """``template`` with every ``{{placeholder}}`` filled from ``results`` (the results/ folder) and ``params``."""
    main_metrics, main_text = results / "metrics.json", "{}"
    if main_metrics.exists():  # evaluate.py's --metrics-out: shown as it is, once checked to be JSON
        remedy = _stage_remedy("experiments/evaluate.py --metrics-out", "evaluate")
        read_json_file(main_metrics, remedy)
        main_text = read_text_file(main_metrics, remedy)
    fills = {
        "setup": _setup(params),
        "training": _training(results),
        "learning": _learning(results),
        "study": _study(results),
        "main_metrics": "```json\n" + main_text + "```\n",
        "table2": _table_body(results / "tables" / "table2_ablation.md"),
        "table3": _table_body(results / "tables" / "table3_feedback_window.md"),
        "claims": claims_table(results, list(params.train_variants)),
    }
    unknown = set(re.findall(r"{{(\w+)}}", template)) - set(fills)
    if unknown:
        raise PlaceholderError(f"template placeholders with no filler: {sorted(unknown)}")
    return re.sub(r"{{(\w+)}}", lambda m: fills[m.group(1)].rstrip("\n"), template)

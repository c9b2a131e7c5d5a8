"""The paper's Table 2 (ablation) and Table 3 (feedback window) rebuilt from evaluation runs.

experiments/tables.py (the DVC stage `tables`) reads every ``results/eval/<run>/metrics.json``
that experiments/evaluate.py wrote and asks this module for the two tables; it only writes them.
The tables are here, not in the stage, so their rules can be tested without a pipeline run:

* runs are placed by what their metrics.json records (the model's switches, the feedback start),
  not by folder name, so a renamed or re-run folder cannot land in the wrong row;
* Table 2 has one row per block of params ``variants``: its run ``<variant>``, or the main
  model's run when the main model has the same switches (the default ``full`` variant need not
  be trained twice); Table 3 has one row per feedback start of the main model's runs;
* both add the reference rows (G on the ground-truth views, the 1-step sample), the trivial
  baselines (the input view copied to every view, a blank white image) and, for geometry, the
  oracle (the ground-truth depth maps' points), all scored by the same metric code;
* every cell is the mean ± half-width of the 95% t-interval over eval objects (the intervals
  metrics.json holds, from ouroboros3d.evaluation.stats), beside the paper's number (GSO, 512², facts.md).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import Params
from .results_files import ResultsError, eval_remedy, read_json_file

__all__ = [
    "PAPER_TABLE2",
    "PAPER_TABLE3",
    "Table",
    "build_tables",
    "cell",
    "load_runs",
    "markdown_table",
    "protocol_notes",
    "switches",
    "table2",
    "table3",
    "variant_switches",
    "window_label",
]

# Table 2 of the paper, 3DGS renders on GSO, keyed by (joint, fed-back maps)
PAPER_TABLE2 = {
    (False, ()): ("no joint training, no feedback", 20.012, 0.8465, 0.1287, 1.067, 0.0125, 0.0189),
    (True, ()): ("joint training only", 20.549, 0.8651, 0.1183, 0.511, 0.0094, 0.0070),
    (True, ("ccm",)): ("joint + CCM feedback", 21.325, 0.8937, 0.1092, 0.304, 0.0036, 0.0018),
    (True, ("rgb",)): ("joint + RGB feedback", 21.542, 0.8871, 0.1103, 0.100, 0.0101, 0.0036),
    (True, ("ccm", "rgb")): ("joint + CCM + RGB", 21.761, 0.9094, 0.0991, 0.009, 0.0028, 0.0002),
}
# Table 3 of the paper (3DGS renders), keyed by the fraction of the 25 steps before feedback starts
PAPER_TABLE3 = {0.0: (21.761, 0.9094, 0.0991), 0.4: (21.633, 0.9099, 0.1021), 0.8: (20.805, 0.8957, 0.1101)}
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "cd": 4, "fscore": 3, "iou": 3}
# reference rows, scored by the same metric code on the same objects as the run they come from
REFERENCE_ROWS = {
    "recon_gt": "reference: G on the ground-truth views (ceiling of the 3D columns)",
    "x0": "reference: 1-step sample D(σ_max), the model's conditional mean",
    "copy_input": "trivial: input view copied to every view",
    "white": "trivial: blank white image",
}


def load_runs(eval_dir: str | Path) -> dict[str, dict]:
    """``{run name: metrics.json}`` of every run folder under ``eval_dir``."""
    if not Path(eval_dir).is_dir():
        raise FileNotFoundError(f"{eval_dir}: no such folder of evaluation runs (run experiments/evaluate.py)")
    runs = {}
    for path in sorted(Path(eval_dir).glob("*/metrics.json")):
        report = read_json_file(path, eval_remedy(path.parent.name))
        problem = _run_problem(report)
        if problem:
            raise ResultsError(
                f"{path} is not a metrics.json of experiments/evaluate.py: {problem}; " + eval_remedy(path.parent.name)
            )
        runs[path.parent.name] = report
    return runs


# the parts of a run's metrics.json that the tables read, and their JSON types
RUN_FIELDS = {
    "name": str,
    "variant": str,
    "objects": int,
    "model": {"feedback": bool, "feedback_maps": list, "joint": bool, "resolution": int},
    "sample": {"feedback_start": numbers.Real, "steps": int},
    "protocol": {"fscore_thresholds": list, "interval": str},
    "summary": dict,
}
_TYPE_NAMES = {
    str: "string",
    int: "integer",
    bool: "boolean",
    list: "list",
    dict: "JSON object",
    numbers.Real: "number",
}


def _run_problem(report, fields: dict = RUN_FIELDS, where: str = "") -> str | None:
    """What is wrong with a metrics.json for the tables (None if nothing)."""
    if not isinstance(report, dict):
        return f"its {where!r} is not a JSON object"
    for key, kind in fields.items():
        name = f"{where}.{key}" if where else key
        if key not in report:
            return f"it lacks {name!r}"
        if isinstance(kind, dict):
            problem = _run_problem(report[key], kind, name)
            if problem:
                return problem
        elif not isinstance(report[key], kind) or (kind is not bool and isinstance(report[key], bool)):
            return f"its {name!r} is not a {_TYPE_NAMES[kind]}"
    if where:
        return None
    thresholds = report["protocol"]["fscore_thresholds"]
    if not thresholds or not all(isinstance(t, numbers.Real) for t in thresholds):
        return "its 'protocol.fscore_thresholds' is not a non-empty list of numbers"
    for column, stats in report["summary"].items():
        if stats is None:  # a column with no numbers: shown as "–"
            continue
        values = [stats.get(k) for k in ("mean", "ci_low", "ci_high")] if isinstance(stats, dict) else [""]
        if not all(v is None or isinstance(v, numbers.Real) for v in values):
            return f"its summary of {column!r} is not a JSON object of numbers (mean, ci_low, ci_high)"
    unavailable = report.get("unavailable", {})
    if not isinstance(unavailable, dict) or not all(isinstance(v, dict) for v in unavailable.values()):
        return "its 'unavailable' is not a JSON object of JSON objects"
    return None


def switches(report: dict) -> tuple[bool, tuple[str, ...]]:
    """``(joint, fed-back maps)`` of the model a run's metrics.json records: how Table 2 places it."""
    model = report["model"]
    maps = tuple(sorted(model["feedback_maps"])) if model["feedback"] else ()
    return bool(model["joint"]), maps


def _digits(metric: str) -> int:
    return next((d for k, d in DIGITS.items() if metric.split("@")[0].endswith(k)), 3)


def cell(report: dict | None, column: str) -> str:
    """``mean ± half-width`` of a column of a run, "unavailable", or "–" (not evaluated)."""
    if report is None:
        return "–"
    stats = report["summary"].get(column)
    if stats is None:
        metric = column.split("_")[-1]
        return "unavailable" if metric in report.get("unavailable", {}) else "–"
    mean, low, high = (stats.get(k) for k in ("mean", "ci_low", "ci_high"))
    if mean is None:
        return "–"
    d = _digits(column)
    if low is None or high is None:
        return f"{mean:.{d}f}"
    return f"{mean:.{d}f} ± {(high - low) / 2:.{d}f}"


def _paper(value: float | None, metric: str) -> str:
    return "–" if value is None else f"{value:.{max(_digits(metric), 3)}f}"


def _numbers(report: dict | None, column: str) -> dict:
    stats = (report or {}).get("summary", {}).get(column) or {}
    return {f"{column}_{k}": stats.get(k) for k in ("mean", "ci_low", "ci_high")}


def _geometry_key(report: dict | None, threshold: float | None) -> str | None:
    if report is None:
        return None
    thresholds = report["protocol"]["fscore_thresholds"]
    t = threshold if threshold in thresholds else thresholds[len(thresholds) // 2]
    return f"fscore@{t:g}"


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a GitHub markdown table, its cells as they are (no index)."""
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _row(label: str, run: str, report: dict | None, prefix: str, paper: tuple) -> tuple[dict, dict]:
    """One table row (display strings) and its CSV numbers; ``paper`` = (psnr, ssim, lpips[, Δ...])."""
    shown = {"setting": label, "run": run, "objects": report["objects"] if report else "–"}
    numbers = {"setting": label, "run": run, "objects": report["objects"] if report else None}
    for i, m in enumerate(("psnr", "ssim", "lpips")):
        shown[f"3D {m.upper()}"] = cell(report, f"{prefix}_{m}")
        shown[f"paper 3D {m.upper()}"] = _paper(paper[i] if paper else None, m)
        values = {k.replace(prefix, "3d", 1): v for k, v in _numbers(report, f"{prefix}_{m}").items()}
        numbers |= values | {f"paper_3d_{m}": paper[i] if paper else None}
    return shown, numbers


def _add_mv_and_geometry(shown_row: dict, report: dict | None, fkey: str | None) -> dict:
    """Fill a row's MV PSNR/SSIM, CD and F-score cells; returns their numbers for the CSV."""
    numbers: dict = {}
    for m in ("psnr", "ssim"):
        shown_row[f"MV {m.upper()}"] = cell(report, f"mv_{m}")
        numbers |= _numbers(report, f"mv_{m}")
    shown_row["CD"] = cell(report, "cd")
    shown_row[fkey or "F-score"] = cell(report, fkey) if fkey else "–"
    numbers |= _numbers(report, "cd") | (_numbers(report, fkey) if fkey else {})
    # the extracted mesh's geometry (Table 2's runs; protocol in ouroboros3d/evaluation/metrics.py)
    mesh = {"mesh_cd": "mesh CD", "volume_iou": "vol. IoU"} | ({f"mesh_{fkey}": f"mesh {fkey}"} if fkey else {})
    for column, title in mesh.items():
        shown_row[title] = cell(report, column)
        numbers |= _numbers(report, column)
    return numbers


def table2(runs: dict[str, dict], variants: dict[str, tuple], threshold: float | None = 0.05):
    """Rows of Table 2: ``variants`` = {name: (joint, maps)} in params order."""
    main = runs.get("main")
    fkey = _geometry_key(main or next(iter(runs.values()), None), threshold)
    shown, numbers = [], []
    placed = set()
    for name, key in variants.items():
        run, report = name, runs.get(name)
        if report is None and main is not None and switches(main) == key:
            run, report = "main", main
        placed.add(run)
        paper = PAPER_TABLE2.get(key)
        label = paper[0] if paper else f"{name}: joint={key[0]}, feedback={'+'.join(key[1]) or 'none'}"
        shown_run = run if report else f"{name} (not evaluated)"
        s, n = _row(label, shown_run, report, "3d", paper[1:4] if paper else ())
        for i, m in enumerate(("psnr", "ssim", "lpips")):
            s[f"Δ {m.upper()}"] = cell(report, f"delta_{m}")
            s[f"paper Δ {m.upper()}"] = _paper(paper[4 + i] if paper else None, m)
            n |= _numbers(report, f"delta_{m}") | {f"paper_delta_{m}": paper[4 + i] if paper else None}
        n |= _add_mv_and_geometry(s, report, fkey)
        shown.append(s)
        numbers.append(n)
    if main is not None and "main" not in placed:
        s, n = _row("main model (params' switches)", "main", main, "3d", ())
        shown.append(s | {"CD": cell(main, "cd"), fkey or "F-score": cell(main, fkey) if fkey else "–"})
        numbers.append(n)
    _add_reference_rows(shown, numbers, main or next(iter(runs.values()), None), fkey)
    return pd.DataFrame(shown).fillna(""), pd.DataFrame(numbers)


def _add_reference_rows(shown: list, numbers: list, report: dict | None, fkey: str | None) -> None:
    if report is None:
        return
    for prefix, label in REFERENCE_ROWS.items():
        s, n = _row(label, report["name"], report, prefix, ())
        shown.append(s)
        numbers.append(n)
    oracle = {"setting": "oracle geometry: ground-truth depth points", "run": report["name"]}
    oracle |= {"objects": report["objects"], "CD": cell(report, "oracle_cd")}
    if fkey:
        oracle[fkey] = cell(report, f"oracle_{fkey}")
    shown.append(oracle)
    numbers.append(
        {"setting": oracle["setting"], "run": report["name"]}
        | _numbers(report, "oracle_cd")
        | (_numbers(report, f"oracle_{fkey}") if fkey else {})
    )


def window_label(start: float, steps: int) -> str:
    first = round(start * steps)
    return "no feedback" if first >= steps else f"steps {first}-{steps}"


def table3(runs: dict[str, dict], variant: str = "main", threshold: float | None = 0.05):
    """Rows of Table 3: every run of ``variant`` by its feedback start (inference only, same weights)."""
    chosen = sorted(
        ((r["sample"]["feedback_start"], name, r) for name, r in runs.items() if r.get("variant") == variant),
        key=lambda t: (t[0], t[1] != variant),
    )
    shown, numbers, seen = [], [], set()
    fkey = _geometry_key(runs.get(variant) or (chosen[0][2] if chosen else None), threshold)
    for start, name, report in chosen:
        if start in seen:  # the same window twice (e.g. `main` and `main-fs0.0`): keep the first
            continue
        seen.add(start)
        paper = next((v for k, v in PAPER_TABLE3.items() if math.isclose(k, start)), ())
        label = f"{window_label(start, report['sample']['steps'])} (start {start:g})"
        s, n = _row(label, name, report, "3d", paper)
        n |= _add_mv_and_geometry(s, report, fkey)
        shown.append(s)
        numbers.append(n)
    _add_reference_rows(shown, numbers, runs.get(variant), fkey)
    return pd.DataFrame(shown).fillna(""), pd.DataFrame(numbers)


def protocol_notes(runs: dict[str, dict]) -> str:
    """The paragraph under both tables: what was measured, how, and what is unavailable here."""
    any_run = runs.get("main") or next(iter(runs.values()), None)
    if any_run is None:
        return "No evaluation results found.\n"
    unavailable = "".join(
        f"- {k.upper()} unavailable: {v.get('reason', v)}\n" for k, v in any_run.get("unavailable", {}).items()
    )
    thresholds = ", ".join(f"{t:g}" for t in any_run["protocol"]["fscore_thresholds"])
    return (
        f"Ours: {any_run['objects']} eval objects at {any_run['model']['resolution']}², "
        f"{any_run['sample']['steps']} sampling steps, mean ± half-width of the "
        f"{any_run['protocol']['interval']}; the input view is excluded from the image metrics. "
        "3D = renders of the final Gaussians at the eval cameras; MV = the generated views; "
        "Δ = MV − 3D per object (signed; the paper's Δ column is as published). "
        f"CD: Chamfer distance in unit-box units; F-score thresholds available: {thresholds} "
        "(ouroboros3d/evaluation/metrics.py has the protocol). Trivial rows: the image metrics of the "
        "trivial prediction are in the 3D columns. Paper: GSO, 100 objects, 512², a fine-tuned SVD.\n" + unavailable
    )


def variant_switches(params: Params) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """``{variant: (joint, fed-back maps)}`` of every block of params ``variants``, in params order."""
    out = {}
    for name in params.variants:
        vp = params.with_variant(name)
        out[name] = (vp.joint, tuple(sorted(vp.feedback_maps)) if vp.feedback else ())
    return out


@dataclass
class Table:
    """One table: ``shown`` (display strings, the .md) and ``numbers`` (its numbers, the .csv)."""

    stem: str
    title: str
    shown: pd.DataFrame
    numbers: pd.DataFrame

    def body(self) -> str:
        """The markdown table, or "(no runs)"."""
        return markdown_table(self.shown) if len(self.shown) else "(no runs)\n"

    def markdown(self, notes: str) -> str:
        """The .md file: title, table, then ``notes`` (:func:`protocol_notes`)."""
        return f"# {self.title}\n\n{self.body()}\n{notes}"

    def csv(self) -> str:
        """The .csv file: the numbers behind the cells (mean, ci_low, ci_high) and the paper's."""
        return self.numbers.to_csv(index=False, lineterminator="\n")


def build_tables(
    runs: dict[str, dict], variants: dict[str, tuple], threshold: float | None = 0.05, variant: str = "main"
) -> list[Table]:
    """Table 2 and Table 3 of ``runs`` (:func:`load_runs`), ``variants`` from :func:`variant_switches`."""
    return [
        Table("table2_ablation", "Table 2 analogue: ablation (3DGS renders and Δ)", *table2(runs, variants, threshold)),
        Table(
            "table3_feedback_window",
            "Table 3 analogue: feedback window at inference",
            *table3(runs, variant, threshold),
        ),
    ]

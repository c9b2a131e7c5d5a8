"""Reading the pipeline's results files: one error line naming the file and the stage that
writes it, so a damaged or stale file is re-created, not debugged."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import UserError, one_line
from ..training.tracking import read_curves

__all__ = [
    "ResultsError",
    "checked_curves",
    "eval_remedy",
    "read_csv_file",
    "read_json_file",
    "read_text_file",
    "stage_remedy",
    "train_remedy",
]


class ResultsError(UserError):
    """A results file that is damaged or lacks what its stage writes."""


def stage_remedy(script: str, stage: str) -> str:
    return f"re-create it with {script} (the DVC stage `{stage}`: `dvc repro -f {stage}`)"


def eval_remedy(run: str) -> str:
    """How to re-create ``results/eval/<run>/``: the evaluate stage that writes that run."""
    if run == "main":
        stage = "evaluate"
    elif run.startswith("main-fs"):
        stage = f"evaluate_window@{run.removeprefix('main-fs')}"
    else:
        stage = f"evaluate_variant@{run}"
    return stage_remedy("experiments/evaluate.py", stage)


def train_remedy(run: str) -> str:
    """How to re-create ``results/train/<run>/`` (a training run's dvclive log)."""
    stage = "train" if run == "main" else run if run.startswith("pretrain_") else f"train_variant@{run}"
    return stage_remedy("experiments/train.py", stage)


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

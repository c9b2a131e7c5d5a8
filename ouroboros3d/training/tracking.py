"""Training and validation logs, the DVC way: one dvclive directory per training run.

A run's directory (``results/train/<name>/`` in the pipeline) holds what dvclive writes:

  metrics.json                     the latest value of every metric (``train``, ``val``, ``run``)
                                   and the last logged ``step``: ``dvc exp show``, ``dvc metrics``
  plots/metrics/train/<name>.tsv   one row (step, value) per logged training step: ``dvc plots``
  plots/metrics/val/<name>.tsv     one row per validation of the EMA weights
  params.yaml                      what the run started from (``RunLog.log_params``)

Rows are appended and ``metrics.json`` rewritten as training goes, so a running training can
be watched (``dvc plots show``, or ``tail -f`` on a TSV). Resume is exact: a run resumed from
the checkpoint of step ``s`` drops every logged row after ``s`` (the steps it will redo) before
dvclive resumes appending, so each step is logged once. Only one process logs: every other
rank gets a log that does nothing.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path

__all__ = ["RunLog", "read_curves", "read_metrics"]

TRAIN, VAL, RUN = "train", "val", "run"


def _metric_files(directory: Path, kind: str | None = None) -> list[Path]:
    root = Path(directory) / "plots" / "metrics"
    root = root / kind if kind else root
    return sorted(root.rglob("*.tsv")) if root.is_dir() else []


def _read_tsv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader.fieldnames or ()), list(reader)


def _trim(directory: Path, upto_step: int) -> dict:
    """Drop the rows after ``upto_step`` from every metric file; return the last value left of each."""
    latest: dict = {}
    for path in _metric_files(directory):
        fields, rows = _read_tsv(path)
        rows = [r for r in rows if int(r["step"]) <= upto_step]
        with path.open("w", newline="", encoding="utf-8") as f:  # dvclive's own format
            writer = csv.DictWriter(f, fields, delimiter="\t", lineterminator=os.linesep)
            writer.writeheader()
            writer.writerows(rows)
        if rows:
            node = latest
            for part in path.relative_to(Path(directory) / "plots" / "metrics").parent.parts:
                node = node.setdefault(part, {})
            node[fields[-1]] = float(rows[-1][fields[-1]])
    return latest


def _ordered(values: dict, template: dict) -> dict:
    """``values`` with its keys (and its sub-dicts') in ``template``'s order, then those ``template`` lacks."""
    out = {}
    for k in [k for k in template if k in values] + [k for k in values if k not in template]:
        v, t = values[k], template.get(k)
        out[k] = _ordered(v, t) if isinstance(v, dict) and isinstance(t, dict) else v
    return out


@functools.cache
def _live_class():
    from dvclive import Live

    class _Live(Live):
        """dvclive that logs whatever state the Git repository is in.

        dvclive 3.49 looks up the repository's Git revision and fails in a repository with no
        commit yet (``SCMError: Empty git repo``: a fresh ``git init`` then ``dvc repro``). This
        log needs none of that integration (no experiment saved, no dvc.yaml written, DVC
        tracks the files as stage outputs), so it goes on without it.
        """

        def _init_dvc(self):
            try:
                super()._init_dvc()
            except Exception:
                self._dvc_repo, self._inside_dvc_exp, self._dvc_file = None, False, "dvc.yaml"

    return _Live


class RunLog:
    """One training run's dvclive log. ``enabled=False`` (ranks other than 0) logs nothing.

    ``resume_step`` is the step of the checkpoint the run resumes from; 0 starts a new log.
    """

    def __init__(self, directory: Path, resume_step: int = 0, *, enabled: bool = True):
        self.directory, self.resume_step, self.enabled = Path(directory), resume_step, enabled
        self._live = None
        self._params: dict | None = None
        self._closed = False

    def _started(self):
        """The dvclive log, begun at the first value logged: a run that fails before its first
        logged step leaves no log folder behind (and a resumed run's log as it was)."""
        if self._live is None and self.enabled and not self._closed:
            self.directory.mkdir(parents=True, exist_ok=True)
            resume = self.resume_step > 0
            try:  # the previous invocation's metrics.json, for its key order
                previous = read_metrics(self.directory) if resume else {}
            except ValueError:  # cut short by a kill while dvclive wrote it, and dvclive's resume would
                previous = {}  # fail on it: its values come back from the curves, only the order is lost
                (self.directory / "metrics.json").unlink()
            latest = _trim(self.directory, self.resume_step) if resume else {}
            # no dvc.yaml of its own (dvc.yaml declares these files), no experiment saved, no report
            live = _live_class()(str(self.directory), resume=resume, report=None, save_dvc_exp=False, dvcyaml=False)
            if resume:  # keys in the order of the previous invocation's metrics.json, as an uninterrupted run's
                live.summary = _ordered(latest | {"step": self.resume_step}, previous)
                live.step = self.resume_step
            if self._params:
                live.log_params(self._params)
            self._live = live
        return self._live

    def _log(self, kind: str, step: int, values: dict, *, plot: bool = True) -> None:
        live = self._started()
        if live is None:
            return
        live.step = step
        for name, value in values.items():
            if value is not None and value != "":
                live.log_metric(f"{kind}/{name}", value, plot=plot)
        live.make_summary()  # metrics.json follows the run as it goes

    def log_step(self, step: int, values: dict) -> None:
        """The training losses (and lr, seconds) after ``step`` steps."""
        self._log(TRAIN, step, values)

    def log_val(self, step: int, scores: dict) -> None:
        """The validation scores of the EMA weights after ``step`` steps."""
        self._log(VAL, step, scores)

    def log_params(self, params: dict) -> None:
        """The run's params (written with the log's first values)."""
        self._params = params
        if self._live is not None:
            self._live.log_params(params)

    def close(self, **run) -> None:
        """End the log; ``run`` (steps, finished, seconds, ...) goes to ``metrics.json`` under ``run``.

        Without ``run`` and with nothing logged yet (a failure at the start) no log is begun.
        """
        live = self._started() if run or self._live is not None else None
        self._closed = True
        if live is None:
            return
        step = live.step
        for name, value in run.items():
            live.log_metric(f"{RUN}/{name}", value, plot=False)
        live.summary["step"] = step
        live.end()
        self._live = None


def read_metrics(directory: Path) -> dict:
    """A run's ``metrics.json`` (empty if it has none)."""
    path = Path(directory) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_curves(directory: Path, kind: str = TRAIN):
    """The ``kind`` ("train" or "val") curves of a run as one DataFrame: a ``step`` column, one per metric.

    Empty if the run logged none.
    """
    import pandas as pd

    frames = [pd.read_csv(p, sep="\t").set_index("step") for p in _metric_files(directory, kind)]
    if not frames:
        return pd.DataFrame(columns=["step"])
    return pd.concat(frames, axis=1).sort_index().reset_index()

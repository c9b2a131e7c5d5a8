"""The paired difference of two runs over the objects they share: the claims table's and the
learning study's one method (a t-interval, :func:`ouroboros3d.evaluation.stats.mean_ci`)."""

from __future__ import annotations

import pandas as pd

from ..evaluation.stats import mean_ci

__all__ = ["paired"]


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

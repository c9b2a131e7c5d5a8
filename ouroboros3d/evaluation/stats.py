"""The one confidence interval of the project: a t-interval over objects.

Evaluation summaries (per metric) and the report's paired differences (per claim) both use
it, so a table's interval and a claim's verdict can never disagree on the method.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict:
    """Mean and t-interval of ``values`` (NaNs left out and counted): ``{mean, ci_low, ci_high, std, n, n_nan}``."""
    from scipy import stats

    x = np.asarray(list(values), dtype=np.float64)
    nan = np.isnan(x)
    x = x[~nan]
    n = len(x)
    out = {"mean": float(x.mean()) if n else math.nan, "n": n, "n_nan": int(nan.sum())}
    if n < 2:
        return out | {"ci_low": math.nan, "ci_high": math.nan, "std": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    if not math.isfinite(half):  # inf values: no interval
        half = math.nan
    return out | {"ci_low": out["mean"] - half, "ci_high": out["mean"] + half, "std": std}

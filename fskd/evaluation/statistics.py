"""Paired comparisons of two models over repeated runs (folds x seeds): the mean difference, its Student-t
confidence interval, and how many runs went each way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def paired_difference(differences: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean of per-run differences ``b - a`` (paired by split and seed) with a two-sided t interval.

    Returns ``n``, ``mean``, ``std`` (sample, ddof 1), ``low``/``high`` (NaN for one run: no interval),
    ``positive`` (runs with a difference > 0) and ``negative``.
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"need a non-empty 1-D sequence of finite differences, got {differences!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(values.mean())
    if values.size == 1:
        std = low = high = float("nan")
    else:
        std = float(values.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1)) * std / np.sqrt(values.size)
        low, high = mean - half, mean + half
    return {"n": int(values.size), "mean": mean, "std": std, "low": low, "high": high,
            "positive": int((values > 0).sum()), "negative": int((values < 0).sum())}

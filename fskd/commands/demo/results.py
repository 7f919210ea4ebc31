"""The demo's results: accuracy rows from validation metrics, set means, means over seeds, F-SKD gains."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODELS: tuple[str, ...] = ("teacher", "baseline_14", "fskd_14")

MODEL_LABELS: dict[str, str] = {
    "teacher": "teacher (trained on HR)",
    "baseline_14": "base student 14 px (labels only)",
    "fskd_14": "F-SKD student 14 px",
}

PROTOCOL_KEYS: dict[str, str] = {"fskd": "acc", "insightface": "insightface_acc"}
"""Verification protocol -> metric name logged by the validation loop (``val/<set>/<res>/<name>``)."""

ALL_SETS = "all"
"""The ``set`` value of rows averaged over the verification sets."""


@dataclass(frozen=True)
class ResultRow:
    """One accuracy: a model at one resolution on one set by one protocol, for one seed."""

    seed: int
    model: str
    set: str
    resolution: int
    protocol: str
    accuracy: float
    fold_std: float


@dataclass(frozen=True)
class SummaryRow:
    """Mean over seeds of `ResultRow` accuracies; ``fold_std`` is the mean fold std, ``seed_std`` the sample
    std over seeds (None for one seed: there is no spread to report)."""

    model: str
    set: str
    resolution: int
    protocol: str
    accuracy: float
    fold_std: float
    seed_std: float | None
    n_seeds: int


@dataclass
class SeedOutcome:
    """Everything one seed produced: accuracy rows, per-pair scores, pair labels, picture material."""

    seed: int
    rows: list[ResultRow] = field(default_factory=list)
    scores: dict[str, dict[tuple[str, int], np.ndarray]] = field(default_factory=dict)
    issame: dict[str, np.ndarray] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)


def rows_from_metrics(metrics: Mapping[str, Any], seed: int, model: str, sets: Sequence[str],
                      resolutions: Sequence[int], prefix: str = "val") -> list[ResultRow]:
    """`ResultRow` per (set, resolution, protocol) from a validate run's ``callback_metrics``.

    Raises KeyError naming the missing key (and the keys that exist) when the run did not log one.
    """
    rows = []
    for name in sets:
        for resolution in resolutions:
            for protocol, key in PROTOCOL_KEYS.items():
                base = f"{prefix}/{name}/{resolution}/{key}"
                missing = [k for k in (base, f"{base}_std") if k not in metrics]
                if missing:
                    known = sorted(k for k in metrics if k.startswith(f"{prefix}/"))
                    raise KeyError(f"validation metric {missing[0]!r} was not logged for {model} "
                                   f"(seed {seed}); logged: {known}")
                rows.append(ResultRow(seed, model, name, int(resolution), protocol,
                                      float(metrics[base]), float(metrics[f"{base}_std"])))
    return rows


def with_set_means(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """``rows`` plus, per (seed, model, resolution, protocol), a row with ``set == "all"``: the mean accuracy
    and the mean fold std over the sets."""
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        if row.set != ALL_SETS:
            groups.setdefault((row.seed, row.model, row.resolution, row.protocol), []).append(row)
    means = [ResultRow(seed, model, ALL_SETS, resolution, protocol,
                       float(np.mean([r.accuracy for r in members])),
                       float(np.mean([r.fold_std for r in members])))
             for (seed, model, resolution, protocol), members in groups.items()]
    return [*[r for r in rows if r.set != ALL_SETS], *means]


def summarise(rows: Sequence[ResultRow]) -> list[SummaryRow]:
    """Mean over seeds per (model, set, resolution, protocol); ``seed_std`` is the sample std (ddof=1)."""
    groups: dict[tuple, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault((row.model, row.set, row.resolution, row.protocol), []).append(row)
    summary = []
    for (model, name, resolution, protocol), members in groups.items():
        accuracies = np.array([r.accuracy for r in members])
        spread = float(np.std(accuracies, ddof=1)) if accuracies.size > 1 else None
        fold_std = float(np.mean([r.fold_std for r in members]))
        summary.append(SummaryRow(model, name, resolution, protocol, float(accuracies.mean()), fold_std,
                                  spread, int(accuracies.size)))
    return summary


def fskd_gains(rows: Sequence[ResultRow], resolution: int = 14) -> list[dict[str, Any]]:
    """Per (protocol, set): the F-SKD student's accuracy minus the base student's at ``resolution``, per seed,
    with the mean, the std over seeds and how many seeds gained."""
    table: dict[tuple, dict[int, dict[str, float]]] = {}
    for row in rows:
        if row.resolution == resolution and row.model in ("baseline_14", "fskd_14"):
            table.setdefault((row.protocol, row.set), {}).setdefault(row.seed, {})[row.model] = row.accuracy
    gains = []
    for (protocol, name), per_seed in table.items():
        seeds = sorted(s for s, models in per_seed.items() if len(models) == 2)
        if not seeds:
            continue
        values = np.array([per_seed[s]["fskd_14"] - per_seed[s]["baseline_14"] for s in seeds])
        gains.append({"protocol": protocol, "set": name, "resolution": resolution, "seeds": seeds,
                      "gains": [float(v) for v in values], "mean": float(values.mean()),
                      "seed_std": float(np.std(values, ddof=1)) if values.size > 1 else None,
                      "positive": int((values > 0).sum())})
    return gains

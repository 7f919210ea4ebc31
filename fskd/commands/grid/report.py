"""The grid's report: accuracy per method and resolution, every method's difference to the base student paired
by seed (mean, 95 % t interval, positive count, and a verdict only where the interval excludes 0), the
generator's calibration check, and two pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fskd.commands.grid.plan import EVAL_RESOLUTIONS, STUDENTS
from fskd.evaluation.statistics import paired_difference

LABELS: dict[str, str] = {
    "teacher": "teacher (HR)", "teacher_cbam": "CBAM teacher (HR)", "base": "base (labels only)",
    "fskd": "F-SKD", "fskd_hint": "F-SKD + hint", "fskd_cross": "F-SKD cross-sample", "askd": "A-SKD (CBAM)",
    "fitnet": "FitNet", "at": "AT", "rkd": "RKD", "hkd": "Hinton KD",
}

CALIBRATION = {"teacher_hr_min": 0.96, "room_min": 0.10}
"""The generator must leave room: teacher at 112 px >= 0.96 and base 14 px student <= teacher - 0.10."""


def compared_resolutions(train: str) -> tuple[int, ...]:
    """Where a student is compared with the base student of the same training resolution: at that resolution,
    and a multi-resolution student at each of 14/28/56."""
    return (14, 28, 56) if train == "multi" else (int(train),)


def accuracy(rows: list[dict[str, Any]], method: str, train: str, resolution: int) -> dict[int, float]:
    """Seed -> acc of (method, train) evaluated at ``resolution``."""
    return {r["seed"]: r["acc"] for r in rows
            if r["method"] == method and r["train"] == train and r["resolution"] == resolution}


def differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every student method - base, paired by seed, at its compared resolutions."""
    result = []
    for method, train in STUDENTS:
        if method == "base":
            continue
        for resolution in compared_resolutions(train):
            own, base = accuracy(rows, method, train, resolution), accuracy(rows, "base", train, resolution)
            seeds = sorted(set(own) & set(base))
            if not seeds:
                continue
            stats = paired_difference([own[s] - base[s] for s in seeds])
            result.append({"method": method, "train": train, "resolution": resolution, "seeds": seeds,
                           "mean_acc": float(np.mean([own[s] for s in seeds])),
                           "base_acc": float(np.mean([base[s] for s in seeds])), **stats})
    return result


def verdict(stats: dict[str, Any]) -> str:
    """'better than base' / 'worse than base' only where the 95 % interval excludes 0."""
    if stats["n"] < 2:
        return "one run: no interval"
    if stats["low"] > 0:
        return "better than base"
    if stats["high"] < 0:
        return "worse than base"
    return "not distinguishable from base"


def calibration(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    teacher = accuracy(rows, "teacher", "112", 112)
    base = accuracy(rows, "base", "14", 14)
    if not teacher or not base:
        return None
    teacher_hr = float(np.mean(list(teacher.values())))
    base_14 = float(np.mean(list(base.values())))
    return {"teacher_112": teacher_hr, "base_14": base_14, "room": teacher_hr - base_14,
            # 1e-9: accuracies are fractions of pair counts, so 0.96 - 0.86 must count as 10 points
            "holds": teacher_hr >= CALIBRATION["teacher_hr_min"] - 1e-9
            and teacher_hr - base_14 >= CALIBRATION["room_min"] - 1e-9}


def _points(value: float) -> str:
    return "–" if np.isnan(value) else f"{100 * value:+.1f}"


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (NaN for one value)."""
    if len(values) < 2:
        return float(np.mean(values)), float("nan")
    stats = paired_difference(values)
    return stats["mean"], stats["high"] - stats["mean"]


def markdown(rows: list[dict[str, Any]], header: list[str]) -> str:
    lines = [*header, ""]
    check = calibration(rows)
    if check is not None:
        lines += ["## Calibration (teacher and base student only)", "",
                  f"Teacher at 112 px {100 * check['teacher_112']:.1f} % (needs >= "
                  f"{100 * CALIBRATION['teacher_hr_min']:.0f} %); base 14 px student {100 * check['base_14']:.1f} % "
                  f"(mean over its seeds), {100 * check['room']:.1f} points below the teacher (needs >= "
                  f"{100 * CALIBRATION['room_min']:.0f}): the calibration "
                  f"{'holds' if check['holds'] else 'does NOT hold'}.", ""]
    lines += ["## Accuracy (%), authors' protocol, mean of the three sets: mean over seeds ± 95 % t half-width",
              "", "| model | trained at | seeds | " + " | ".join(f"{r} px" for r in EVAL_RESOLUTIONS) + " |",
              "|---|---|---|" + "---|" * len(EVAL_RESOLUTIONS)]
    models = [("teacher", "112"), ("teacher_cbam", "112"), *STUDENTS]
    for method, train in models:
        cells, seeds = [], 0
        for resolution in EVAL_RESOLUTIONS:
            values = list(accuracy(rows, method, train, resolution).values())
            seeds = max(seeds, len(values))
            if not values:
                cells.append("–")
                continue
            mean, half = _interval(values)
            cells.append(f"{100 * mean:.1f}" + ("" if np.isnan(half) else f" ± {100 * half:.1f}"))
        if seeds:
            lines.append(f"| {LABELS[method]} | {train} | {seeds} | " + " | ".join(cells) + " |")
    lines += ["", "## Each method − base student, paired by seed (points of accuracy)", "",
              "Same data, teacher and training seed for both; the interval is the 95 % Student-t interval of the "
              "mean difference; a method is called better (worse) than base only where it excludes 0.", "",
              "| method | trained at | compared at | runs | method | base | difference | 95 % interval | "
              "positive | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in differences(rows):
        lines.append(f"| {LABELS[d['method']]} | {d['train']} | {d['resolution']} px | {d['n']} | "
                     f"{100 * d['mean_acc']:.1f} | {100 * d['base_acc']:.1f} | {_points(d['mean'])} | "
                     f"[{_points(d['low'])}, {_points(d['high'])}] | {d['positive']}/{d['n']} | {verdict(d)} |")
    return "\n".join(lines) + "\n"


def pictures(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """``accuracy_vs_resolution.png`` (teacher and the 14 px students) and ``differences.png`` (every method
    - base with its 95 % interval)."""
    from matplotlib.figure import Figure

    paths = []
    figure = Figure(figsize=(9.0, 5.2), layout="constrained")
    ax = figure.subplots()
    xs = np.asarray(EVAL_RESOLUTIONS, dtype=np.float64)
    drawn = 0
    for method, train in [("teacher", "112"), *[(m, t) for m, t in STUDENTS if t == "14"]]:
        means, halves = [], []
        for resolution in EVAL_RESOLUTIONS:
            values = list(accuracy(rows, method, train, resolution).values())
            mean, half = _interval(values) if values else (float("nan"), float("nan"))
            means.append(100 * mean)
            halves.append(100 * half)
        if all(np.isnan(means)):
            continue
        ax.errorbar(xs, means, yerr=np.nan_to_num(halves), marker="osD^v<>ph*"[drawn % 10], capsize=3,
                    linewidth=1.4, label=LABELS[method])
        drawn += 1
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(int(r)) for r in xs])
        ax.minorticks_off()
        ax.set_xlabel("input resolution (pixels, shrunk and scaled back to 112)")
        ax.set_ylabel("verification accuracy (%), authors' protocol")
        ax.set_title("teacher and students trained at 14 px (error bars: 95 % t interval over seeds)", fontsize=10)
        ax.grid(True, alpha=0.3)
        figure.legend(loc="outside lower center", ncols=5, fontsize=9)
        figure.savefig(out / "accuracy_vs_resolution.png", dpi=110)
        paths.append(out / "accuracy_vs_resolution.png")
    found = differences(rows)
    if found:
        figure = Figure(figsize=(9.0, 0.42 * len(found) + 1.6), layout="constrained")
        ax = figure.subplots()
        ys = np.arange(len(found))[::-1]
        means = np.array([100 * d["mean"] for d in found])
        lows = np.array([100 * (d["mean"] - d["low"]) if d["n"] > 1 else 0.0 for d in found])
        highs = np.array([100 * (d["high"] - d["mean"]) if d["n"] > 1 else 0.0 for d in found])
        ax.errorbar(means, ys, xerr=[lows, highs], fmt="o", capsize=3)
        ax.axvline(0.0, color="grey", linestyle=":")
        ax.set_yticks(ys, [f"{LABELS[d['method']]} @{d['train']} (at {d['resolution']} px, n={d['n']})"
                           for d in found])
        ax.set_xlabel("method − base student (points, 95 % t interval)")
        ax.grid(True, axis="x", alpha=0.3)
        figure.savefig(out / "differences.png", dpi=110)
        paths.append(out / "differences.png")
    return paths


__all__ = ["CALIBRATION", "calibration", "differences", "markdown", "pictures", "verdict"]

"""``results.md`` and ``accuracy_vs_resolution.png`` of ``fskd realfaces``: means per model and resolution, and
the F-SKD - base difference paired by (fold, seed) with its 95 % t interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fskd.commands.realfaces.protocol import MODELS, mean_rows
from fskd.commands.realfaces.scoring import CROSS
from fskd.evaluation.statistics import paired_difference

LABELS = {"teacher": "teacher (imported MobileFaceNet, frozen)", "base_14": "base student 14 px (labels only)",
          "fskd_14": "F-SKD student 14 px", "fskd_hint_14": "F-SKD + hint adapters 14 px (later code)"}
METRICS = {"acc": "verification, authors' protocol", "insightface_acc": "verification, insightface protocol",
           "rank1": "identification rank-1 (HR gallery)"}


def gains(rows: list[dict[str, Any]], metric: str = "acc", model: str = "fskd_14") -> dict[str, dict[str, Any]]:
    """Per resolution: ``model`` - base paired by (split, seed)."""
    by_key = {(r["model"], r["resolution"], r["split"], r["seed"]): r[metric] for r in rows}
    result = {}
    for resolution in dict.fromkeys(r["resolution"] for r in rows):
        runs = sorted({(s, d) for (m, res, s, d) in by_key if m == model and res == resolution
                       and ("base_14", res, s, d) in by_key})
        if runs:
            result[resolution] = paired_difference([by_key[(model, resolution, s, d)]
                                                    - by_key[("base_14", resolution, s, d)] for s, d in runs])
    return result


def _points(value: float) -> str:
    return "–" if np.isnan(value) else f"{100 * value:+.1f}"


def markdown(rows: list[dict[str, Any]], recipe: Any, trials: list[dict[str, Any]], header: list[str]) -> str:
    table = mean_rows(rows)
    resolutions = list(dict.fromkeys(r["resolution"] for r in rows))
    present = [m for m in MODELS if any(r["model"] == m for r in rows)]
    lines = [*header, ""]
    for metric, title in METRICS.items():
        lines += [f"## {title} (%; mean over folds and seeds)", "",
                  "| model | " + " | ".join(f"{r} px" if r != CROSS else "112 vs 14 px" for r in resolutions)
                  + " | runs |", "|---|" + "---|" * (len(resolutions) + 1)]
        for model in present:
            cells = [f"{100 * table[(model, r)][metric]:.1f}" if (model, r) in table else "–" for r in resolutions]
            runs = max((int(table[(model, r)]["n"]) for r in resolutions if (model, r) in table), default=0)
            lines.append(f"| {LABELS[model]} | " + " | ".join(cells) + f" | {runs} |")
        lines.append("")
        for model in MODELS[2:]:
            paired = gains(rows, metric, model)
            if not paired:
                continue
            lines += [f"{LABELS[model]} − base ({title}), points, paired by (fold, seed): mean [95 % t interval], "
                      "runs where it is better / runs", "", "| resolution | mean | 95 % interval | better |",
                      "|---|---|---|---|"]
            for resolution, g in paired.items():
                lines.append(f"| {resolution} | {_points(g['mean'])} | [{_points(g['low'])}, {_points(g['high'])}] "
                             f"| {g['positive']}/{g['n']} |")
            lines.append("")
    lines += ["## Recipe (chosen on validation people of fold 0, base student only)", "",
              f"Chosen: learning rate {recipe.lr}, CosFace margin {recipe.margin}, {recipe.steps} steps.", "",
              "| learning rate | margin | steps | validation accuracy at 14 px |", "|---|---|---|---|"]
    lines += [f"| {t['lr']} | {t['margin']} | {t['steps']} | {100 * t['val_acc_14']:.1f} |" for t in trials]
    return "\n".join(lines) + "\n"


def picture(path: Path, rows: list[dict[str, Any]]) -> Path:
    from fskd.commands.demo.pictures import plot_accuracy_vs_resolution

    resolutions = [r for r in dict.fromkeys(r["resolution"] for r in rows) if r != CROSS]
    panels = {}
    for metric in ("acc", "rank1"):
        panel = {}
        for model in [m for m in MODELS if any(r["model"] == m for r in rows)]:
            means, spreads = [], []
            for resolution in resolutions:
                values = [r[metric] for r in rows if r["model"] == model and r["resolution"] == resolution]
                means.append(float(np.mean(values)) if values else float("nan"))
                spreads.append(float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"))
            panel[LABELS[model]] = (means, spreads)
        panels[METRICS[metric]] = panel
    return plot_accuracy_vs_resolution(path, [int(r) for r in resolutions], panels, ncols=2,
                                       title="Real faces (AT&T/ORL + Extended Yale B): accuracy against input "
                                             "resolution (error bars: std over folds x seeds)",
                                       ylabel="accuracy (%)")

"""The demo's report: ``results.csv``, the Markdown tables of ``results.md`` (with the machine it ran on), and
the pictures (drawn by `fskd.commands.demo.pictures`)."""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fskd.commands.demo.results import (
    ALL_SETS,
    MODEL_LABELS,
    MODELS,
    PROTOCOL_KEYS,
    ResultRow,
    SeedOutcome,
    SummaryRow,
    fskd_gains,
)

PROTOCOL_LABELS: dict[str, str] = {"fskd": "authors' protocol (acc)", "insightface": "insightface protocol"}

CSV_COLUMNS = ("seed", "model", "set", "resolution", "protocol", "accuracy", "fold_std", "seed_std",
               "n_seeds")


def write_csv(path: str | os.PathLike, rows: Sequence[ResultRow], summary: Sequence[SummaryRow]) -> Path:
    """One line per seed result (``seed`` = the seed, empty ``seed_std``) and per summary (``seed`` =
    ``mean``; empty ``seed_std`` when there is one seed).

    Accuracies and stds are fractions in [0, 1]; ``set`` = ``all`` is the mean over the verification sets.
    """
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r.seed, r.model, r.set, r.resolution, r.protocol, f"{r.accuracy:.6f}",
                             f"{r.fold_std:.6f}", "", 1])
        for s in summary:
            spread = "" if s.seed_std is None else f"{s.seed_std:.6f}"
            writer.writerow(["mean", s.model, s.set, s.resolution, s.protocol, f"{s.accuracy:.6f}",
                             f"{s.fold_std:.6f}", spread, s.n_seeds])
    return path


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f}"


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def _summary_cell(s: SummaryRow) -> str:
    if s.seed_std is None:
        return f"{_percent(s.accuracy)} [{_percent(s.fold_std)}]"
    return f"{_percent(s.accuracy)} ± {_percent(s.seed_std)} [{_percent(s.fold_std)}]"


def markdown_tables(summary: Sequence[SummaryRow], rows: Sequence[ResultRow], sets: Sequence[str],
                    resolutions: Sequence[int]) -> str:
    """The mean-over-seeds tables, the F-SKD gain table and one table per seed, in Markdown."""
    models = _ordered({s.model for s in summary}, MODELS)
    set_order = [*sets, ALL_SETS]
    seeds = sorted({r.seed for r in rows})
    header = "| model | set | " + " | ".join(f"{r} px" + (" (HR)" if i == 0 else "")
                                            for i, r in enumerate(resolutions)) + " |"
    rule = "|---|---|" + "---|" * len(resolutions)
    several = len(seeds) > 1
    spread = "mean ± std over seeds [mean 10-fold std]" if several else "one seed [10-fold std]"
    lines = [f"## Mean over seeds {', '.join(map(str, seeds))}" if several else f"## Seed {seeds[0]}", "",
             f"Accuracy in %: {spread}. `all` = mean of the three sets. The "
             "teacher's 112 px column is teacher@HR; its other columns are teacher@LR (degraded input, no "
             "adaptation).", ""]
    def tables(cell: Callable[[str, str, int, str], str]) -> list[str]:
        """One table per protocol: a row per (model, set), a column per resolution."""
        text = []
        for protocol in PROTOCOL_KEYS:
            text += [f"### {PROTOCOL_LABELS[protocol]}", "", header, rule]
            text += [f"| {MODEL_LABELS.get(model, model)} | {name} | "
                     + " | ".join(cell(model, name, resolution, protocol) for resolution in resolutions) + " |"
                     for model in models for name in set_order]
            text.append("")
        return text

    by_key = {(s.model, s.set, s.resolution, s.protocol): s for s in summary}
    lines += tables(lambda *key: "–" if key not in by_key else _summary_cell(by_key[key]))
    gains = fskd_gains(rows)
    if gains:
        lines += ["## F-SKD gain at 14 px (F-SKD student − base student, accuracy points)", "",
                  "| protocol | set | per seed | mean ± std over seeds | seeds with a gain |" if several else
                  "| protocol | set | per seed | mean (one seed: no spread) | seeds with a gain |",
                  "|---|---|---|---|---|"]
        for protocol in PROTOCOL_KEYS:
            for name in set_order:
                for g in gains:
                    if g["protocol"] == protocol and g["set"] == name:
                        values = ", ".join(f"{100 * v:+.1f}" for v in g["gains"])
                        mean = f"{100 * g['mean']:+.1f}"
                        if g["seed_std"] is not None:
                            mean += f" ± {100 * g['seed_std']:.1f}"
                        lines.append(f"| {PROTOCOL_LABELS[protocol]} | {name} | {values} | {mean} | "
                                     f"{g['positive']}/{len(g['gains'])} |")
        lines.append("")
    per_seed = {(r.seed, r.model, r.set, r.resolution, r.protocol): r for r in rows}

    def seed_cell(seed: int, *key: Any) -> str:
        row = per_seed.get((seed, *key))
        return "–" if row is None else f"{_percent(row.accuracy)} ± {_percent(row.fold_std)}"

    for seed in seeds if several else ():
        lines += [f"## Seed {seed}", "", "Accuracy in % ± 10-fold std.", ""]
        lines += tables(lambda *key, seed=seed: seed_cell(seed, *key))
    return "\n".join(lines)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def write_pictures(out: Path, preset: str, first: SeedOutcome, summary: Sequence[SummaryRow],
                   sets: Sequence[str], resolutions: Sequence[int]) -> list[Path]:
    """``accuracy_vs_resolution.png`` (error bars: std over seeds), ``roc_<set>_<res>.png`` and
    ``samples.png`` (pairs of the first seed with each model's cosine) in ``out``."""
    from fskd.commands.demo.pictures import SamplePair, plot_accuracy_vs_resolution, plot_roc, plot_samples
    from fskd.evaluation.verification import roc_points

    models = _ordered({s.model for s in summary}, MODELS)
    n_seeds = max(s.n_seeds for s in summary)
    by_key = {(s.model, s.set, s.resolution, s.protocol): s for s in summary}
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for protocol in PROTOCOL_KEYS:
        for name in [ALL_SETS, *sets]:
            panel = f"{'mean of the 3 sets' if name == ALL_SETS else name} — {PROTOCOL_LABELS[protocol]}"
            panels[panel] = {}
            for m in models:
                cells = [by_key[(m, name, r, protocol)] for r in resolutions]
                panels[panel][MODEL_LABELS[m]] = ([c.accuracy for c in cells], [c.seed_std or 0.0 for c in cells])
    spread = f"error bars: std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    written = [plot_accuracy_vs_resolution(out / "accuracy_vs_resolution.png", resolutions, panels,
                                           ncols=len(sets) + 1,
                                           title=f"fskd demo ({preset}): verification accuracy "
                                                 f"against input resolution ({spread})")]
    for name in sets:
        for resolution in resolutions:
            curves = {}
            for model in models:
                fpr, tpr, _ = roc_points(first.scores[model][(name, resolution)], first.issame[name])
                curves[MODEL_LABELS[model]] = (fpr, tpr)
            written.append(plot_roc(out / f"roc_{name}_{resolution}.png", curves,
                                    f"{name} at {resolution} px (seed {first.seed}; cosine of image+flip "
                                    "embeddings)"))
    if first.samples:
        views = first.samples["views"]
        sample_resolutions = first.samples["resolutions"]
        low = min(sample_resolutions)
        rows = []
        for number, pair in enumerate(first.samples["pairs"]):
            kind = "same identity" if first.issame[first.samples["set"]][pair] else "different identities"
            parts = []
            for model, resolution, label in (("teacher", max(sample_resolutions), "teacher HR"),
                                             ("teacher", low, f"teacher {low} px"),
                                             ("baseline_14", low, f"base {low} px"),
                                             ("fskd_14", low, f"F-SKD {low} px")):
                if model in first.scores:
                    score = first.scores[model][(first.samples["set"], resolution)][pair]
                    parts.append(f"{label} {score:+.2f}")
            rows.append(SamplePair(list(views[2 * number]), list(views[2 * number + 1]),
                                   f"pair {pair}, {kind} — cosine: " + ", ".join(parts)))
        titles = [f"{r} px" + (" (HR)" if r == max(sample_resolutions) else "") for r in sample_resolutions]
        title = (f"{first.samples['set']} pairs (seed {first.seed}): HR and degraded views, with the models' "
                 "cosine similarity (image+flip embeddings)")
        written.append(plot_samples(out / "samples.png", rows, titles, title=title))
    return written

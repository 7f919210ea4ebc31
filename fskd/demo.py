"""``fskd demo``: from nothing to a result table and pictures, through the real CLI and configs.

For each seed: write the synthetic identity faces (`fskd.data.synthetic.generate_dataset`), then train and
evaluate three models with `fskd.cli.lightning_main` and the ``configs/demo/<preset>_*.yaml`` files:

* ``teacher``: `TeacherModule` on HR (112 px) faces;
* ``baseline_14``: the same module on the 14 px policy (no distillation: the student from labels alone);
* ``fskd_14``: `DistillModule`, the 14 px student with the F-SKD loss from that seed's teacher.

Every model is scored by a ``validate`` run on the three verification sets at 112/56/28/14 px with both
protocols (its ``callback_metrics``). Its backbone is then loaded with `load_backbone` and run on the validate
run's own evaluation views (the DataModule's `evaluation_views`, the same degradation) to get per-pair cosine
scores for the ROC curves and the sample picture; their insightface accuracy is recomputed from those
embeddings as a check.

Outputs in ``--out``: ``results.md``, ``results.csv``, ``results.json``, ``accuracy_vs_resolution.png``,
``roc_<set>_<res>.png``, ``samples.png``, and per seed ``seed<S>/`` (data, checkpoints, logs, pair scores).
Calibration runs use ``--models teacher baseline_14``: the generator is calibrated without ever training the
F-SKD student, whose gain is the measurement.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODELS: tuple[str, ...] = ("teacher", "baseline_14", "fskd_14")
MODEL_LABELS: dict[str, str] = {
    "teacher": "teacher (trained on HR)",
    "baseline_14": "base student 14 px (labels only)",
    "fskd_14": "F-SKD student 14 px",
}
PROTOCOL_KEYS: dict[str, str] = {"fskd": "acc", "insightface": "insightface_acc"}
"""Verification protocol -> metric name logged by the validation loop (``val/<set>/<res>/<name>``)."""
PROTOCOL_LABELS: dict[str, str] = {"fskd": "authors' protocol (acc)", "insightface": "insightface protocol"}
ALL_SETS = "all"
"""The ``set`` value of rows averaged over the verification sets."""
CSV_COLUMNS = ("seed", "model", "set", "resolution", "protocol", "accuracy", "fold_std", "seed_std",
               "n_seeds")
SAMPLE_SET = "lfw"
SAMPLE_PAIRS_PER_KIND = 3
DEFAULT_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo"


@dataclass(frozen=True)
class Preset:
    """Dataset sizes and configs of one demo size.

    ``configs`` names the ``configs/demo/<configs>_<model>.yaml`` files; ``overrides`` are extra CLI arguments
    given to every fit and validate run (the smoke preset shrinks the quick configs with them).
    """

    name: str
    configs: str
    identities: int
    images_per_identity: int
    pairs: int
    seeds: tuple[int, ...] = (0,)
    overrides: tuple[str, ...] = ()
    description: str = ""


PRESETS: dict[str, Preset] = {
    "smoke": Preset("smoke", "quick", identities=16, images_per_identity=3, pairs=20,
                    overrides=("--trainer.max_steps", "3", "--model.milestones", "[2]",
                               "--data.batch_size", "16", "--data.val_batch_size", "40",
                               "--data.val_resolutions", "[112,14]"),
                    description="test-sized pipeline check (3 steps per model); numbers are meaningless"),
    "quick": Preset("quick", "quick", identities=300, images_per_identity=6, pairs=200,
                    description="about 6 minutes on 2 CPU cores (5:49 measured); shows the pipeline, numbers "
                                "are noisy"),
    "full": Preset("full", "full", identities=1000, images_per_identity=6, pairs=600, seeds=(0, 1, 2),
                   description="the synthetic F-SKD benchmark (3 seeds took 90 minutes on 2 CPU cores, run as 3 "
                               "parallel processes with --threads 1; docs/benchmarks.md section 5)"),
}


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
    std over seeds (0 for one seed)."""

    model: str
    set: str
    resolution: int
    protocol: str
    accuracy: float
    fold_std: float
    seed_std: float
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


# -- progress ------------------------------------------------------------------------------------------------
class _Progress:
    """Prints each stage with the elapsed wall time and records stage durations."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: list[dict[str, Any]] = []
        self._current: tuple[str, float] | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stage(self, text: str) -> None:
        self.finish()
        self._current = (text, time.perf_counter())
        print(f"[fskd demo {_clock(self.elapsed())}] {text}", flush=True)

    def finish(self) -> None:
        if self._current is not None:
            text, began = self._current
            self.stages.append({"stage": text, "seconds": round(time.perf_counter() - began, 2)})
            self._current = None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


# -- metrics -------------------------------------------------------------------------------------------------
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
        spread = float(np.std(accuracies, ddof=1)) if accuracies.size > 1 else 0.0
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
                      "seed_std": float(np.std(values, ddof=1)) if values.size > 1 else 0.0,
                      "positive": int((values > 0).sum())})
    return gains


# -- tables --------------------------------------------------------------------------------------------------
def write_csv(path: str | os.PathLike, rows: Sequence[ResultRow], summary: Sequence[SummaryRow]) -> Path:
    """One line per seed result (``seed`` = the seed, empty ``seed_std``) and per summary (``seed`` =
    ``mean``).

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
            writer.writerow(["mean", s.model, s.set, s.resolution, s.protocol, f"{s.accuracy:.6f}",
                             f"{s.fold_std:.6f}", f"{s.seed_std:.6f}", s.n_seeds])
    return path


def _percent(value: float) -> str:
    return f"{100.0 * value:.1f}"


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def markdown_tables(summary: Sequence[SummaryRow], rows: Sequence[ResultRow], sets: Sequence[str],
                    resolutions: Sequence[int]) -> str:
    """The mean-over-seeds tables, the F-SKD gain table and one table per seed, in Markdown."""
    models = _ordered({s.model for s in summary}, MODELS)
    set_order = [*sets, ALL_SETS]
    seeds = sorted({r.seed for r in rows})
    header = "| model | set | " + " | ".join(f"{r} px" + (" (HR)" if i == 0 else "")
                                            for i, r in enumerate(resolutions)) + " |"
    rule = "|---|---|" + "---|" * len(resolutions)
    lines = [f"## Mean over seeds {', '.join(map(str, seeds))}", "",
             "Accuracy in %: mean ± std over seeds [mean 10-fold std]. `all` = mean of the three sets. The "
             "teacher's 112 px column is teacher@HR; its other columns are teacher@LR (degraded input, no "
             "adaptation).", ""]
    by_key = {(s.model, s.set, s.resolution, s.protocol): s for s in summary}
    for protocol in PROTOCOL_KEYS:
        lines += [f"### {PROTOCOL_LABELS[protocol]}", "", header, rule]
        for model in models:
            for name in set_order:
                cells = []
                for resolution in resolutions:
                    s = by_key.get((model, name, resolution, protocol))
                    cells.append("–" if s is None else
                                 f"{_percent(s.accuracy)} ± {_percent(s.seed_std)} [{_percent(s.fold_std)}]")
                lines.append(f"| {MODEL_LABELS.get(model, model)} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
    gains = fskd_gains(rows)
    if gains:
        lines += ["## F-SKD gain at 14 px (F-SKD student − base student, accuracy points)", "",
                  "| protocol | set | per seed | mean ± std over seeds | seeds with a gain |",
                  "|---|---|---|---|---|"]
        for protocol in PROTOCOL_KEYS:
            for name in set_order:
                for g in gains:
                    if g["protocol"] == protocol and g["set"] == name:
                        per_seed = ", ".join(f"{100 * v:+.1f}" for v in g["gains"])
                        lines.append(f"| {PROTOCOL_LABELS[protocol]} | {name} | {per_seed} | "
                                     f"{100 * g['mean']:+.1f} ± {100 * g['seed_std']:.1f} | "
                                     f"{g['positive']}/{len(g['gains'])} |")
        lines.append("")
    per_seed = {(r.seed, r.model, r.set, r.resolution, r.protocol): r for r in rows}
    for seed in seeds:
        lines += [f"## Seed {seed}", "", "Accuracy in % ± 10-fold std.", ""]
        for protocol in PROTOCOL_KEYS:
            lines += [f"### {PROTOCOL_LABELS[protocol]}", "", header, rule]
            for model in models:
                for name in set_order:
                    cells = []
                    for resolution in resolutions:
                        r = per_seed.get((seed, model, name, resolution, protocol))
                        cells.append("–" if r is None else f"{_percent(r.accuracy)} ± {_percent(r.fold_std)}")
                    lines.append(f"| {MODEL_LABELS.get(model, model)} | {name} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


# -- embeddings and pair scores ------------------------------------------------------------------------------
def _decoded(dataset: Any) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def pair_score_table(checkpoint: str | os.PathLike, datamodule: Any, bf16: bool,
                     batch_size: int = 200) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, float]]:
    """Per (set, resolution) of the DataModule's evaluation specs: cosine score of every pair.

    The backbone comes from ``checkpoint`` (`load_backbone`); images go through the DataModule's own
    `evaluation_views` (so exactly the validation degradation), image and flip embeddings are summed
    (insightface fusion). Also returns the insightface 10-fold accuracy recomputed from these embeddings,
    keyed ``<set>/<res>``, to check against the validate run.
    """
    from fskd.evaluation.verification import evaluate_pairs, fuse_flip, pair_scores
    from fskd.systems.checkpoint import load_backbone

    backbone = load_backbone(checkpoint)
    images_by_set: dict[int, torch.Tensor] = {}
    scores: dict[tuple[str, int], np.ndarray] = {}
    accuracies: dict[str, float] = {}
    for dataset, spec in zip(datamodule.val_datasets, datamodule.val_specs, strict=True):
        if spec.cross:
            continue
        images = images_by_set.setdefault(id(dataset), _decoded(dataset))
        embeddings, flipped = [], []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, images.shape[0], batch_size):
                index = torch.arange(start, min(start + batch_size, images.shape[0]))
                views = datamodule.evaluation_views(images[index], index, spec)
                count = index.numel()
                out = backbone(torch.cat([views["image"], views["flipped"]])).embedding.float()
                embeddings.append(out[:count])
                flipped.append(out[count:])
        embedding, mirrored = torch.cat(embeddings), torch.cat(flipped)
        fused = fuse_flip(embedding, mirrored, "sum")
        scores[(spec.name, spec.resolution)] = pair_scores(fused[0::2], fused[1::2], "insightface")
        accuracies[f"{spec.name}/{spec.resolution}"] = evaluate_pairs(embedding, mirrored, spec.issame,
                                                                      ("insightface",))["insightface"][0]
    return scores, accuracies


def _sample_views(datamodule: Any, name: str, resolutions: Sequence[int],
                  pairs: Sequence[int]) -> dict[str, Any]:
    """uint8 HWC views (HR, then each resolution) of both images of ``pairs`` in set ``name``."""
    from fskd.data.images import denormalize

    for dataset, spec in zip(datamodule.val_datasets, datamodule.val_specs, strict=True):
        if spec.name != name:
            continue
        index = torch.tensor([i for p in pairs for i in (2 * p, 2 * p + 1)])
        images = torch.stack([dataset[int(i)]["image"] for i in index])
        views = []
        for resolution in resolutions:
            same_spec = next(s for s in datamodule.val_specs if s.name == name and s.resolution == resolution
                             and not s.cross)
            degraded = datamodule.evaluation_views(images, index, same_spec)["image"]
            views.append(denormalize(degraded).permute(0, 2, 3, 1).numpy())
        return {"set": name, "pairs": list(pairs), "resolutions": list(resolutions),
                "views": np.stack(views, axis=1)}  # (2 * len(pairs), len(resolutions), H, W, 3)
    raise KeyError(f"verification set {name!r} is not evaluated")


def _sample_pair_indices(issame: np.ndarray, per_kind: int) -> list[int]:
    same = [int(i) for i in np.flatnonzero(issame)[:per_kind]]
    different = [int(i) for i in np.flatnonzero(~issame)[:per_kind]]
    return same + different


# -- the pipeline --------------------------------------------------------------------------------------------
@dataclass
class DemoSettings:
    """Arguments of one demo run (see `demo_main`)."""

    out: Path
    preset: Preset
    seeds: tuple[int, ...]
    workers: int = 0
    models: tuple[str, ...] = MODELS
    configs: Path = DEFAULT_CONFIGS
    resume: bool = False
    progress_bar: bool = True
    synth: dict[str, Any] = field(default_factory=dict)
    """`SynthConfig` fields that differ from its defaults (calibration runs); empty for the benchmark."""

    def synth_config(self) -> Any:
        from fskd.data.synthetic import SynthConfig

        return SynthConfig(**self.synth)

    def config(self, model: str) -> Path:
        path = self.configs / f"{self.preset.configs}_{model}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: demo config not found (run python configs/generate.py, or pass "
                                    "--configs DIR)")
        return path


def _lightning(args: list[str]) -> Any:
    from fskd.cli import lightning_main

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        return lightning_main(args)


def _shell(args: Sequence[str]) -> str:
    return "fskd " + " ".join(a if a and all(c.isalnum() or c in "-_./=:,[]" for c in a) else f"'{a}'"
                              for a in args)


def _dataset_is_current(root: Path, settings: DemoSettings, seed: int) -> bool:
    meta_path = root / "synthetic.json"
    if not meta_path.is_file():
        return False
    preset = settings.preset
    meta = json.loads(meta_path.read_text())
    expected_config = json.loads(json.dumps(asdict(settings.synth_config())))
    return (meta.get("seed") == seed and meta.get("config") == expected_config
            and meta.get("train") == {"identity_range": [0, preset.identities],
                                      "images_per_identity": preset.images_per_identity}
            and all(v.get("pairs") == preset.pairs for v in meta.get("verification", {}).values()))


EVALUATION_FILE = "evaluation.json"
EVALUATION_ARRAYS = "evaluation.npz"


def _evaluate(validate: list[str], checkpoint: Path, seed: int, model: str,
              want_samples: bool) -> dict[str, Any]:
    """Run the validate command, read its metrics, and score every pair with the loaded backbone."""
    cli = _lightning(validate)
    datamodule = cli.datamodule
    specs = [s for s in datamodule.val_specs if not s.cross]
    sets = list(dict.fromkeys(s.name for s in specs))
    resolutions = list(dict.fromkeys(s.resolution for s in specs))
    metrics = cli.trainer.callback_metrics
    rows = rows_from_metrics(metrics, seed, model, sets, resolutions)
    issame = {s.name: np.asarray(s.issame, dtype=bool) for s in specs}
    bf16 = "bf16" in str(cli.trainer.precision)
    scores, accuracies = pair_score_table(checkpoint, datamodule, bf16, batch_size=datamodule.val_batch_size)
    checks = {key: abs(float(metrics[f"val/{key}/insightface_acc"]) - value)
              for key, value in accuracies.items()}
    samples: dict[str, Any] = {}
    if want_samples and SAMPLE_SET in sets:
        pairs = _sample_pair_indices(issame[SAMPLE_SET], SAMPLE_PAIRS_PER_KIND)
        samples = _sample_views(datamodule, SAMPLE_SET, resolutions, pairs)
    return {"rows": rows, "issame": issame, "scores": scores, "checks": checks, "samples": samples}


def _checkpoint_stamp(checkpoint: Path) -> list[int]:
    stat = checkpoint.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _save_evaluation(model_dir: Path, validate: list[str], checkpoint: Path,
                     evaluation: dict[str, Any]) -> None:
    """Keep a model's evaluation beside its checkpoint, so that ``--resume`` can reuse it."""
    arrays = {f"scores/{n}/{r}": v for (n, r), v in evaluation["scores"].items()}
    arrays.update({f"issame/{n}": v for n, v in evaluation["issame"].items()})
    samples = evaluation["samples"]
    if samples:
        arrays.update({"samples/views": samples["views"], "samples/pairs": np.asarray(samples["pairs"]),
                       "samples/resolutions": np.asarray(samples["resolutions"])})
    np.savez_compressed(model_dir / EVALUATION_ARRAYS, **arrays)
    meta = {"args": validate, "checkpoint": _checkpoint_stamp(checkpoint),
            "rows": [asdict(r) for r in evaluation["rows"]], "checks": evaluation["checks"],
            "sample_set": samples.get("set") if samples else None}
    (model_dir / EVALUATION_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def _load_evaluation(model_dir: Path, validate: list[str], checkpoint: Path,
                     want_samples: bool) -> dict[str, Any] | None:
    """The saved evaluation of the same validate command on the same checkpoint file, else None."""
    meta_path, arrays_path = model_dir / EVALUATION_FILE, model_dir / EVALUATION_ARRAYS
    if not (meta_path.is_file() and arrays_path.is_file() and checkpoint.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("args") != validate or meta.get("checkpoint") != _checkpoint_stamp(checkpoint):
        return None
    if want_samples and not meta.get("sample_set"):
        return None
    with np.load(arrays_path) as arrays:
        scores = {(k.split("/")[1], int(k.split("/")[2])): arrays[k] for k in arrays.files
                  if k.startswith("scores/")}
        issame = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("issame/")}
        samples: dict[str, Any] = {}
        if want_samples:
            samples = {"set": meta["sample_set"], "views": arrays["samples/views"],
                       "pairs": [int(p) for p in arrays["samples/pairs"]],
                       "resolutions": [int(r) for r in arrays["samples/resolutions"]]}
    return {"rows": [ResultRow(**r) for r in meta["rows"]], "issame": issame, "scores": scores,
            "checks": meta["checks"], "samples": samples}


def _run_seed(settings: DemoSettings, seed: int, progress: _Progress, commands: list[str],
              sample_material: bool) -> SeedOutcome:
    from fskd.data.synthetic import generate_dataset

    preset = settings.preset
    folder = settings.out / f"seed{seed}"
    data = folder / "data"
    outcome = SeedOutcome(seed)
    tag = f"seed {seed}"
    if settings.resume and _dataset_is_current(data, settings, seed):
        progress.stage(f"{tag}: synthetic faces already in {data} (--resume)")
    else:
        progress.stage(f"{tag}: render synthetic faces ({preset.identities} identities x "
                       f"{preset.images_per_identity}, {preset.pairs} pairs per set) -> {data}")
        summary = generate_dataset(data, preset.identities, preset.images_per_identity, preset.pairs,
                                   seed=seed, config=settings.synth_config(),
                                   workers=max(1, settings.workers))
        print(f"  {summary['images_rendered']} images in {summary['seconds']:.1f} s", flush=True)

    teacher_ckpt = folder / "teacher" / "checkpoints" / "last.ckpt"
    for model in settings.models:
        model_dir = folder / model
        config = settings.config(model)
        common = ["--config", str(config), "--data.root", str(data), "--seed_everything", str(seed),
                  "--data.seed", str(seed), "--data.num_workers", str(settings.workers),
                  "--trainer.default_root_dir", str(model_dir), *preset.overrides]
        if not settings.progress_bar:
            common += ["--trainer.enable_progress_bar", "false"]
        checkpoint = model_dir / "checkpoints" / "last.ckpt"
        logger = json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                              "init_args": {"save_dir": str(model_dir), "name": "logs"}}])
        fit = ["fit", *common, "--trainer.limit_val_batches", "0", "--trainer.logger", logger,
               "--checkpoint.dirpath", str(model_dir / "checkpoints")]
        if model == "fskd_14":
            if not teacher_ckpt.is_file():
                raise FileNotFoundError(f"{teacher_ckpt}: the F-SKD student needs this seed's teacher; "
                                        "include 'teacher' in --models")
            fit += ["--model.teacher_ckpt", str(teacher_ckpt)]
        marker = model_dir / "fit_done.json"
        if settings.resume and checkpoint.is_file() and marker.is_file() and \
                json.loads(marker.read_text()).get("args") == fit:
            progress.stage(f"{tag}: {model} already trained ({checkpoint}, --resume)")
        else:
            progress.stage(f"{tag}: fit {model} ({config.name})")
            marker.unlink(missing_ok=True)
            commands.append(_shell(fit))
            _lightning(fit)
            if not checkpoint.is_file():
                raise FileNotFoundError(f"{checkpoint}: the fit of {model} wrote no last.ckpt")
            marker.write_text(json.dumps({"args": fit}, indent=1) + "\n")

        validate = ["validate", *common, "--ckpt_path", str(checkpoint), "--trainer.logger", "false",
                    "--verbose", "false"]
        if model == "fskd_14":
            validate += ["--model.teacher_ckpt", "null"]
        want_samples = sample_material and not outcome.samples
        cached = _load_evaluation(model_dir, validate, checkpoint, want_samples) if settings.resume else None
        if cached is not None:
            progress.stage(f"{tag}: {model} already evaluated ({model_dir / EVALUATION_FILE}, --resume)")
            evaluation = cached
        else:
            progress.stage(f"{tag}: validate {model} at every resolution, then its pair scores for the ROC "
                           "curves (load_backbone)")
            commands.append(_shell(validate))
            evaluation = _evaluate(validate, checkpoint, seed, model, want_samples)
            _save_evaluation(model_dir, validate, checkpoint, evaluation)
        outcome.rows += evaluation["rows"]
        print(f"  {model}: mean of the sets, authors' protocol: " + ", ".join(
            f"{r.resolution} px {100 * r.accuracy:.1f}%" for r in with_set_means(evaluation["rows"])
            if r.set == ALL_SETS and r.protocol == "fskd"), flush=True)
        outcome.issame.update(evaluation["issame"])
        outcome.scores[model] = evaluation["scores"]
        outcome.checks.update({f"{model}/{k}": v for k, v in evaluation["checks"].items()})
        if want_samples and evaluation["samples"]:
            outcome.samples = evaluation["samples"]
    arrays = {f"{m}/{n}/{r}": v for m, table in outcome.scores.items() for (n, r), v in table.items()}
    arrays.update({f"issame/{n}": v for n, v in outcome.issame.items()})
    np.savez_compressed(folder / "pair_scores.npz", **arrays)
    return outcome


def _pictures(settings: DemoSettings, first: SeedOutcome, summary: Sequence[SummaryRow], sets: Sequence[str],
              resolutions: Sequence[int]) -> list[Path]:
    from fskd.evaluation.verification import roc_points
    from fskd.plots import SamplePair, plot_accuracy_vs_resolution, plot_roc, plot_samples

    out = settings.out
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
                panels[panel][MODEL_LABELS[m]] = ([c.accuracy for c in cells], [c.seed_std for c in cells])
    spread = f"error bars: std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    written = [plot_accuracy_vs_resolution(out / "accuracy_vs_resolution.png", resolutions, panels,
                                           ncols=len(sets) + 1,
                                           title=f"fskd demo ({settings.preset.name}): verification accuracy "
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


def _machine() -> dict[str, Any]:
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


def check_settings(settings: DemoSettings) -> None:
    """Refuse unknown models, a student without its teacher, repeated seeds and missing configs (ValueError,
    FileNotFoundError) before anything runs."""
    unknown = [m for m in settings.models if m not in MODELS]
    if unknown or not settings.models:
        raise ValueError(f"--models must name some of {MODELS}, got {list(settings.models)}")
    if "fskd_14" in settings.models and "teacher" not in settings.models:
        raise ValueError("the F-SKD student needs the teacher: add 'teacher' to --models")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise ValueError(f"--seeds must be distinct, got {list(settings.seeds)}")
    for model in settings.models:
        settings.config(model)
    settings.synth_config()


def parse_synth_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> `SynthConfig` keyword arguments, typed like the field's default
    (``face_half_width_range=38,43`` for a pair). Unknown keys and unparsable values raise ValueError."""
    from dataclasses import fields

    from fskd.data.synthetic import SynthConfig

    defaults = {f.name: f.default for f in fields(SynthConfig)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"--synth {item!r}: expected KEY=VALUE with KEY one of {sorted(defaults)}")
        default = defaults[key]
        try:
            if isinstance(default, tuple):
                parts = text.split(",")
                if len(parts) != len(default):
                    raise ValueError(f"{len(default)} comma-separated values expected")
                overrides[key] = tuple(type(d)(v) for d, v in zip(default, parts, strict=True))
            else:
                overrides[key] = type(default)(text)
        except ValueError as error:
            raise ValueError(f"--synth {item!r}: {error}") from None
    return overrides


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the pipeline for every seed and write the tables and pictures; returns the results.json content."""
    check_settings(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    progress = _Progress()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    commands: list[str] = []
    outcomes = []
    for number, seed in enumerate(settings.seeds):
        outcomes.append(_run_seed(settings, seed, progress, commands, sample_material=number == 0))

    progress.stage("tables and pictures")
    rows = with_set_means([r for o in outcomes for r in o.rows])
    summary = summarise(rows)
    sets = list(dict.fromkeys(r.set for r in rows if r.set != ALL_SETS))
    resolutions = sorted({r.resolution for r in rows}, reverse=True)
    write_csv(settings.out / "results.csv", rows, summary)
    pictures = _pictures(settings, outcomes[0], summary, sets, resolutions)
    progress.finish()
    wall = progress.elapsed()
    checks = {f"seed{o.seed}/{k}": v for o in outcomes for k, v in o.checks.items()}
    command = " ".join(["fskd", "demo", *sys.argv[2:]]) if sys.argv[1:2] == ["demo"] else None
    result = {
        "preset": asdict(settings.preset), "seeds": list(settings.seeds), "models": list(settings.models),
        "synth_overrides": settings.synth, "synth_config": asdict(settings.synth_config()),
        "out": str(settings.out), "command": command, "wall_seconds": round(wall, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "stages": progress.stages, "lightning_commands": commands,
        "insightface_recheck_max_abs_diff": max(checks.values()) if checks else None,
        "insightface_recheck": checks,
        "rows": [asdict(r) for r in rows], "summary": [asdict(s) for s in summary],
        "gains_14": fskd_gains(rows),
        "pictures": [p.name for p in pictures],
    }
    header = [f"# fskd demo results: preset `{settings.preset.name}`", "",
              f"{settings.preset.description}.", "",
              f"* command: `{command or 'run_demo(...)'}`",
              f"* seeds: {', '.join(map(str, settings.seeds))}; models: {', '.join(settings.models)}",
              "* generator: SynthConfig defaults" + (f" with {settings.synth}" if settings.synth else ""),
              f"* data per seed: {settings.preset.identities} training identities x "
              f"{settings.preset.images_per_identity} images; {settings.preset.pairs} pairs per verification "
              "set (10 folds)",
              f"* configs: {', '.join(settings.config(m).name for m in settings.models)}"
              + (f" with `{' '.join(settings.preset.overrides)}`" if settings.preset.overrides else ""),
              f"* wall time: {_clock(wall)} on {result['machine'].get('cpu', '?')}, {os.cpu_count()} CPUs "
              f"(load average at start {load_start[0]:.1f}, end {result['load_average_end'][0]:.1f})"
              if load_start else f"* wall time: {_clock(wall)}",
              "* pictures: [accuracy_vs_resolution.png](accuracy_vs_resolution.png), roc_<set>_<res>.png "
              "(e.g. [roc_lfw_14.png](roc_lfw_14.png)), [samples.png](samples.png)", ""]
    (settings.out / "results.md").write_text("\n".join(header) + "\n" + markdown_tables(summary, rows, sets,
                                                                                        resolutions) + "\n")
    (settings.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"[fskd demo {_clock(wall)}] done: {settings.out / 'results.md'}", flush=True)
    return result


def demo_main(argv: Sequence[str]) -> int:
    """``fskd demo``: parse the arguments and run `run_demo`."""
    parser = argparse.ArgumentParser(
        prog="fskd demo", description="Synthetic faces -> teacher, base 14 px student and F-SKD 14 px "
        "student through the real CLI -> results.md/.csv and pictures. Presets: " +
        "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--out", default=None, help="run folder (default runs/demo/<preset>)")
    parser.add_argument("--preset", default="quick", choices=list(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of data and training (default: quick 0; full 0 1 2)")
    parser.add_argument("--workers", type=int, default=0,
                        help="extra processes for rendering faces and loading batches (0: all in this "
                        "process)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to train (calibration: teacher baseline_14, without the F-SKD student)")
    parser.add_argument("--configs", default=str(DEFAULT_CONFIGS), help="folder of the demo configs")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the datasets, fits and evaluations of an earlier run into the same --out "
                        "that had the same arguments (also: run seeds as separate processes, then combine)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, all cores; on cores shared with "
                        "other jobs 1 is often several times faster)")
    parser.add_argument("--no-progress-bar", action="store_true", help="no Lightning progress bars")
    parser.add_argument("--synth", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override SynthConfig defaults (generator calibration), e.g. fine_amplitude=1.5")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    try:
        synth = parse_synth_overrides(args.synth)
    except ValueError as error:
        parser.error(str(error))
    settings = DemoSettings(out=Path(args.out or f"runs/demo/{preset.name}"), preset=preset,
                            seeds=tuple(args.seeds if args.seeds is not None else preset.seeds),
                            workers=args.workers, models=tuple(args.models), configs=Path(args.configs),
                            resume=args.resume, progress_bar=not args.no_progress_bar, synth=synth)
    try:
        check_settings(settings)
    except (ValueError, FileNotFoundError) as error:
        print(f"fskd demo: error: {error}", file=sys.stderr)
        return 2
    run_demo(settings)
    return 0


if __name__ == "__main__":
    sys.exit(demo_main(sys.argv[1:]))

"""Running the demo: presets, settings, and per seed the synthetic data, the fits and the evaluations, each
reused by ``--resume`` when its arguments are unchanged."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fskd.commands.demo.evaluation import lightning, load_evaluation, run_evaluation, save_evaluation
from fskd.commands.demo.presets import DEFAULT_CONFIGS, RECIPE, Preset
from fskd.commands.demo.report import clock, machine, markdown_tables, write_csv, write_pictures
from fskd.commands.demo.results import ALL_SETS, MODELS, SeedOutcome, fskd_gains, summarise, with_set_means
from fskd.commands.fits import fit_is_done, record_fit, set_aside


class Progress:
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
        print(f"[fskd demo {clock(self.elapsed())}] {text}", flush=True)

    def finish(self) -> None:
        if self._current is not None:
            text, began = self._current
            self.stages.append({"stage": text, "seconds": round(time.perf_counter() - began, 2)})
            self._current = None


@dataclass
class DemoSettings:
    """Arguments of one demo run (see `fskd.commands.demo.main`)."""

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

    def config(self, model: str) -> list[Path]:
        """The config files of ``model``, in stacking order: the recipe, the preset's overlays, the model's."""
        paths = [self.configs / RECIPE, *(self.configs / name for name in self.preset.overlays)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: demo config not found (--configs names the folder of "
                                    f"{RECIPE} and its overlays)")
        own = self.configs / f"{model}.yaml"
        return [*paths, own] if own.is_file() else paths


def _shell(args: Sequence[str]) -> str:
    return "fskd " + " ".join(a if a and all(c.isalnum() or c in "-_./=:,[]" for c in a) else f"'{a}'"
                              for a in args)


def _dataset_is_current(root: Path, settings: DemoSettings, seed: int) -> bool:
    from fskd.data.synthetic import dataset_matches

    preset = settings.preset
    return dataset_matches(root, preset.identities, preset.images_per_identity, preset.pairs, seed,
                           settings.synth_config())


def _fit(settings: DemoSettings, model: str, model_dir: Path, fit: list[str], progress: Progress,
         commands: list[str], tag: str) -> Path:
    """Train ``model`` unless ``--resume`` finds a finished fit with the same arguments; the checkpoint."""
    checkpoint = model_dir / "checkpoints" / "last.ckpt"
    if settings.resume and fit_is_done(model_dir, fit):
        progress.stage(f"{tag}: {model} already trained ({checkpoint}, --resume)")
        return checkpoint
    if model_dir.exists():
        print(f"  {model_dir} holds a fit with other arguments: moved to {set_aside(model_dir)}", flush=True)
    progress.stage(f"{tag}: fit {model}")
    commands.append(_shell(fit))
    lightning(fit)
    record_fit(model_dir, fit)
    return checkpoint


def _run_seed(settings: DemoSettings, seed: int, progress: Progress, commands: list[str],
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
        common = [arg for path in settings.config(model) for arg in ("--config", str(path))]
        common += ["--data.root", str(data), "--seed_everything", str(seed), "--data.seed", str(seed),
                   "--data.num_workers", str(settings.workers), "--trainer.default_root_dir", str(model_dir),
                   *preset.overrides]
        if not settings.progress_bar:
            common += ["--trainer.enable_progress_bar", "false"]
        logger = json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                              "init_args": {"save_dir": str(model_dir), "name": "logs"}}])
        fit = ["fit", *common, "--trainer.limit_val_batches", "0", "--trainer.logger", logger,
               "--checkpoint.dirpath", str(model_dir / "checkpoints")]
        if model == "fskd_14":
            if not teacher_ckpt.is_file():
                raise FileNotFoundError(f"{teacher_ckpt}: the F-SKD student needs this seed's teacher; "
                                        "include 'teacher' in --models")
            fit += ["--model.teacher_ckpt", str(teacher_ckpt)]
        checkpoint = _fit(settings, model, model_dir, fit, progress, commands, tag)

        validate = ["validate", *common, "--ckpt_path", str(checkpoint), "--trainer.logger", "false",
                    "--verbose", "false"]
        if model == "fskd_14":
            validate += ["--model.teacher_ckpt", "null"]
        want_samples = sample_material and not outcome.samples
        cached = load_evaluation(model_dir, validate, checkpoint, want_samples) if settings.resume else None
        if cached is not None:
            progress.stage(f"{tag}: {model} already evaluated (--resume)")
            evaluation = cached
        else:
            progress.stage(f"{tag}: validate {model} at every resolution, then its pair scores for the ROC "
                           "curves (load_backbone)")
            commands.append(_shell(validate))
            evaluation = run_evaluation(validate, checkpoint, seed, model, want_samples)
            save_evaluation(model_dir, validate, checkpoint, evaluation)
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


def earlier_fits(settings: DemoSettings) -> list[Path]:
    """Model folders of ``settings.out`` that already hold checkpoints (a run without ``--resume`` refuses)."""
    return [folder for seed in settings.seeds for model in settings.models
            if (folder := settings.out / f"seed{seed}" / model / "checkpoints").is_dir()
            and any(folder.glob("*.ckpt"))]


def check_settings(settings: DemoSettings) -> None:
    """Refuse unknown models, a student without its teacher, repeated seeds, missing configs and, without
    ``--resume``, an output folder holding an earlier run's checkpoints (ValueError, FileNotFoundError), before
    anything runs."""
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
    if not settings.resume and (found := earlier_fits(settings)):
        raise ValueError(f"{found[0]} holds checkpoints of an earlier run: pass --resume to reuse the fits whose "
                         "arguments match (the others are moved aside and redone), or choose another --out")


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the pipeline for every seed and write the tables and pictures; returns the results.json content."""
    check_settings(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
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
    pictures = write_pictures(settings.out, settings.preset.name, outcomes[0], summary, sets, resolutions)
    progress.finish()
    wall = progress.elapsed()
    checks = {f"seed{o.seed}/{k}": v for o in outcomes for k, v in o.checks.items()}
    command = " ".join(["fskd", "demo", *sys.argv[2:]]) if sys.argv[1:2] == ["demo"] else None
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "preset": asdict(settings.preset), "seeds": list(settings.seeds), "models": list(settings.models),
        "synth_overrides": settings.synth, "synth_config": asdict(settings.synth_config()),
        "out": str(settings.out), "command": command, "wall_seconds": round(wall, 1),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "load_average_start": load_start, "load_average_end": load_end,
        "stages": progress.stages, "lightning_commands": commands,
        "insightface_recheck_max_abs_diff": max(checks.values()) if checks else None,
        "insightface_recheck": checks,
        "rows": [asdict(r) for r in rows], "summary": [asdict(s) for s in summary],
        "gains_14": fskd_gains(rows),
        "pictures": [p.name for p in pictures],
    }
    configs = sorted({p.name for m in settings.models for p in settings.config(m)})
    header = [f"# fskd demo results: preset `{settings.preset.name}`", "",
              f"{settings.preset.description}.", "",
              f"* command: `{command or 'run_demo(...)'}`",
              f"* seeds: {', '.join(map(str, settings.seeds))}; models: {', '.join(settings.models)}",
              "* generator: SynthConfig defaults" + (f" with {settings.synth}" if settings.synth else ""),
              f"* data per seed: {settings.preset.identities} training identities x "
              f"{settings.preset.images_per_identity} images; {settings.preset.pairs} pairs per verification "
              "set (10 folds)",
              f"* configs: {', '.join(configs)}"
              + (f" with `{' '.join(settings.preset.overrides)}`" if settings.preset.overrides else ""),
              f"* wall time: {clock(wall)} on {result['machine'].get('cpu', '?')}, {os.cpu_count()} CPUs "
              f"(load average at start {load_start[0]:.1f}, end {load_end[0]:.1f})"
              if load_start and load_end else f"* wall time: {clock(wall)}",
              "* pictures: [accuracy_vs_resolution.png](accuracy_vs_resolution.png), roc_<set>_<res>.png "
              "(e.g. [roc_lfw_14.png](roc_lfw_14.png)), [samples.png](samples.png)", ""]
    tables = markdown_tables(summary, rows, sets, resolutions)
    (settings.out / "results.md").write_text("\n".join(header) + "\n" + tables + "\n")
    (settings.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"[fskd demo {clock(wall)}] done: {settings.out / 'results.md'}", flush=True)
    return result

"""The real-face protocol of ``fskd realfaces`` (docs/real-faces.md): data and folds, the recipe chosen on
validation people, then per fold and seed the teacher, the base and the F-SKD students, each appended to
``results.csv`` as soon as it is scored and reused by a later run with the same settings."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fskd.commands.fits import fit_is_done, record_fit, set_aside
from fskd.commands.realfaces.presets import RECIPE, Preset
from fskd.commands.realfaces.scoring import score
from fskd.data.real_faces import (
    FaceImage,
    face_112,
    list_orl,
    list_yale,
    people,
    people_folds,
    verification_pairs,
    write_training_set,
)

COLUMNS = ("model", "resolution", "split", "seed", "acc", "acc_std", "insightface_acc", "rank1")
MODELS = ("teacher", "base_14", "fskd_14", "fskd_hint_14")
#: The students: distillation method and weight (0: the base student, same module without distillation).
STUDENTS: dict[str, tuple[str, float]] = {"base_14": ("fskd", 0.0), "fskd_14": ("fskd", 20.0),
                                          "fskd_hint_14": ("fskd_hint", 20.0)}
FOLDS = 5
VALIDATION_SHARE = 0.2
"""Share of fold 0's training people held out to choose the recipe."""


@dataclass(frozen=True)
class Recipe:
    lr: float
    margin: float
    steps: int


class Experiment:
    """One ``--out`` folder: the faces, the splits, the teacher, and the runs done so far."""

    def __init__(self, data: Path, out: Path, preset: Preset, teacher: Path, seeds: tuple[int, ...]) -> None:
        from fskd.models import load_backbone

        self.data, self.out, self.preset, self.teacher_path, self.seeds = data, out, preset, teacher, seeds
        self.teacher = load_backbone(teacher)
        self.images: list[FaceImage] = [*list_orl(data), *list_yale(data)]
        self.faces = {image.path: face_112(image) for image in self.images}
        self.folds = people_folds(self.images, FOLDS, seed=0)
        out.mkdir(parents=True, exist_ok=True)
        self.results = out / "results.csv"
        self.settings = {"preset": asdict(preset), "teacher": str(teacher), "images": len(self.images),
                         "people": len(people(self.images))}
        self.stamp = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]

    # -- data ------------------------------------------------------------------------------------------------
    def split(self, fold: int) -> tuple[list[FaceImage], list[FaceImage]]:
        test_people = set(self.folds[fold])
        return ([i for i in self.images if i.person not in test_people],
                [i for i in self.images if i.person in test_people])

    def test_set(self, images: list[FaceImage], seed: int) -> dict[str, Any]:
        """Faces, labels, pairs and one HR gallery face per person (the first file)."""
        names = people(images)
        labels = [names.index(i.person) for i in images]
        pairs, issame = verification_pairs(images, seed=seed)
        gallery = [labels.index(label) for label in range(len(names))]
        return {"faces": torch.stack([self.faces[i.path] for i in images]), "labels": labels, "pairs": pairs,
                "issame": issame, "gallery": gallery}

    def training_root(self, name: str, images: list[FaceImage]) -> Path:
        root = self.out / "data" / name
        if not (root / "train.rec").is_file():
            write_training_set(root, images, self.faces)
        return root

    # -- training ----------------------------------------------------------------------------------------------
    def fit(self, name: str, root: Path, recipe: Recipe, student: str, seed: int, save_every: int | None = None,
            ) -> Path:
        """Train one student through ``fskd fit``; its folder's checkpoints (``last.ckpt`` and, with
        ``save_every``, one per that many steps)."""
        from fskd.commands.lightning import lightning_main

        folder = self.out / "runs" / name
        checkpoints = folder / "checkpoints"
        args = ["fit", "--config", str(RECIPE), "--data.root", str(root), "--model.teacher_ckpt",
                str(self.teacher_path), "--model.lr", str(recipe.lr), "--model.head_kwargs",
                json.dumps({"s": 30.0, "m": recipe.margin}), "--trainer.max_steps", str(recipe.steps),
                "--model.distill_weight", str(STUDENTS[student][1]), "--seed_everything", str(seed),
                "--data.seed", str(seed), "--trainer.default_root_dir", str(folder), "--trainer.logger",
                json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                             "init_args": {"save_dir": str(folder), "name": "logs"}}]),
                "--checkpoint.dirpath", str(checkpoints), "--trainer.enable_progress_bar", "false"]
        if STUDENTS[student][0] != "fskd":
            args += ["--model.distill", STUDENTS[student][0]]
        if save_every:
            args += ["--checkpoint.every_n_train_steps", str(save_every), "--checkpoint.save_top_k", "-1"]
        if fit_is_done(folder, args):
            return checkpoints
        if folder.exists():
            set_aside(folder)
        lightning_main(args)
        record_fit(folder, args)
        return checkpoints

    # -- recipe --------------------------------------------------------------------------------------------------
    def choose_recipe(self, progress: Any) -> tuple[Recipe, list[dict[str, Any]]]:
        """Base students only, on validation people of fold 0's training people; best 14 px verification
        (authors' protocol); ties go to the earlier grid entry. Never looks at test people or F-SKD."""
        path = self.out / "recipe.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("stamp") == self.stamp:
                return Recipe(**saved["recipe"]), saved["trials"]
        from fskd.models import load_backbone

        training, _ = self.split(0)
        names = people(training)
        rng = random.Random(1)
        validation_people = set(rng.sample(names, max(2, round(VALIDATION_SHARE * len(names)))))
        fit_images = [i for i in training if i.person not in validation_people]
        validation = self.test_set([i for i in training if i.person in validation_people], seed=1)
        root = self.training_root("fold0_recipe", fit_images)
        trials = []
        for number, (lr, margin) in enumerate(self.preset.grid):
            progress(f"recipe {number + 1}/{len(self.preset.grid)}: base student, lr {lr}, margin {margin}")
            checkpoints = self.fit(f"recipe_lr{lr}_m{margin}", root, Recipe(lr, margin, self.preset.max_steps),
                                   student="base_14", seed=0, save_every=min(self.preset.step_choices))
            for steps in self.preset.step_choices:
                found = sorted(path for path in checkpoints.glob(f"*step={steps}.ckpt")  # not exception-...
                               if not path.name.startswith(("exception-", "sigterm-"))) or (
                    [checkpoints / "last.ckpt"] if steps == self.preset.max_steps else [])
                if not found:
                    raise FileNotFoundError(f"{checkpoints}: no checkpoint of step {steps}")
                row = score(load_backbone(found[0], allow_student=True), **validation, resolutions=(14,))[0]
                trials.append({"lr": lr, "margin": margin, "steps": steps, "val_acc_14": row["acc"]})
        best = max(trials, key=lambda t: (t["val_acc_14"], -trials.index(t)))
        recipe = Recipe(best["lr"], best["margin"], best["steps"])
        path.write_text(json.dumps({"stamp": self.stamp, "recipe": asdict(recipe), "trials": trials,
                                    "validation_people": sorted(validation_people)}, indent=1) + "\n")
        return recipe, trials

    # -- results -------------------------------------------------------------------------------------------------
    def done(self) -> set[tuple[str, str, str]]:
        if not self.results.is_file():
            return set()
        with self.results.open(newline="") as handle:
            return {(r["model"], r["split"], r["seed"]) for r in csv.DictReader(handle) if r.get("stamp") == self.stamp}

    def append(self, model: str, fold: int, seed: int, rows: list[dict[str, Any]]) -> None:
        new = not self.results.is_file()
        with self.results.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, "stamp"])
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({"model": model, "split": f"fold{fold}", "seed": seed, "stamp": self.stamp,
                                 **{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}})

    def run(self, progress: Any) -> tuple[Recipe, list[dict[str, Any]]]:
        """Every missing model of every fold and seed; the recipe used and the trials that chose it."""
        from fskd.models import load_backbone

        recipe, trials = self.choose_recipe(progress)
        progress(f"recipe: lr {recipe.lr}, margin {recipe.margin}, {recipe.steps} steps")
        for fold in self.preset.folds:
            training, test = self.split(fold)
            root = self.training_root(f"fold{fold}", training)
            test_set = self.test_set(test, seed=fold)
            teacher_rows = None
            for seed in self.seeds:
                done = self.done()
                for model in MODELS:
                    if (model, f"fold{fold}", str(seed)) in done:
                        continue
                    progress(f"fold {fold} seed {seed}: {model}")
                    if model == "teacher":
                        teacher_rows = teacher_rows or score(self.teacher, **test_set,
                                                             resolutions=self.preset.resolutions)
                        rows = teacher_rows
                    else:
                        checkpoints = self.fit(f"fold{fold}_seed{seed}_{model}", root, recipe, model, seed)
                        rows = score(load_backbone(checkpoints / "last.ckpt", allow_student=True), **test_set,
                                     resolutions=self.preset.resolutions)
                    self.append(model, fold, seed, rows)
        return recipe, trials


def load_results(path: Path, stamp: str | None = None) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if stamp is None or r.get("stamp") == stamp]
    for row in rows:
        for key in ("acc", "acc_std", "insightface_acc", "rank1"):
            row[key] = float(row[key])
    return rows


def mean_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    table: dict[tuple[str, str], dict[str, float]] = {}
    for model in MODELS:
        for resolution in dict.fromkeys(r["resolution"] for r in rows):
            members = [r for r in rows if r["model"] == model and r["resolution"] == resolution]
            if members:
                table[(model, resolution)] = {k: float(np.mean([r[k] for r in members]))
                                              for k in ("acc", "insightface_acc", "rank1")} | {"n": len(members)}
    return table

"""The synthetic grid's presets, its list of models, and running them: one fit and one validate run per model
through the real CLI, each model's rows appended to the CSV as soon as it is scored (a stopped run loses at most
the model it was training), and everything already in the CSV skipped."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fskd.commands.demo.presets import DEFAULT_CONFIGS, RECIPE
from fskd.commands.fits import fit_is_done, record_fit, set_aside
from fskd.data.atomic import written_by_dead_process

SETS: tuple[str, ...] = ("agedb_30", "lfw", "cfp_fp")

EVAL_RESOLUTIONS: tuple[int, ...] = (112, 56, 28, 14)

#: (method, training resolution) of every student, in the order a seed's round trains them.
STUDENTS: tuple[tuple[str, str], ...] = (
    ("base", "14"), ("fskd", "14"), ("fskd_hint", "14"), ("fskd_cross", "14"), ("askd", "14"),
    ("fitnet", "14"), ("at", "14"), ("rkd", "14"), ("hkd", "14"),
    ("base", "28"), ("fskd", "28"), ("base", "56"), ("fskd", "56"), ("base", "multi"), ("fskd", "multi"),
)

METHODS: tuple[str, ...] = ("teacher", *dict.fromkeys(m for m, _ in STUDENTS))

MAIN_PAIR: tuple[str, ...] = ("base", "fskd")
"""The methods whose 14 px students get every seed of the preset; the others get ``other_seeds`` of them."""

COLUMNS: tuple[str, ...] = ("method", "train", "resolution", "seed", "acc", "acc_insightface",
                            *(f"acc_{s}" for s in SETS), "fit_seconds", "stamp")
"""CSV columns. ``train``: the training resolution (teacher 112); ``resolution``: the evaluation resolution;
``acc``: the authors' 10-fold protocol as a fraction, mean of the three sets; ``stamp``: the preset and generator
the row belongs to (rows of other stamps are kept but never mixed in)."""


@dataclass(frozen=True)
class GridPreset:
    """Data size and training budgets of one grid size."""

    name: str
    identities: int
    images_per_identity: int
    pairs: int
    teacher_steps: int
    student_steps: int
    seeds: tuple[int, ...]
    other_seeds: int
    overrides: tuple[str, ...] = ()
    description: str = ""

    def milestones(self, steps: int) -> str:
        """The recipe's learning-rate drops (/10 at 60 % and 85 % of the steps), as a CLI value."""
        return f"[{max(1, round(0.6 * steps))},{max(2, round(0.85 * steps))}]"


PRESETS: dict[str, GridPreset] = {
    "smoke": GridPreset("smoke", identities=16, images_per_identity=3, pairs=20, teacher_steps=3,
                        student_steps=2, seeds=(0, 1), other_seeds=1,
                        overrides=("--data.batch_size", "16", "--data.val_batch_size", "40"),
                        description="test-sized pipeline check; numbers are meaningless"),
    "cpu": GridPreset("cpu", identities=1000, images_per_identity=6, pairs=300, teacher_steps=2000,
                      student_steps=250, seeds=(0, 1, 2, 3, 4), other_seeds=3,
                      description="the whole grid on a 2-core CPU: one teacher of 2,000 steps, students of 250 "
                                  "steps of 64 faces; data and teacher fixed, seeds vary the students"),
    "full": GridPreset("full", identities=1000, images_per_identity=6, pairs=600, teacher_steps=2000,
                       student_steps=1500, seeds=(0, 1, 2, 3, 4), other_seeds=3,
                       description="students on the teacher's own budget (the demo's full recipe); for a GPU"),
}


@dataclass(frozen=True)
class Model:
    """One model of the grid: a teacher (``train`` 112) or a student."""

    method: str
    train: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_{self.train}_seed{self.seed}"

    @property
    def distilled(self) -> bool:
        return self.method not in ("teacher", "teacher_cbam", "base")

    @property
    def cbam(self) -> bool:
        return self.method in ("askd", "teacher_cbam")


def models(preset: GridPreset, methods: Sequence[str], seeds: Sequence[int] | None = None) -> list[Model]:
    """The grid's models in training order: the teachers, then one round of students per seed (the first
    ``other_seeds`` rounds hold every student, the later ones only the 14 px base and F-SKD students)."""
    seeds = tuple(seeds if seeds is not None else preset.seeds)
    wanted = set(methods)
    # The HR teacher serves every student but A-SKD's, which has its own CBAM teacher.
    teachers = [Model("teacher", "112", 0)] if wanted - {"askd"} else []
    if "askd" in wanted:
        teachers.append(Model("teacher_cbam", "112", 0))
    def full_round(number: int, seed: int) -> bool:
        # A seed's round is its place in the preset's seeds, so `--seeds 3` alone trains what seed 3 trains in
        # the whole grid (only the 14 px base and F-SKD students), not a full round.
        return (preset.seeds.index(seed) if seed in preset.seeds else number) < preset.other_seeds

    students = [Model(method, train, seed)
                for number, seed in enumerate(seeds) for method, train in STUDENTS
                if method in wanted and (full_round(number, seed) or (method in MAIN_PAIR and train == "14"))]
    return teachers + students


@dataclass
class Grid:
    """One grid run into ``out``: ``data/``, ``models/<name>/`` (fit, checkpoint, scores) and ``results.csv``."""

    out: Path
    preset: GridPreset
    synth: dict[str, Any] = field(default_factory=dict)
    workers: int = 0
    progress_bar: bool = False
    configs: Path = DEFAULT_CONFIGS

    @property
    def results(self) -> Path:
        return self.out / "results.csv"

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def stamp(self) -> str:
        """Identifies what the rows depend on: the preset and the generator's settings."""
        text = json.dumps({"preset": asdict(self.preset), "synth": self.synth}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def synth_config(self) -> Any:
        from fskd.data.synthetic import SynthConfig

        return SynthConfig(**self.synth)

    # -- data --------------------------------------------------------------------------------------------------
    def prepare_data(self, say: Callable[[str], None]) -> None:
        from fskd.data.synthetic import dataset_matches, generate_dataset

        p = self.preset
        if dataset_matches(self.data, p.identities, p.images_per_identity, p.pairs, 0, self.synth_config()):
            say(f"synthetic faces already in {self.data}")
            return
        if self.data.exists():
            say(f"{self.data} holds other data: moved to {set_aside(self.data)}")
        say(f"render synthetic faces ({p.identities} identities x {p.images_per_identity}, {p.pairs} pairs per "
            f"set) -> {self.data}")
        summary = generate_dataset(self.data, p.identities, p.images_per_identity, p.pairs, seed=0,
                                   config=self.synth_config(), workers=max(1, self.workers))
        say(f"{summary['images_rendered']} images in {summary['seconds']:.1f} s")

    # -- one model ---------------------------------------------------------------------------------------------
    def folder(self, model: Model) -> Path:
        """``models/<stamp>/<name>``: a fit's arguments do not show what data it saw, so models made for another
        preset or generator (whose data were re-rendered into ``data/``) are never taken for this one's."""
        return self.out / "models" / self.stamp / model.name

    @staticmethod
    def teacher_of(model: Model) -> Model:
        return Model("teacher_cbam" if model.cbam else "teacher", "112", 0)

    def teacher_checkpoint(self, model: Model) -> Path:
        return self.folder(self.teacher_of(model)) / "checkpoints" / "last.ckpt"

    def common_args(self, model: Model) -> list[str]:
        """Arguments shared by the model's fit and validate runs."""
        p = self.preset
        args = ["--config", str(self.configs / RECIPE), "--data.root", str(self.data),
                "--seed_everything", str(model.seed), "--data.seed", str(model.seed),
                "--data.num_workers", str(self.workers), "--data.val_resolutions",
                json.dumps(list(EVAL_RESOLUTIONS)), *p.overrides]
        if model.distilled:
            args += ["--model", "fskd.systems.DistillModule", "--model.distill", model.method]
        if model.cbam:
            args += ["--model.mode", "cbam"]
        if model.train != "112":
            args += ["--data.train_resolution", model.train]
        if not self.progress_bar:
            args += ["--trainer.enable_progress_bar", "false"]
        return args

    def fit_args(self, model: Model) -> list[str]:
        folder = self.folder(model)
        steps = self.preset.teacher_steps if model.train == "112" else self.preset.student_steps
        logger = json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                              "init_args": {"save_dir": str(folder), "name": "logs"}}])
        args = ["fit", *self.common_args(model), "--trainer.max_steps", str(steps),
                "--trainer.val_check_interval", str(steps), "--model.milestones", self.preset.milestones(steps),
                "--trainer.limit_val_batches", "0", "--trainer.logger", logger,
                "--trainer.default_root_dir", str(folder), "--checkpoint.dirpath", str(folder / "checkpoints")]
        if model.distilled:
            args += ["--model.teacher_ckpt", str(self.teacher_checkpoint(model))]
        return args

    def fit(self, model: Model, say: Callable[[str], None]) -> tuple[Path, float]:
        """Train ``model`` unless a finished fit with the same arguments is there; its checkpoint and seconds."""
        from fskd.commands.lightning import lightning_main

        folder, args = self.folder(model), self.fit_args(model)
        checkpoint = folder / "checkpoints" / "last.ckpt"
        if fit_is_done(folder, args):
            timing = folder / "fit_seconds.json"
            return checkpoint, json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        if model.distilled and not self.teacher_checkpoint(model).is_file():
            raise FileNotFoundError(f"{self.teacher_checkpoint(model)}: {model.name} needs its teacher; include "
                                    f"'teacher' in --methods")
        if folder.exists():
            say(f"{folder} holds a fit with other arguments: moved to {set_aside(folder)}")
        began = time.perf_counter()
        lightning_main(args)
        seconds = round(time.perf_counter() - began, 1)
        record_fit(folder, args)
        (folder / "fit_seconds.json").write_text(json.dumps({"seconds": seconds}) + "\n")
        return checkpoint, seconds

    def score(self, model: Model, checkpoint: Path) -> list[dict[str, Any]]:
        """Validate ``checkpoint`` at every evaluation resolution; one row per resolution."""
        from fskd.commands.lightning import lightning_main

        args = ["validate", *self.common_args(model), "--ckpt_path", str(checkpoint), "--trainer.logger", "false",
                "--verbose", "false"]
        if model.distilled:
            args += ["--model.teacher_ckpt", "null"]
        metrics = lightning_main(args).trainer.callback_metrics
        rows = []
        for resolution in EVAL_RESOLUTIONS:
            try:
                per_set = {s: float(metrics[f"val/{s}/{resolution}/acc"]) for s in SETS}
                insightface = [float(metrics[f"val/{s}/{resolution}/insightface_acc"]) for s in SETS]
            except KeyError as missing:
                raise KeyError(f"{model.name}: validation metric {missing} was not logged; logged: "
                               f"{sorted(k for k in metrics if k.startswith('val/'))}") from None
            rows.append({"resolution": resolution, "acc": sum(per_set.values()) / len(SETS),
                         "acc_insightface": sum(insightface) / len(SETS),
                         **{f"acc_{s}": v for s, v in per_set.items()}})
        return rows

    # -- results -----------------------------------------------------------------------------------------------
    def done(self) -> set[tuple[str, str, int]]:
        """(method, train, seed) of the models whose rows of this stamp are in the CSV."""
        return {(r["method"], r["train"], int(r["seed"])) for r in load_rows(self.results, self.stamp)}

    def append(self, model: Model, rows: list[dict[str, Any]], fit_seconds: float) -> None:
        new = not self.results.is_file()
        with self.results.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow({"method": model.method, "train": model.train, "seed": model.seed,
                                 "fit_seconds": fit_seconds, "stamp": self.stamp,
                                 **{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}})

    # -- several processes on one --out -------------------------------------------------------------------------
    def claim_path(self, name: str) -> Path:
        return self.out / "models" / self.stamp / f"{name}.claim"

    def holder(self, name: str) -> str | None:
        """Who holds the claim on ``name`` ("host pid"), or None when nobody does (a claim of a process of this
        host that no longer exists is removed: a killed worker)."""
        path = self.claim_path(name)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        host, _, pid = text.rpartition(" ")
        if host and pid.isdigit() and written_by_dead_process(host, int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return text or "a process"

    def claim(self, name: str) -> bool:
        """Take ``name`` for this process (an exclusive file ``models/<stamp>/<name>.claim``); False when another
        live process holds it. Lets several ``fskd grid`` processes share one --out without training a model
        twice or appending its rows twice."""
        path = self.claim_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self.holder(name) is not None:
                    return False
                continue  # a dead holder's claim was just removed
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}")
            return True
        return False

    def release(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.claim_path(name).unlink()

    def run(self, todo: Sequence[Model], say: Callable[[str], None]) -> None:
        """Fit and score every model of ``todo`` whose rows are not in the CSV yet. Models another live process
        is training (its claim) are skipped, and so are students whose teacher it is still training; a later
        run picks up whatever was skipped."""
        self.out.mkdir(parents=True, exist_ok=True)
        waiting = False
        while not self.claim("data"):  # another process is rendering the faces: wait for them
            if not waiting:
                say(f"waiting for {self.holder('data')} to finish the synthetic faces in {self.data}")
                waiting = True
            time.sleep(2)
        try:
            self.prepare_data(say)
        finally:
            self.release("data")
        for number, model in enumerate(todo, 1):
            if (model.method, model.train, model.seed) in self.done():
                continue
            if model.distilled and not self.teacher_checkpoint(model).is_file():
                teacher_holder = self.holder(self.teacher_of(model).name)
                if teacher_holder is not None:
                    say(f"model {number}/{len(todo)}: {model.name} skipped: its teacher is being trained by "
                        f"{teacher_holder}")
                    continue
            if not self.claim(model.name):
                say(f"model {number}/{len(todo)}: {model.name} skipped: being trained by {self.holder(model.name)}")
                continue
            try:
                if (model.method, model.train, model.seed) in self.done():  # finished by another process meanwhile
                    continue
                say(f"model {number}/{len(todo)}: {model.name}")
                checkpoint, seconds = self.fit(model, say)
                rows = self.score(model, checkpoint)
                self.append(model, rows, seconds)
            finally:
                self.release(model.name)
            own = next((r for r in rows if str(r["resolution"]) == model.train), rows[-1])
            say(f"  {model.name}: {100 * own['acc']:.1f}% at {own['resolution']} px (fit {seconds:.0f} s)")


def load_rows(path: Path, stamp: str | None = None) -> list[dict[str, Any]]:
    """The CSV's rows (of ``stamp`` only, when given), with numbers as numbers."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if stamp is None or r["stamp"] == stamp]
    for row in rows:
        row["seed"], row["resolution"] = int(row["seed"]), int(row["resolution"])
        for key in ("acc", "acc_insightface", *(f"acc_{s}" for s in SETS), "fit_seconds"):
            row[key] = float(row[key])
    return rows

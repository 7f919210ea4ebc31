"""``fskd demo``: the whole pipeline at smoke size (real CLI, configs, checkpoints), its tables, pictures."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fskd.cli import COMMANDS, main
from fskd.commands.demo import main as demo_main
from fskd.commands.demo import running
from fskd.commands.demo.pictures import plot_roc, roc_auc
from fskd.commands.demo.presets import PRESETS
from fskd.commands.demo.report import CSV_COLUMNS, markdown_tables
from fskd.commands.demo.results import (
    ALL_SETS,
    MODELS,
    ResultRow,
    fskd_gains,
    rows_from_metrics,
    summarise,
    with_set_means,
)
from fskd.commands.demo.running import DemoSettings, check_settings
from fskd.commands.fits import FIT_MARKER
from fskd.evaluation.verification import insightface_best_threshold

SETS = ("agedb_30", "lfw", "cfp_fp")
SMOKE_RESOLUTIONS = (112, 14)  # the smoke preset evaluates these two (the quick and full presets four)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "smoke"
    assert demo_main(["--preset", "smoke", "--out", str(out), "--no-progress-bar"]) == 0
    return out


@pytest.fixture(scope="module")
def table(run: Path) -> list[dict[str, str]]:
    with (run / "results.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


# --- the smoke run ------------------------------------------------------------------------------------------


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_every_output_file_exists(run: Path) -> None:
    expected = ["results.md", "results.csv", "results.json", "accuracy_vs_resolution.png", "samples.png",
                *[f"roc_{name}_{res}.png" for name in SETS for res in SMOKE_RESOLUTIONS],
                "seed0/pair_scores.npz", "seed0/data/train.rec", "seed0/data/lfw.bin",
                *[f"seed0/{model}/checkpoints/last.ckpt" for model in MODELS]]
    missing = [name for name in expected if not (run / name).is_file()]
    assert not missing
    # Only the evaluated resolutions get ROC pictures.
    assert sorted(p.name for p in run.glob("roc_*.png")) == sorted(
        f"roc_{name}_{res}.png" for name in SETS for res in SMOKE_RESOLUTIONS)


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_pictures_are_valid_pngs(run: Path) -> None:
    for path in run.glob("*.png"):
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path.name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert image.format == "PNG" and width >= 300 and height >= 300, (path.name, image.size)
            # Not a blank canvas: a drawn figure has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, path.name


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_csv_covers_every_model_set_resolution_protocol_with_fractions(table: list[dict[str, str]]) -> None:
    seed_rows = [r for r in table if r["seed"] == "0"]
    mean_rows = [r for r in table if r["seed"] == "mean"]
    assert len(seed_rows) + len(mean_rows) == len(table)
    keys = {(r["model"], r["set"], int(r["resolution"]), r["protocol"]) for r in seed_rows}
    expected = {(m, s, res, p) for m in MODELS for s in (*SETS, ALL_SETS) for res in SMOKE_RESOLUTIONS
                for p in ("fskd", "insightface")}
    assert keys == expected and len(seed_rows) == len(expected)
    assert {(r["model"], r["set"], int(r["resolution"]), r["protocol"]) for r in mean_rows} == expected
    for row in table:
        for column in ("accuracy", "fold_std"):
            assert 0.0 <= float(row[column]) <= 1.0, row
    for row in seed_rows:
        assert row["seed_std"] == "" and row["n_seeds"] == "1"
    for row in mean_rows:
        assert row["seed_std"] == "" and row["n_seeds"] == "1"  # one seed: no spread to report


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_csv_set_means_and_seed_means_recompute(table: list[dict[str, str]]) -> None:
    value = {(r["seed"], r["model"], r["set"], r["resolution"], r["protocol"]): float(r["accuracy"])
             for r in table}
    for (seed, model, name, res, protocol), accuracy in value.items():
        if name == ALL_SETS and seed == "0":
            per_set = [value[(seed, model, s, res, protocol)] for s in SETS]
            assert accuracy == pytest.approx(sum(per_set) / 3, abs=2e-6)
        if seed == "mean":
            assert accuracy == value[("0", model, name, res, protocol)]


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_csv_matches_the_pair_scores_behind_the_roc_curves(run: Path, table: list[dict[str, str]]) -> None:
    """The insightface accuracy recomputed from the saved ROC scores (cosine of image+flip sums, so squared
    distance = 2 - 2 cos) equals the validate run's logged value: same models, same degradation."""
    scores = np.load(run / "seed0" / "pair_scores.npz")
    logged = {(r["model"], r["set"], r["resolution"]): float(r["accuracy"]) for r in table
              if r["seed"] == "0" and r["protocol"] == "insightface" and r["set"] != ALL_SETS}
    for (model, name, res), accuracy in logged.items():
        distances = 2.0 - 2.0 * scores[f"{model}/{name}/{res}"]
        issame = scores[f"issame/{name}"]
        fold = np.arange(issame.size) // (issame.size // 10)
        correct = []
        for k in range(10):
            threshold = insightface_best_threshold(distances[fold != k], issame[fold != k])
            test = fold == k
            correct.append(np.mean((distances[test] < threshold) == issame[test]))
        assert float(np.mean(correct)) == pytest.approx(accuracy, abs=1e-9), (model, name, res)
    recheck = json.loads((run / "results.json").read_text())["insightface_recheck_max_abs_diff"]
    assert recheck == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_markdown_tables_show_every_model_and_resolution(run: Path, table: list[dict[str, str]]) -> None:
    text = (run / "results.md").read_text()
    assert "| model | set | 112 px (HR) | 14 px |" in text
    assert "## F-SKD gain at 14 px" in text and "## Seed 0" in text
    teacher_lfw = next(r for r in table if r["seed"] == "0" and r["model"] == "teacher" and r["set"] == "lfw"
                       and r["resolution"] == "112" and r["protocol"] == "fskd")
    cell = f"{100 * float(teacher_lfw['accuracy']):.1f} [{100 * float(teacher_lfw['fold_std']):.1f}]"
    assert f"| teacher (trained on HR) | lfw | {cell} |" in text
    assert "± 0.0" not in text and "## Mean over seeds" not in text  # one seed: no spread is printed


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_student_is_distilled_from_this_seeds_teacher_through_the_cli(run: Path) -> None:
    result = json.loads((run / "results.json").read_text())
    commands = result["lightning_commands"]
    assert [c.split()[1] for c in commands] == ["fit", "validate"] * 3
    teacher = str(run / "seed0" / "teacher" / "checkpoints" / "last.ckpt")
    fskd_fit = next(c for c in commands if c.startswith("fskd fit") and "fskd_14.yaml" in c)
    assert f"--model.teacher_ckpt {teacher}" in fskd_fit
    assert "--data.root " + str(run / "seed0" / "data") in fskd_fit
    fskd_validate = next(c for c in commands if c.startswith("fskd validate") and "fskd_14" in c)
    assert "--model.teacher_ckpt null" in fskd_validate
    first_stages = [s["stage"].split(": ")[1].split(" (")[0] for s in result["stages"][:2]]
    assert first_stages == ["render synthetic faces", "fit teacher"]
    assert result["stages"][-1]["stage"] == "tables and pictures"


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_resume_reuses_data_fits_and_evaluations(run: Path, table: list[dict[str, str]]) -> None:
    """Last of the smoke-run tests: it rewrites the run's tables from the saved evaluations."""
    before = (run / "results.csv").read_text()
    assert demo_main(["--preset", "smoke", "--out", str(run), "--no-progress-bar", "--resume"]) == 0
    result = json.loads((run / "results.json").read_text())
    assert result["lightning_commands"] == []
    assert (run / "results.csv").read_text() == before
    stages = [s["stage"] for s in result["stages"]]
    assert sum("already" in s for s in stages) == 1 + 2 * len(MODELS), stages
    assert (run / "samples.png").is_file()


# --- pieces, on hand-made numbers ---------------------------------------------------------------------------


def _row(seed: int, model: str, name: str, accuracy: float, fold_std: float = 0.02) -> ResultRow:
    return ResultRow(seed, model, name, 14, "fskd", accuracy, fold_std)


def test_set_means_seed_summary_and_gains_are_exact() -> None:
    rows = []
    for seed, base, gain in ((0, 0.70, 0.03), (1, 0.74, -0.01), (2, 0.72, 0.04)):
        rows += [_row(seed, "baseline_14", "lfw", base),
                 _row(seed, "baseline_14", "agedb_30", base - 0.1, 0.04),
                 _row(seed, "fskd_14", "lfw", base + gain),
                 _row(seed, "fskd_14", "agedb_30", base - 0.1 + gain)]
    full = with_set_means(rows)
    mean0 = next(r for r in full if r.seed == 0 and r.model == "baseline_14" and r.set == ALL_SETS)
    assert mean0.accuracy == pytest.approx(0.65) and mean0.fold_std == pytest.approx(0.03)
    summary = {(s.model, s.set): s for s in summarise(full)}
    lfw = summary[("baseline_14", "lfw")]
    assert lfw.accuracy == pytest.approx(0.72) and lfw.n_seeds == 3
    assert lfw.seed_std == pytest.approx(math.sqrt(((0.02) ** 2 + 0 + (0.02) ** 2) / 2))
    gains = {g["set"]: g for g in fskd_gains(full)}
    assert gains["lfw"]["gains"] == pytest.approx([0.03, -0.01, 0.04])
    assert gains["lfw"]["mean"] == pytest.approx(0.02) and gains["lfw"]["positive"] == 2
    assert gains["lfw"]["seed_std"] == pytest.approx(np.std([0.03, -0.01, 0.04], ddof=1))
    assert gains[ALL_SETS]["gains"] == pytest.approx([0.03, -0.01, 0.04])


def test_tables_show_a_spread_over_seeds_only_when_there_are_several() -> None:
    rows = with_set_means([_row(seed, model, "lfw", accuracy) for seed, model, accuracy in (
        (0, "baseline_14", 0.70), (0, "fskd_14", 0.73), (1, "baseline_14", 0.74), (1, "fskd_14", 0.72))])
    two = markdown_tables(summarise(rows), rows, ["lfw"], [14])
    assert "| base student 14 px (labels only) | lfw | 72.0 ± 2.8 [2.0] |" in two
    assert "## Seed 0" in two and "## Seed 1" in two and "| +3.0, -2.0 | +0.5 ± 3.5 | 1/2 |" in two
    one_seed = [r for r in rows if r.seed == 0]
    one = markdown_tables(summarise(one_seed), one_seed, ["lfw"], [14])
    assert "| base student 14 px (labels only) | lfw | 70.0 [2.0] |" in one
    assert "±" not in one and "| +3.0 | +3.0 | 1/1 |" in one


def test_missing_metric_is_named() -> None:
    metrics = {"val/lfw/14/acc": 0.9, "val/lfw/14/acc_std": 0.01, "val/lfw/14/insightface_acc": 0.88}
    with pytest.raises(KeyError, match="'val/lfw/14/insightface_acc_std' was not logged for teacher"):
        rows_from_metrics(metrics, 0, "teacher", ["lfw"], [14])
    metrics["val/lfw/14/insightface_acc_std"] = 0.02
    rows = rows_from_metrics(metrics, 3, "teacher", ["lfw"], [14])
    assert [(r.protocol, r.accuracy, r.fold_std, r.seed) for r in rows] == [
        ("fskd", 0.9, 0.01, 3), ("insightface", 0.88, 0.02, 3)]


def test_bad_settings_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = DemoSettings(out=tmp_path, preset=PRESETS["smoke"], seeds=(0,),
                            models=("baseline_14", "fskd_14"))
    with pytest.raises(ValueError, match="F-SKD student needs the teacher"):
        check_settings(settings)
    with pytest.raises(ValueError, match="--seeds must be distinct"):
        check_settings(DemoSettings(out=tmp_path, preset=PRESETS["smoke"], seeds=(1, 1)))
    with pytest.raises(FileNotFoundError, match="demo config not found"):
        check_settings(DemoSettings(out=tmp_path, preset=PRESETS["smoke"], seeds=(0,), configs=tmp_path))
    assert demo_main(["--out", str(tmp_path / "x"), "--seeds", "2", "2"]) == 2
    assert "--seeds must be distinct" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # runs the smoke demo (the module's `run` fixture)
def test_a_second_run_into_the_same_folder_never_reports_the_first_runs_models(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --resume an earlier run's checkpoints are refused before anything runs (Lightning would write
    last-v1.ckpt beside them and the demo would read the old last.ckpt); with --resume, a fit whose arguments
    changed is moved aside, never mixed with the new one."""
    before = sorted(p.relative_to(run) for p in run.rglob("*.ckpt"))
    assert demo_main(["--preset", "smoke", "--out", str(run), "--no-progress-bar"]) == 2
    error = capsys.readouterr().err
    assert "holds checkpoints of an earlier run: pass --resume" in error and "seed0/teacher/checkpoints" in error
    assert sorted(p.relative_to(run) for p in run.rglob("*.ckpt")) == before

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    teacher = copy / "seed0" / "teacher"
    changed_fit = ["fit", "--changed"]
    calls = []
    monkeypatch.setattr(running, "lightning", lambda args: calls.append(args) or _write_checkpoint(teacher))
    settings = DemoSettings(out=copy, preset=PRESETS["smoke"], seeds=(0,), models=("teacher",), resume=True)
    checkpoint = running._fit(settings, "teacher", teacher, changed_fit, running.Progress(), [], "seed 0")
    assert calls == [changed_fit]
    assert (copy / "seed0" / "teacher.replaced-1" / "checkpoints" / "last.ckpt").is_file()
    assert not list((teacher / "checkpoints").glob("last-v*.ckpt"))
    assert checkpoint.read_bytes() == b"new"
    assert json.loads((teacher / FIT_MARKER).read_text())["args"] == changed_fit


def _write_checkpoint(model_dir: Path) -> None:
    (model_dir / "checkpoints").mkdir(parents=True)
    (model_dir / "checkpoints" / "last.ckpt").write_bytes(b"new")


def test_demo_is_a_registered_command(capsys: pytest.CaptureFixture) -> None:
    assert COMMANDS["demo"].module == "fskd.commands.demo"
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--help"])
    assert stopped.value.code == 0
    assert "--preset {smoke,quick,full}" in capsys.readouterr().out


def test_roc_auc_and_plot_inputs(tmp_path: Path) -> None:
    assert roc_auc([0, 0, 1], [0, 1, 1]) == 1.0
    assert roc_auc([0, 1], [0, 1]) == 0.5
    assert roc_auc([0, 0.5, 1], [0, 0.25, 1]) == pytest.approx(0.5 * 0.125 + 0.5 * 0.625)
    with pytest.raises(ValueError, match="fpr must be non-decreasing"):
        roc_auc([0, 1, 0.5], [0, 1, 1])
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc(tmp_path / "x.png", {}, "t")

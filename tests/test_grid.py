"""``fskd grid``: which models it trains, its paired statistics against independent computations, and a
test-sized run through the real CLI that resumes per model."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fskd.commands.grid.plan import COLUMNS, PRESETS, STUDENTS, Grid, load_rows, models
from fskd.commands.grid.report import calibration, differences, markdown, verdict


def test_the_cpu_grid_has_five_seeds_of_base_and_fskd_and_three_of_every_other_student() -> None:
    todo = models(PRESETS["cpu"], ["teacher", *dict.fromkeys(m for m, _ in STUDENTS)])
    assert [m.name for m in todo[:2]] == ["teacher_112_seed0", "teacher_cbam_112_seed0"]
    counts = Counter((m.method, m.train) for m in todo[2:])
    assert counts.pop(("base", "14")) == 5 and counts.pop(("fskd", "14")) == 5
    assert set(counts.values()) == {3} and set(counts) == set(STUDENTS) - {("base", "14"), ("fskd", "14")}
    # One round per seed: every model of seed s comes before any model of seed s + 1.
    seeds = [m.seed for m in todo[2:]]
    assert seeds == sorted(seeds)


def test_without_askd_there_is_no_cbam_teacher() -> None:
    todo = models(PRESETS["cpu"], ["teacher", "base"], seeds=[0])
    assert [m.name for m in todo] == ["teacher_112_seed0", "base_14_seed0", "base_28_seed0", "base_56_seed0",
                                      "base_multi_seed0"]


def test_a_later_seed_alone_trains_what_it_trains_in_the_whole_grid() -> None:
    assert [m.name for m in models(PRESETS["cpu"], ["base", "fskd"], seeds=[3])] == ["teacher_112_seed0",
                                                                                       "base_14_seed3",
                                                                                       "fskd_14_seed3"]


def test_askd_alone_trains_only_the_cbam_teacher() -> None:
    assert [m.name for m in models(PRESETS["cpu"], ["askd"], seeds=[0])] == ["teacher_cbam_112_seed0",
                                                                                  "askd_14_seed0"]


def _rows(table: dict[tuple[str, str, int, int], float]) -> list[dict]:
    return [{"method": m, "train": t, "resolution": r, "seed": s, "acc": a} for (m, t, r, s), a in table.items()]


def test_differences_are_paired_by_seed_with_a_t_interval() -> None:
    base = [0.80, 0.82, 0.79, 0.81]
    fskd = [0.83, 0.82, 0.84, 0.80]
    table = {("base", "14", 14, s): a for s, a in enumerate(base)}
    table.update({("fskd", "14", 14, s): a for s, a in enumerate(fskd)})
    table[("fskd", "14", 14, 9)] = 0.99  # no base of seed 9: left out, not paired with another seed
    (found,) = differences(_rows(table))
    d = np.array(fskd) - np.array(base)
    half = 3.182446305284263 * d.std(ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert found["seeds"] == [0, 1, 2, 3] and found["n"] == 4
    assert found["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert (found["low"], found["high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
    assert found["positive"] == 2 and found["negative"] == 1
    assert verdict(found) == "not distinguishable from base"


def test_the_verdict_names_a_method_better_or_worse_only_when_the_interval_excludes_zero() -> None:
    assert verdict({"n": 3, "low": 0.001, "high": 0.02}) == "better than base"
    assert verdict({"n": 3, "low": -0.02, "high": -0.001}) == "worse than base"
    assert verdict({"n": 3, "low": -0.001, "high": 0.02}) == "not distinguishable from base"
    assert verdict({"n": 1, "low": float("nan"), "high": float("nan")}) == "one run: no interval"


def test_a_multi_resolution_student_is_compared_at_14_28_and_56() -> None:
    table = {(m, "multi", r, 0): a for m, a in (("base", 0.7), ("fskd", 0.75)) for r in (14, 28, 56, 112)}
    assert [(d["resolution"], round(d["mean"], 12)) for d in differences(_rows(table))] == \
        [(14, 0.05), (28, 0.05), (56, 0.05)]


@pytest.mark.parametrize(("teacher", "base", "holds"), [(0.97, 0.86, True), (0.97, 0.88, False),
                                                        (0.95, 0.80, False), (0.96, 0.86, True)])
def test_calibration_needs_a_strong_teacher_and_ten_points_of_room(teacher: float, base: float,
                                                                   holds: bool) -> None:
    rows = _rows({("teacher", "112", 112, 0): teacher, ("base", "14", 14, 0): base - 0.01,
                  ("base", "14", 14, 1): base + 0.01})
    check = calibration(rows)
    assert check["holds"] is holds and check["base_14"] == pytest.approx(base)
    assert ("calibration holds" in markdown(rows, [])) is holds


@pytest.mark.slow
def test_a_grid_run_writes_rows_per_model_and_resumes_without_refitting(tmp_path: Path) -> None:
    from fskd.cli import main

    out = tmp_path / "grid"
    common = ["grid", "--preset", "smoke", "--out", str(out), "--seeds", "0", "1"]
    assert main([*common, "--methods", "teacher", "base"]) == 0
    rows = load_rows(out / "results.csv")
    # teacher + base at 14/28/56/multi for seed 0 + base at 14 for seed 1 (smoke: one round of every student),
    # four evaluation resolutions each
    assert len(rows) == 4 * (1 + 4 + 1)
    with (out / "results.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    (teacher_marker,) = (out / "models").glob("*/teacher_112_seed0/fit_done.json")
    stamp = teacher_marker.stat().st_mtime_ns

    assert main([*common, "--methods", "teacher", "base", "fskd"]) == 0
    rows = load_rows(out / "results.csv")
    assert len(rows) == 4 * (1 + 4 + 1 + 4 + 1)  # only the F-SKD students were added
    assert teacher_marker.stat().st_mtime_ns == stamp  # the teacher was reused, not trained again
    assert Counter((r["method"], r["train"], r["seed"]) for r in rows).most_common(1)[0][1] == 4
    report = (out / "results.md").read_text()
    assert "| F-SKD | 14 | 14 px | 2 |" in report
    assert (out / "accuracy_vs_resolution.png").is_file() and (out / "differences.png").is_file()


def test_a_report_without_rows_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fskd.cli import main

    assert main(["grid", "--preset", "smoke", "--out", str(tmp_path), "--report-only"]) == 2
    assert "holds no rows" in capsys.readouterr().err


def test_processes_sharing_an_out_folder_never_train_the_same_model(tmp_path: Path, monkeypatch) -> None:
    # A model claimed by another live process is skipped (and so is a student whose teacher it is training);
    # a claim left by a process that died is taken over.
    grid = Grid(out=tmp_path / "grid", preset=PRESETS["smoke"])
    monkeypatch.setattr(Grid, "prepare_data", lambda self, say: None)
    trained: list[str] = []
    monkeypatch.setattr(Grid, "fit", lambda self, model, say: (trained.append(model.name), (None, 1.0))[1])
    monkeypatch.setattr(Grid, "score", lambda self, model, checkpoint: [{"resolution": model.train, "acc": 0.5,
                                                                          "acc_insightface": 0.5}])
    monkeypatch.setattr(Grid, "append", lambda self, model, rows, seconds: None)
    todo = models(PRESETS["smoke"], ["teacher", "base", "fskd"], [0])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        grid.claim_path("teacher_112_seed0").parent.mkdir(parents=True)
        grid.claim_path("teacher_112_seed0").write_text(f"{socket.gethostname()} {alive.pid}")
        grid.claim_path("base_14_seed0").write_text(f"{socket.gethostname()} {alive.pid}")
        said: list[str] = []
        grid.run(todo, said.append)
        assert "teacher_112_seed0" not in trained and "base_14_seed0" not in trained
        assert not any(name.startswith("fskd_") for name in trained)  # their teacher is still being trained
        assert "base_28_seed0" in trained
        assert any("base_14_seed0 skipped: being trained by" in line and str(alive.pid) in line for line in said)
        assert any("fskd_14_seed0 skipped: its teacher is being trained by" in line for line in said)
        assert grid.claim_path("teacher_112_seed0").exists()  # another process's claim is left alone
        assert not grid.claim_path("base_28_seed0").exists()  # ours are released
    finally:
        alive.kill()
        alive.wait()
    trained.clear()
    grid.run(todo, said.append)  # the holder died: its claims are taken over
    assert "teacher_112_seed0" in trained and "base_14_seed0" in trained


def test_a_finished_fit_is_found_from_another_place_but_not_with_another_config(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    # Found re-scoring the grid from a git worktree: the package's recipe had another absolute path there, so
    # every finished model looked like a fit with other arguments and was set aside to be trained again.
    from fskd.commands.fits import fit_is_done, record_fit

    monkeypatch.chdir(tmp_path)
    for place in ("env1", "env2"):
        (tmp_path / place).mkdir()
        (tmp_path / place / "recipe.yaml").write_text("trainer:\n  max_steps: 200\n")
    folder = tmp_path / "runs" / "model"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    logger = json.dumps([{"class_path": "CSVLogger", "init_args": {"save_dir": "runs/model"}}])
    record_fit(folder, ["fit", "--config", str(tmp_path / "env1" / "recipe.yaml"), "--data.root", "runs",
                        "--trainer.logger", logger, "--data.val_resolutions", "[112, 14]", "--model.x", ""])
    absolute_logger = json.dumps([{"class_path": "CSVLogger", "init_args": {"save_dir": str(folder)}}])
    moved = ["fit", "--config", str(tmp_path / "env2" / "recipe.yaml"), "--data.root", str(tmp_path / "runs"),
             "--trainer.logger", absolute_logger, "--data.val_resolutions", "[112, 14]", "--model.x", ""]
    assert fit_is_done(folder, moved)
    (tmp_path / "env2" / "recipe.yaml").write_text("trainer:\n  max_steps: 300\n")  # really another recipe
    assert not fit_is_done(folder, moved)
    assert not fit_is_done(folder, [*moved[:-3], "[112, 28]", "--model.x", ""])

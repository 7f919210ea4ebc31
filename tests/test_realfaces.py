"""``fskd realfaces``: the real-face databases, the folds and pairs, and the smoke preset end to end (needs
``../shared/data/real-faces``; skipped with the reason without it)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from fskd.cli import main
from fskd.data.real_faces import (
    YALE_CROP_ROWS,
    FaceImage,
    face_112,
    list_orl,
    list_yale,
    people,
    people_folds,
    verification_pairs,
)

REAL_FACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-faces"
needs_real_faces = pytest.mark.skipif(not (REAL_FACES / "orl_faces").is_dir(),
                                      reason="real faces not present: ../shared/data/real-faces from the "
                                             "repository root")


def _fake(person: str, count: int) -> list[FaceImage]:
    return [FaceImage(person, Path(f"/x/{person}/{n}.pgm")) for n in range(count)]


def test_folds_are_disjoint_over_people_and_hold_both_databases() -> None:
    images = [image for n in range(40) for image in _fake(f"orl/s{n}", 2)]
    images += [image for n in range(38) for image in _fake(f"yale/yaleB{n:02d}", 2)]
    folds = people_folds(images, 5, seed=0)
    assert sorted(p for fold in folds for p in fold) == people(images)
    for fold in folds:
        assert {p.split("/")[0] for p in fold} == {"orl", "yale"}
        assert 15 <= len(fold) <= 16
    assert people_folds(images, 5, seed=0) == folds and people_folds(images, 5, seed=1) != folds


def test_pairs_are_every_genuine_pair_and_as_many_impostors() -> None:
    images = _fake("orl/a", 4) + _fake("orl/b", 5) + _fake("orl/c", 3)
    pairs, issame = verification_pairs(images, seed=3)
    genuine = 6 + 10 + 3
    assert len(pairs) == len(issame) == 2 * genuine - (2 * genuine) % 20 == 20
    for (first, second), same in zip(pairs, issame, strict=True):
        assert (images[first].person == images[second].person) == same and first != second
    assert verification_pairs(images, seed=3)[0] == pairs


@needs_real_faces
def test_the_real_databases_and_their_112_px_rule() -> None:
    orl, yale = list_orl(REAL_FACES), list_yale(REAL_FACES)
    assert len(orl) == 400 and len(people(orl)) == 40
    assert len(yale) == 871 and len(people(yale)) == 38
    face = face_112(orl[0])
    assert face.shape == (3, 112, 112) and face.dtype == torch.uint8
    assert int(face[:, :, :10].max()) == 0 and int(face[:, :, 102:].max()) == 0  # 92 px wide, padded
    from PIL import Image

    yale_face = face_112(yale[0])
    with Image.open(yale[0].path) as picture:
        grey = np.asarray(picture.convert("L"))[YALE_CROP_ROWS:-YALE_CROP_ROWS]
    expected = np.asarray(Image.fromarray(grey).resize((112, 112), Image.Resampling.BILINEAR))
    assert yale_face.shape == (3, 112, 112) and torch.equal(yale_face[0], yale_face[2])
    assert np.abs(yale_face[0].numpy().astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.slow
@needs_real_faces
def test_the_smoke_preset_writes_results_with_a_teacher_that_loses_accuracy_at_14_px(tmp_path: Path) -> None:
    out = tmp_path / "rf"
    assert main(["realfaces", "--data", str(REAL_FACES), "--out", str(out), "--preset", "smoke"]) == 0
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"model", "resolution", "split", "seed", "acc", "insightface_acc", "rank1"} <= set(rows[0])
    acc = {(r["model"], r["resolution"]): float(r["acc"]) for r in rows}
    assert acc[("teacher", "112")] >= 0.90 and acc[("teacher", "14")] <= acc[("teacher", "112")] - 0.05
    assert ("base_14", "14") in acc and ("fskd_14", "14") in acc
    assert (out / "results.md").is_file() and (out / "accuracy_vs_resolution.png").is_file()
    # a second run reuses every scored model
    before = (out / "results.csv").read_text()
    assert main(["realfaces", "--data", str(REAL_FACES), "--out", str(out), "--preset", "smoke"]) == 0
    assert (out / "results.csv").read_text() == before

"""Tests of the procedural synthetic face generator and the dataset it writes."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fskd.commands.synth import main as synth_main
from fskd.data.binfile import load_bin
from fskd.data.recordio import FaceRecordFile
from fskd.data.synthetic import (
    CASIA_IDENTITIES,
    CASIA_IMAGES,
    LEFT_EYE,
    RIGHT_EYE,
    SKIN_PALETTE,
    VERIFICATION_SETS,
    SynthConfig,
    casia_image_counts,
    encode_jpeg,
    generate_dataset,
    identity_params,
    render_face,
    render_face_jpeg,
)

IDENTITIES, PER_IDENTITY, PAIRS = 6, 3, 40
FILES = ("train.rec", "train.idx", "property", "agedb_30.bin", "lfw.bin", "cfp_fp.bin")
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "synthetic-faces.md"


def _generate(path: Path, seed: int = 0, workers: int = 1) -> Path:
    generate_dataset(path, IDENTITIES, PER_IDENTITY, PAIRS, seed=seed, workers=workers)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("synthetic_a"))


@pytest.fixture(scope="module")
def meta(dataset: Path) -> dict:
    return json.loads((dataset / "synthetic.json").read_text())


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        return np.asarray(image.convert("RGB"))


# --- determinism -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_same_seed_gives_byte_identical_files(dataset: Path, tmp_path: Path, workers: int) -> None:
    again = _generate(tmp_path / "again", seed=0, workers=workers)
    for name in (*FILES, "synthetic.json"):
        assert (again / name).read_bytes() == (dataset / name).read_bytes(), name


def test_different_seed_gives_different_files(dataset: Path, tmp_path: Path) -> None:
    other = _generate(tmp_path / "other", seed=1)
    for name in ("train.rec", "agedb_30.bin", "lfw.bin", "cfp_fp.bin"):
        assert (other / name).read_bytes() != (dataset / name).read_bytes(), name
    assert (other / "property").read_text() == (dataset / "property").read_text()


def test_render_face_is_a_pure_function_of_its_arguments() -> None:
    first = render_face(3, 17, 2)
    assert first.dtype == np.uint8 and first.shape == (112, 112, 3)
    np.testing.assert_array_equal(first, render_face(3, 17, 2))
    assert not np.array_equal(first, render_face(3, 17, 3))
    assert not np.array_equal(first, render_face(4, 17, 2))
    assert identity_params(3, 17) == identity_params(3, 17)
    assert identity_params(3, 17) != identity_params(4, 17)


# --- layout ------------------------------------------------------------------------------------------------


def test_training_records_are_contiguous_per_identity(dataset: Path) -> None:
    assert (dataset / "property").read_text() == f"{IDENTITIES},112,112"
    records = FaceRecordFile(dataset / "train.rec", dataset / "train.idx")
    assert len(records) == IDENTITIES * PER_IDENTITY
    expected_ranges = [(1 + PER_IDENTITY * k, 1 + PER_IDENTITY * (k + 1)) for k in range(IDENTITIES)]
    assert records.identity_ranges == expected_ranges
    for index in range(len(records)):
        label, jpeg = records.read_image(index)
        assert label == index // PER_IDENTITY
        # The stored image is exactly the render of (seed 0, identity = label, sample = position in class).
        assert jpeg == render_face_jpeg(0, label, index % PER_IDENTITY)
        assert _decode(jpeg).shape == (112, 112, 3)


@pytest.mark.parametrize("name", VERIFICATION_SETS)
def test_verification_set_has_balanced_contiguous_folds(dataset: Path, name: str) -> None:
    images, issame = load_bin(dataset / f"{name}.bin")
    assert len(images) == 2 * PAIRS and issame.shape == (PAIRS,) and issame.dtype == bool
    per_fold = PAIRS // 10
    for fold in range(10):
        labels = issame[fold * per_fold : (fold + 1) * per_fold]
        assert labels.sum() == per_fold // 2, fold
    for image in images:
        assert _decode(image).shape == (112, 112, 3)


@pytest.mark.parametrize("name", VERIFICATION_SETS)
def test_recorded_pair_identities_match_labels_and_images(dataset: Path, meta: dict, name: str) -> None:
    images, issame = load_bin(dataset / f"{name}.bin")
    recorded = [tuple(key) for key in meta["verification"][name]["images"]]
    assert len(recorded) == len(images)
    assert len(set(recorded)) == len(recorded), "every verification image is a distinct sample"
    for pair, same in enumerate(issame):
        (id_a, sample_a), (id_b, sample_b) = recorded[2 * pair], recorded[2 * pair + 1]
        assert same == (id_a == id_b)
        if same:
            assert sample_a != sample_b
    # The recorded ids are the ones actually drawn: re-rendering reproduces the stored bytes.
    for position in (0, 1, 2, len(images) // 2 + 1, len(images) - 1):
        identity, sample = recorded[position]
        assert images[position] == render_face_jpeg(0, identity, sample)


def test_verification_identities_are_disjoint_from_training_and_each_other(dataset: Path, meta: dict) -> None:
    labels = {
        FaceRecordFile(dataset / "train.rec", dataset / "train.idx").read_image(i)[0]
        for i in range(IDENTITIES * PER_IDENTITY)
    }
    assert labels == set(range(IDENTITIES))
    used = {"train": labels}
    for name in VERIFICATION_SETS:
        low, high = meta["verification"][name]["identity_range"]
        ids = {identity for identity, _ in meta["verification"][name]["images"]}
        assert all(low <= identity < high for identity in ids)
        assert len(ids) >= 10, "pairs are spread over many identities"
        used[name] = ids
    names = list(used)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not used[first] & used[second], (first, second)


@pytest.mark.parametrize("pairs", [0, 10, 30, 210])
def test_pairs_must_be_a_multiple_of_20(tmp_path: Path, pairs: int) -> None:
    with pytest.raises(ValueError, match="multiple of 20.*same and different"):
        generate_dataset(tmp_path / "bad", 2, 2, pairs)
    assert not (tmp_path / "bad").exists()


def test_size_and_config_must_agree(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size=112 disagrees with config.image_size=56"):
        generate_dataset(tmp_path, 2, 2, 20, config=SynthConfig(image_size=56))


# --- CASIA-shaped data --------------------------------------------------------------------------------------


def test_casia_counts_have_casias_size_range_and_skew() -> None:
    counts = casia_image_counts()
    assert counts.size == CASIA_IDENTITIES == 10_572 and counts.sum() == CASIA_IMAGES == 494_414
    assert counts.min() == 2 and counts.max() == 804
    assert np.median(counts) == 28 and 200 < np.count_nonzero(counts > 200) < 400  # a long tail
    assert not np.all(np.diff(counts) >= 0), "identities of every size are spread over the label range"
    assert np.array_equal(counts, casia_image_counts()) and not np.array_equal(counts, casia_image_counts(seed=1))
    assert casia_image_counts(100, 1000).sum() == 1000


@pytest.mark.parametrize(("identities", "images", "message"), [(10, 5, "cannot be spread"),
                                                               (10, 9000, "cannot be spread"), (0, 5, "identities")])
def test_casia_counts_refuse_impossible_sizes(identities: int, images: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        casia_image_counts(identities, images)


def test_uneven_identities_and_pairs_per_set(tmp_path: Path) -> None:
    counts = [1, 4, 2]
    pairs = {"agedb_30": 20, "lfw": 40, "cfp_fp": 60}
    summary = generate_dataset(tmp_path, 3, counts, pairs)
    with FaceRecordFile(tmp_path / "train.rec", tmp_path / "train.idx") as records:
        labels = [records.label_of(i) for i in range(len(records))]
    assert labels == [0, 1, 1, 1, 1, 2, 2]
    for name, count in pairs.items():
        _, issame = load_bin(tmp_path / f"{name}.bin")
        assert len(issame) == count
    meta = json.loads((tmp_path / "synthetic.json").read_text())
    assert meta["train"]["images_per_identity"] == counts
    assert summary["train_images"] == 7 and summary["pairs_per_set"] == pairs
    with pytest.raises(ValueError, match="3 counts for 2 identities"):
        generate_dataset(tmp_path / "bad", 2, counts, 20)
    with pytest.raises(ValueError, match="name every verification set"):
        generate_dataset(tmp_path / "bad", 3, counts, {"lfw": 20})


def test_synth_command_casia_shape_at_a_small_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "casia"
    assert synth_main(["--out", str(out), "--shape", "casia", "--identities", "12", "--pairs", "20"]) == 0
    printed = capsys.readouterr()
    assert "train_images: 561" in printed.out  # 494,414 x 12 / 10,572 images, CASIA's mean per identity
    assert re.search(r"bytes_on_disk: \d+", printed.out)
    assert re.search(r"synthetic: train 561/561 images \(100 %\), [\d,]+ img/s", printed.err)
    meta = json.loads((out / "synthetic.json").read_text())
    assert sum(meta["train"]["images_per_identity"]) == 561
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path / "x"), "--images", "100"])
    assert "--images needs --shape casia" in capsys.readouterr().err


# --- images ------------------------------------------------------------------------------------------------


def _face_features(image: np.ndarray) -> np.ndarray:
    """Blurred grey central crop, standardised: the dot product of two of these is their correlation."""
    grey = Image.fromarray(image).convert("L").filter(ImageFilter.GaussianBlur(2))
    crop = np.asarray(grey, dtype=np.float64)[16:104, 20:92]
    crop = crop - crop.mean()
    return crop / np.linalg.norm(crop)


def test_images_of_one_identity_are_closer_than_images_of_different_identities() -> None:
    same, different = [], []
    for identity in range(40):
        anchor = _face_features(render_face(0, identity, 0))
        same.append(float((anchor * _face_features(render_face(0, identity, 1))).sum()))
        different.append(float((anchor * _face_features(render_face(0, identity + 500, 1))).sum()))
    assert np.mean(same) > np.mean(different) + 0.05
    assert np.mean(np.array(same) > np.array(different)) > 0.65


def _dark_centroid(image: np.ndarray, centre: tuple[float, float], half: int = 4) -> tuple[float, float]:
    """Centroid (x, y) of near-black pixels (the pupil) in a window around ``centre``."""
    x0, y0 = round(centre[0]) - half, round(centre[1]) - half
    window = image[y0 : y0 + 2 * half + 1, x0 : x0 + 2 * half + 1].max(axis=2).astype(np.float64)
    weight = np.clip(30.0 - window, 0.0, None)
    assert weight.sum() > 0, "no pupil found"
    ys, xs = np.mgrid[0 : window.shape[0], 0 : window.shape[1]]
    return x0 + (weight * xs).sum() / weight.sum(), y0 + (weight * ys).sum() / weight.sum()


def test_clean_faces_are_aligned_to_the_arcface_template() -> None:
    config = SynthConfig(nuisance_strength=0.0, mid_amplitude=0.0, glasses_prob=0.0, blink_prob=0.0)
    for identity in range(5):
        image = render_face(0, identity, 0, config)
        for eye in (LEFT_EYE, RIGHT_EYE):
            x, y = _dark_centroid(image, eye)
            assert abs(x - eye[0]) < 1.0 and abs(y - eye[1]) < 1.0, (identity, eye, (x, y))


def test_nuisance_moves_the_face() -> None:
    config = SynthConfig(mid_amplitude=0.0, glasses_prob=0.0, blink_prob=0.0)
    positions = [_dark_centroid(render_face(0, 1, sample, config), LEFT_EYE, half=6) for sample in range(8)]
    assert np.std([x for x, _ in positions]) > 0.3


def test_other_image_sizes_render() -> None:
    image = render_face(0, 5, 1, SynthConfig(image_size=56))
    assert image.shape == (56, 56, 3) and image.dtype == np.uint8


def test_palette_size_limits_the_coarse_look() -> None:
    skins = {identity_params(0, identity).skin for identity in range(100)}
    assert skins == set(SKIN_PALETTE[:2])
    wide = SynthConfig(skin_palette_size=6)
    assert len({identity_params(0, identity, wide).skin for identity in range(100)}) == 6


def test_encode_jpeg_round_trip_and_errors() -> None:
    image = render_face(0, 2, 0)
    decoded = _decode(encode_jpeg(image, 95)).astype(np.int16)
    assert np.abs(decoded - image).mean() < 4.0
    assert len(encode_jpeg(image, 70)) < len(encode_jpeg(image, 95))
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(image.astype(np.float32), 90)
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(image, 0)


# --- config ------------------------------------------------------------------------------------------------


def test_config_is_frozen_and_validated() -> None:
    config = SynthConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_size = 56  # type: ignore[misc]
    with pytest.raises(ValueError, match="skin_palette_size must be in 1..6"):
        SynthConfig(skin_palette_size=7)
    with pytest.raises(ValueError, match="jpeg_quality_range"):
        SynthConfig(jpeg_quality_range=(96, 90))
    with pytest.raises(ValueError, match="identity must be a non-negative integer"):
        render_face(0, -1, 0)


def test_docs_list_every_knob_with_its_calibrated_default() -> None:
    # The calibration in docs/synthetic-faces.md holds for these defaults only: changing one without the page
    # (and, normally, a new calibration run) fails here.
    table = DOCS_PAGE.read_text().split("| knob | default |", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, flags=re.MULTILINE))
    documented = {name: ast.literal_eval(value) for name, value in rows.items()}
    assert documented == {field.name: field.default for field in dataclasses.fields(SynthConfig)}

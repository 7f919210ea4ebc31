"""Tests of closed-set identification: CMC ranking, TinyFace/folder layouts, embedding extraction, the CLI."""

from __future__ import annotations

import csv
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import fskd.evaluation.identification
from fskd.cli import main as cli_main
from fskd.data.degrade import degrade_fixed
from fskd.data.errors import DataFormatError
from fskd.data.images import decode_face, normalize
from fskd.data.layouts import DISTRACTOR_LABEL, load_tinyface_layout, split_identity_folder
from fskd.data.synthetic import TINYFACE_ID_BASE, render_face_jpeg, write_tinyface_layout
from fskd.evaluation.identification import cmc_scores, embed_images, rank_gallery, ranks_beyond_gallery
from fskd.models import create_backbone

# ---------------------------------------------------------------------------------------------------------
# Reference: the full probe x gallery matrix, sorted by (score descending, gallery index ascending)
# ---------------------------------------------------------------------------------------------------------


def brute_force_order(probe: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probe = probe.astype(np.float64)
    gallery = gallery.astype(np.float64)
    probe = (probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    scores = (probe @ gallery.T).astype(np.float32)
    order = np.empty(scores.shape, dtype=np.int64)
    for row in range(scores.shape[0]):
        order[row] = sorted(range(scores.shape[1]), key=lambda j, r=row: (-scores[r, j], j))
    return order, np.take_along_axis(scores, order, axis=1)


def brute_force_cmc(probe, probe_labels, gallery, gallery_labels, ranks) -> dict[int, float]:
    order, _ = brute_force_order(probe, gallery)
    results = {}
    for rank in ranks:
        hits = 0
        for row in range(len(probe)):
            top = [gallery_labels[j] for j in order[row, :rank]]
            hits += any(label == probe_labels[row] and label != DISTRACTOR_LABEL for label in top)
        results[rank] = hits / len(probe)
    return results


def random_problem(seed: int, identities: int = 30, probes: int = 60, distractors: int = 50, dim: int = 12):
    """Clustered embeddings (ranks neither all hits nor all misses), distractors and exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, dim))
    gallery_labels = np.concatenate([np.arange(identities), np.full(distractors, DISTRACTOR_LABEL)])
    gallery = np.concatenate([centres + 0.6 * rng.standard_normal((identities, dim)),
                              rng.standard_normal((distractors, dim))]).astype(np.float32)
    probe_labels = rng.integers(0, identities, probes)
    probe = (centres[probe_labels] + 0.9 * rng.standard_normal((probes, dim))).astype(np.float32)
    # Exact ties: a distractor equal to a matching item (after it), and a probe equal to a gallery item.
    gallery[identities + 3] = gallery[5]
    probe[0] = 3 * gallery[7]
    return probe, probe_labels, gallery, gallery_labels


# ---------------------------------------------------------------------------------------------------------
# CMC
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cmc_equals_brute_force_full_matrix(seed):
    probe, probe_labels, gallery, gallery_labels = random_problem(seed)
    ranks = (1, 2, 5, 10, 20)
    expected = brute_force_cmc(probe, probe_labels, gallery, gallery_labels, ranks)
    assert cmc_scores(probe, probe_labels, gallery, gallery_labels, ranks, chunk_size=16) == expected
    # Not a degenerate problem: the curve rises.
    assert 0 < expected[1] < expected[20] < 1


@pytest.mark.parametrize("seed", [0, 5])
def test_rank_gallery_equals_brute_force_order_and_scores(seed):
    probe, _, gallery, _ = random_problem(seed)
    order, scores = brute_force_order(probe, gallery)
    indices, top_scores = rank_gallery(probe, gallery, k=25, chunk_size=9)
    np.testing.assert_array_equal(indices, order[:, :25])
    np.testing.assert_array_equal(top_scores, scores[:, :25])
    assert top_scores.dtype == np.float32 and indices.dtype == np.int64


def test_chunk_sizes_give_identical_results():
    probe, probe_labels, gallery, gallery_labels = random_problem(7, probes=45, distractors=70)
    reference_indices, reference_scores = rank_gallery(probe, gallery, 20, chunk_size=4096)
    for chunk_size in (1, 7, 13):
        indices, scores = rank_gallery(probe, gallery, 20, chunk_size=chunk_size)
        np.testing.assert_array_equal(indices, reference_indices)
        np.testing.assert_array_equal(scores, reference_scores)
    results = [cmc_scores(probe, probe_labels, gallery, gallery_labels, chunk_size=c) for c in (1, 7, 4096)]
    assert results[0] == results[1] == results[2]


def test_ties_go_to_the_lower_gallery_index():
    probe = np.array([[1.0, 0.0]], dtype=np.float32)
    same = [1.0, 0.0]
    # Items 1 and 2 are identical (score 1), item 0 is orthogonal.
    gallery = np.array([[0.0, 1.0], same, same], dtype=np.float32)
    for chunk_size in (1, 2, 3):
        indices, scores = rank_gallery(probe, gallery, 3, chunk_size=chunk_size)
        assert indices.tolist() == [[1, 2, 0]]
        assert scores[0, :2].tolist() == [1.0, 1.0]
    # The distractor comes first among the tied pair: rank 1 misses, rank 2 hits; swapped, rank 1 hits.
    assert cmc_scores(probe, [4], gallery, [4, DISTRACTOR_LABEL, 4], ranks=(1, 2)) == {1: 0.0, 2: 1.0}
    assert cmc_scores(probe, [4], gallery, [9, 4, DISTRACTOR_LABEL], ranks=(1, 2)) == {1: 1.0, 2: 1.0}


def test_hand_computed_cmc_and_distractors_never_match():
    probe = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    # Gallery: identity 0 at 0 degrees, identity 1 at 60 degrees, a distractor at 80 degrees.
    angles = np.deg2rad([0.0, 60.0, 80.0])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = [0, 1, DISTRACTOR_LABEL]
    # Probe 0 (label 0): order 0, 1, 2 -> rank 1. Probe 1 (label 1): order 2, 1, 0 -> rank 2.
    # Probe 2 is labelled like the distractors: order 2, 1, 0 but a distractor never matches -> miss.
    results = cmc_scores(probe, [0, 1, DISTRACTOR_LABEL], gallery, labels, ranks=(1, 2, 3, 50))
    assert results == {1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 50: None}  # 3 gallery items: no rank 50


def test_ranks_above_the_gallery_size_are_not_applicable():
    probe = np.eye(4, dtype=np.float32)
    gallery = np.eye(4, dtype=np.float32)[::-1].copy()  # 4 people, one item each, all probes at rank 1
    assert cmc_scores(probe, [0, 1, 2, 3], gallery, [3, 2, 1, 0]) == {1: 1.0, 5: None, 10: None, 20: None}
    assert cmc_scores(probe, [0, 1, 2, 3], gallery, [3, 2, 1, 0], ranks=(4, 5)) == {4: 1.0, 5: None}
    assert ranks_beyond_gallery((1, 5, 10, 20), 4) == [5, 10, 20] and ranks_beyond_gallery((1, 4), 4) == []


def test_scale_of_features_does_not_matter_and_torch_inputs_work():
    probe, probe_labels, gallery, gallery_labels = random_problem(11)
    scales = np.random.default_rng(0).uniform(0.1, 10, (len(probe), 1)).astype(np.float32)
    probe_t, labels_t = torch.from_numpy(probe * scales), torch.from_numpy(probe_labels)
    scaled = cmc_scores(probe_t, labels_t, gallery, gallery_labels)
    assert scaled == cmc_scores(probe, probe_labels, gallery, gallery_labels)


def test_ranking_runs_on_the_cpu_in_float64_whatever_device_embedded(tmp_path, face_jpegs, monkeypatch):
    """`identify --device D` embeds on D and ranks on the CPU (before, the float64 products ran on D, which on
    most GPUs computes float64 at 1/32-1/64 of the float32 rate): the ranking takes no device, every similarity
    product is a float64 product of CPU tensors, and the ranks are those of the float64 reference."""
    for function in (rank_gallery, cmc_scores):
        assert "device" not in inspect.signature(function).parameters
    products = []
    original = torch.Tensor.__matmul__

    def matmul(left, right):
        products.append((left.device.type, left.dtype, right.device.type, right.dtype))
        return original(left, right)

    probe, _, gallery, _ = random_problem(3)
    monkeypatch.setattr(torch.Tensor, "__matmul__", matmul)
    indices, scores = rank_gallery(torch.from_numpy(probe), torch.from_numpy(gallery), k=10, chunk_size=16)
    monkeypatch.undo()
    assert products and set(products) == {("cpu", torch.float64, "cpu", torch.float64)}
    order, reference = brute_force_order(probe, gallery)
    np.testing.assert_array_equal(indices, order[:, :10])
    np.testing.assert_array_equal(scores, reference[:, :10])
    # The command passes its --device to the embedding only.
    calls = []
    ranking = fskd.evaluation.identification.cmc_scores
    monkeypatch.setattr(fskd.evaluation.identification, "cmc_scores",
                        lambda *args, **kwargs: calls.append(kwargs) or ranking(*args, **kwargs))
    checkpoint = _two_person_folder(tmp_path, face_jpegs)
    assert cli_main(["identify", "--ckpt", str(checkpoint), "--root", str(tmp_path / "faces"), "--ranks", "1",
                     "--device", "cpu"]) == 0
    assert len(calls) == 1 and "device" not in calls[0]


def test_cmc_rejects_bad_input():
    probe = np.ones((3, 4), dtype=np.float32)
    gallery = np.ones((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="probe features have 4 dimensions, gallery 3"):
        cmc_scores(probe, [0, 1, 2], gallery[:, :3], [0] * 5)
    with pytest.raises(ValueError, match="gallery_labels must be a 1-D array of 5 labels"):
        cmc_scores(probe, [0, 1, 2], gallery, [0] * 4)
    with pytest.raises(ValueError, match="integer labels"):
        cmc_scores(probe, [0.0, 1.0, 2.0], gallery, [0] * 5)
    bad = probe.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="probe contains NaN"):
        cmc_scores(bad, [0, 1, 2], gallery, [0] * 5)
    with pytest.raises(ValueError, match="ranks must be positive"):
        cmc_scores(probe, [0, 1, 2], gallery, [0] * 5, ranks=(0, 1))
    with pytest.raises(ValueError, match="non-empty"):
        cmc_scores(probe[:0], [], gallery, [0] * 5)


# ---------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("distractor_folder", ["Gallery_Distractor", "Gallery_Disctractor"])
def test_load_tinyface_layout(tmp_path, distractor_folder):
    for name in ("12_1.jpg", "3_1.jpg", "3_2.JPG"):
        touch(tmp_path / "Probe" / name)
    for name in ("3_0.jpg", "12_0.png"):
        touch(tmp_path / "Gallery_Match" / name)
    for name in ("7_0.jpg", "x.jpg", "5000_9.jpeg"):
        touch(tmp_path / distractor_folder / name)
    touch(tmp_path / "Probe" / "notes.txt")
    probes, probe_labels, gallery, gallery_labels = load_tinyface_layout(tmp_path)
    assert [p.name for p in probes] == ["12_1.jpg", "3_1.jpg", "3_2.JPG"]
    assert probe_labels.tolist() == [12, 3, 3]
    assert [p.relative_to(tmp_path).as_posix() for p in gallery] == [
        "Gallery_Match/12_0.png", "Gallery_Match/3_0.jpg",
        f"{distractor_folder}/5000_9.jpeg", f"{distractor_folder}/7_0.jpg", f"{distractor_folder}/x.jpg"]
    assert gallery_labels.tolist() == [12, 3, DISTRACTOR_LABEL, DISTRACTOR_LABEL, DISTRACTOR_LABEL]


def test_load_tinyface_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="identification folder not found"):
        load_tinyface_layout(tmp_path / "nowhere")
    touch(tmp_path / "Probe" / "1_0.jpg")
    touch(tmp_path / "Gallery_Match" / "1_1.jpg")
    with pytest.raises(DataFormatError, match="missing folder Gallery_Distractor or Gallery_Disctractor"):
        load_tinyface_layout(tmp_path)
    (tmp_path / "Gallery_Distractor").mkdir()
    with pytest.raises(DataFormatError, match="Gallery_Distractor: no images"):
        load_tinyface_layout(tmp_path)
    touch(tmp_path / "Gallery_Distractor" / "9_0.jpg")
    touch(tmp_path / "Probe" / "abc_0.jpg")
    with pytest.raises(DataFormatError, match=r"abc_0\.jpg: file name must start with an integer.*'abc'"):
        load_tinyface_layout(tmp_path)


def test_split_identity_folder(tmp_path):
    for identity, count in (("bob", 3), ("alice", 4), ("carol", 1)):
        for n in range(count):
            touch(tmp_path / identity / f"{n:02d}.jpg")
    probes, probe_labels, gallery, gallery_labels = split_identity_folder(tmp_path, gallery_per_identity=1)
    names = lambda paths: [p.relative_to(tmp_path).as_posix() for p in paths]  # noqa: E731
    assert names(gallery) == ["alice/00.jpg", "bob/00.jpg", "carol/00.jpg"]
    assert gallery_labels.tolist() == [0, 1, 2]
    assert names(probes) == ["alice/01.jpg", "alice/02.jpg", "alice/03.jpg", "bob/01.jpg", "bob/02.jpg"]
    assert probe_labels.tolist() == [0, 0, 0, 1, 1]

    two = split_identity_folder(tmp_path, gallery_per_identity=2, seed=3)
    assert names(two[2]) == names(split_identity_folder(tmp_path, gallery_per_identity=2, seed=3)[2])
    assert len(two[2]) == 5 and len(two[0]) == 3
    assert sorted(names(two[0] + two[2])) == sorted(names(probes + gallery))
    seeded = {tuple(names(split_identity_folder(tmp_path, 2, seed=s)[2])) for s in range(6)}
    assert len(seeded) > 1  # the seed changes the choice

    with pytest.raises(DataFormatError, match="no probes"):
        split_identity_folder(tmp_path, gallery_per_identity=4)
    with pytest.raises(DataFormatError, match="no identity sub-folders"):
        split_identity_folder(tmp_path / "carol")


# ---------------------------------------------------------------------------------------------------------
# Embedding extraction
# ---------------------------------------------------------------------------------------------------------


def tiny_backbone(seed: int = 0, embedding_size: int = 16):
    torch.manual_seed(seed)
    backbone = create_backbone("iresnet18", width=0.125, embedding_size=embedding_size)
    # Non-trivial BN statistics, so that eval mode differs from train mode.
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return backbone


@pytest.fixture(scope="module")
def face_jpegs() -> list[bytes]:
    return [render_face_jpeg(0, TINYFACE_ID_BASE + i, i % 2) for i in range(5)]


def _two_person_folder(tmp_path, face_jpegs) -> Path:
    """``tmp_path/faces/person{0,1}/{0,1}.jpg`` (the folder layout of `fskd identify`) and a tiny checkpoint."""
    for identity in range(2):
        for n in range(2):
            path = tmp_path / "faces" / f"person{identity}" / f"{n}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(face_jpegs[2 * identity + n])
    return save_checkpoint(tiny_backbone(3), tmp_path / "tiny.ckpt")


def test_embed_images_matches_manual_computation(tmp_path, face_jpegs):
    backbone = tiny_backbone().train()
    paths = []
    for i, jpeg in enumerate(face_jpegs):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(jpeg)
    features = embed_images(backbone, paths, batch_size=2, resolution=20, interpolation="bilinear")
    assert backbone.training  # restored
    images = torch.stack([decode_face(j, "test") for j in face_jpegs])
    degraded = degrade_fixed(normalize(images), 20, "bilinear")
    with torch.no_grad():
        backbone.eval()
        fused = (backbone(degraded).embedding + backbone(torch.flip(degraded, dims=(3,))).embedding) / 2
    expected = torch.nn.functional.normalize(fused, dim=1).numpy()
    assert features.shape == (5, 16) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-6)
    # Bytes and paths give the same rows; the batch size does not change them.
    np.testing.assert_allclose(embed_images(backbone, face_jpegs, batch_size=5, resolution=20,
                                            interpolation="bilinear"), features, atol=2e-5)


def test_embed_images_options(face_jpegs):
    backbone = tiny_backbone(1)
    plain = embed_images(backbone, face_jpegs[:3], flip=False)
    images = normalize(torch.stack([decode_face(j, "test") for j in face_jpegs[:3]]))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(backbone.eval()(images).embedding, dim=1).numpy()
    np.testing.assert_allclose(plain, expected, atol=2e-5)
    concat = embed_images(backbone, face_jpegs[:3], fusion="concat")
    assert concat.shape == (3, 32)
    # The first half is the unflipped feature, up to scale.
    first_half = concat[:, :16] / np.linalg.norm(concat[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(first_half, plain, atol=2e-5)
    with pytest.raises(ValueError, match="unknown fusion"):
        embed_images(backbone, face_jpegs, fusion="sum")
    with pytest.raises(ValueError, match="no images"):
        embed_images(backbone, [])
    with pytest.raises(DataFormatError, match="cannot decode image"):
        embed_images(backbone, [b"not a jpeg"])


# ---------------------------------------------------------------------------------------------------------
# synth-tinyface and identify, end to end
# ---------------------------------------------------------------------------------------------------------


def save_checkpoint(backbone, path: Path) -> Path:
    """A checkpoint in the shape of a FaceRecognitionModule's, built by hand (load_backbone accepts it)."""
    hyper_parameters = {"backbone": "iresnet18", "mode": backbone.mode, "neck": backbone.neck,
                        "width": backbone.width, "embedding_size": backbone.embedding_size, "dropout": 0.0,
                        "head": "cosface", "head_kwargs": {}, "num_classes": 10}
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hyper_parameters}, path)
    return path


def test_write_tinyface_layout_files(tmp_path):
    summary = write_tinyface_layout(tmp_path, identities=3, probes_per_identity=2, gallery_per_identity=1,
                                    distractors=2, seed=5, probe_resolution=16)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert files == ["Gallery_Distractor/3_0.jpg", "Gallery_Distractor/4_0.jpg",
                     "Gallery_Match/0_0.jpg", "Gallery_Match/1_0.jpg", "Gallery_Match/2_0.jpg",
                     "Probe/0_0.jpg", "Probe/0_1.jpg", "Probe/1_0.jpg", "Probe/1_1.jpg",
                     "Probe/2_0.jpg", "Probe/2_1.jpg"]
    assert summary["probes"] == 6 and summary["distractors"] == 2
    # The gallery is the full-resolution render of sample 0; probes are low-resolution (smooth: little
    # high-frequency energy compared with the gallery).
    assert (tmp_path / "Gallery_Match/1_0.jpg").read_bytes() == render_face_jpeg(5, TINYFACE_ID_BASE + 1, 0)

    def roughness(path: Path) -> float:
        image = decode_face(path.read_bytes(), path).float()
        return float((image[:, :, 1:] - image[:, :, :-1]).abs().mean())

    assert roughness(tmp_path / "Probe/1_0.jpg") < 0.6 * roughness(tmp_path / "Gallery_Match/1_0.jpg")


def test_identify_and_synth_tinyface_cli_end_to_end(tmp_path, capsys):
    root = tmp_path / "tinyface"
    assert cli_main(["synth-tinyface", "--out", str(root), "--identities", "3", "--probes", "2", "--gallery",
                     "1", "--distractors", "2", "--seed", "1"]) == 0
    backbone = tiny_backbone(2)
    checkpoint = save_checkpoint(backbone, tmp_path / "tiny.ckpt")
    csv_path = tmp_path / "out" / "results.csv"
    assert cli_main(["identify", "--ckpt", str(checkpoint), "--root", str(root), "--batch-size", "5",
                     "--resolution", "28", "--out", str(csv_path)]) == 0
    printed = capsys.readouterr().out
    assert "6 probes, 5 gallery items (2 distractors)" in printed

    probes, probe_labels, gallery, gallery_labels = load_tinyface_layout(root)
    expected = cmc_scores(embed_images(backbone, probes, resolution=28), probe_labels,
                          embed_images(backbone, gallery, resolution=28), gallery_labels)
    with csv_path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["rank", "accuracy"]
    assert rows[1:3] == [["1", f"{expected[1]:.6f}"], ["5", f"{expected[5]:.6f}"]]
    # 5 gallery items: rank 5 counts every item (every probe's identity is within it); ranks 10 and 20 do not
    # exist and are written as n/a, with a note, instead of a perfect score.
    assert expected[5] == 1.0 and expected[10] is None and expected[20] is None
    assert rows[3:] == [["10", "n/a"], ["20", "n/a"]]
    assert f"rank-1: {100 * expected[1]:.2f}%" in printed and "rank-5: 100.00%\n" in printed
    assert "rank-10: n/a\nrank-20: n/a\n" in printed
    assert ("note: rank 10, 20 not applicable: the gallery has only 5 items (a top-k longer than the gallery "
            "would count every probe as found)") in printed


def test_identify_cli_folder_layout(tmp_path, capsys, face_jpegs):
    checkpoint = _two_person_folder(tmp_path, face_jpegs)
    assert cli_main(["identify", "--ckpt", str(checkpoint), "--root", str(tmp_path / "faces"), "--ranks", "1",
                     "2", "--no-flip"]) == 0
    printed = capsys.readouterr().out
    assert "(folder): 2 probes, 2 gallery items (0 distractors)" in printed
    assert "rank-2: 100.00%" in printed


# ---------------------------------------------------------------------------------------------------------
# Grey, non-112 identity folders (PGM; docs/formats.md section 5)
# ---------------------------------------------------------------------------------------------------------

REAL_ORL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-faces" / "orl_faces"


def test_identify_cli_folder_of_grey_pgm_faces(tmp_path, capsys, face_jpegs):
    # Grey 92x112 PGMs (ORL's shape and format), written from the synthetic faces: the folder layout lists
    # them (also as .PGM) and embeds them padded to 112x112, as any other folder image.
    for identity in range(2):
        for n in range(3):
            rgb = decode_face(face_jpegs[(2 * identity + n) % len(face_jpegs)], "face")
            grey = rgb.float().mean(dim=0)[:, 10:102].round().to(torch.uint8).numpy()
            path = tmp_path / "faces" / f"s{identity + 1}" / f"{n + 1}.{'PGM' if n == 2 else 'pgm'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"P5\n92 112\n255\n" + grey.tobytes())
    checkpoint = save_checkpoint(tiny_backbone(4), tmp_path / "tiny.ckpt")
    assert cli_main(["identify", "--ckpt", str(checkpoint), "--root", str(tmp_path / "faces"), "--layout",
                     "folder", "--ranks", "1", "2", "--out", str(tmp_path / "cmc.csv")]) == 0
    printed = capsys.readouterr().out
    assert "(folder): 4 probes, 2 gallery items (0 distractors)" in printed
    assert "rank-1: " in printed and "rank-2: 100.00%" in printed


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ORL.is_dir(), reason=f"real ORL faces absent: {REAL_ORL}")
def test_identify_cli_on_real_orl_faces_runs(tiny_teacher_ckpt, tmp_path, capsys):
    # Any checkpoint must run on the real grey 92x112 PGM folder; the accuracy of a 6-step synthetic teacher
    # means nothing (that needs a real pretrained network), so only the counts and the report are checked.
    csv_path = tmp_path / "orl.csv"
    assert cli_main(["identify", "--layout", "folder", "--root", str(REAL_ORL), "--ckpt", str(tiny_teacher_ckpt),
                     "--gallery-per-identity", "1", "--out", str(csv_path)]) == 0
    printed = capsys.readouterr().out
    assert "(folder): 360 probes, 40 gallery items (0 distractors)" in printed
    rank1 = [line for line in printed.splitlines() if line.startswith("rank-1: ")]
    assert len(rank1) == 1 and 0.0 <= float(rank1[0].removeprefix("rank-1: ").rstrip("%")) <= 100.0
    with csv_path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["rank", "accuracy"] and [int(row[0]) for row in rows[1:]] == [1, 5, 10, 20]

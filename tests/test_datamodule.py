"""FaceDataModule and the datasets under it: both layouts, views, errors naming file and record."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fskd.data.binfile import load_bin
from fskd.data.datamodule import FaceDataModule
from fskd.data.datasets import (
    FolderFaceDataset,
    RecordFaceDataset,
    open_training_set,
    open_verification_set,
)
from fskd.data.degrade import degrade_fixed
from fskd.data.errors import DataFormatError
from fskd.data.folder import prepare, read_pair_list
from fskd.data.images import normalize
from fskd.data.recordio import write_face_records
from tests.conftest import run_cli


def _batch(module: FaceDataModule) -> dict[str, torch.Tensor]:
    return next(iter(module.train_dataloader()))


def test_num_classes_from_property_and_from_records(synth_root: Path, tmp_path: Path) -> None:
    assert FaceDataModule(str(synth_root)).num_classes == 50
    copy = tmp_path / "noprop"
    shutil.copytree(synth_root, copy)
    (copy / "property").unlink()
    assert FaceDataModule(str(copy)).num_classes == 50


def test_training_views_share_the_flip_and_degrade_exactly(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), batch_size=16, num_workers=0, train_resolution=14)
    module.setup("fit")
    raw = _batch(module)
    views = module.on_after_batch_transfer(dict(raw), 0)
    assert set(views) == {"hr", "lr", "label"}
    assert views["label"].dtype == torch.int64
    plain = normalize(raw["image"])
    flipped = [bool(torch.equal(views["hr"][i], plain[i].flip(-1))) for i in range(16)]
    for i in range(16):
        assert flipped[i] or torch.equal(views["hr"][i], plain[i])
    assert 0 < sum(flipped) < 16  # both outcomes of the coin occur in a batch of 16
    # The LR view is the degradation of the same (flipped) HR image.
    torch.testing.assert_close(views["lr"], degrade_fixed(views["hr"], 14), rtol=0, atol=0)


def test_teacher_policy_lr_is_hr(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), batch_size=8, num_workers=0, train_resolution=112)
    module.setup("fit")
    views = module.on_after_batch_transfer(_batch(module), 0)
    assert views["lr"] is views["hr"]


def test_flip_and_degradation_reproducible_from_seed(synth_root: Path) -> None:
    outputs = []
    for _ in range(2):
        module = FaceDataModule(str(synth_root), batch_size=8, num_workers=0, train_resolution="multi",
                                train_interpolation="random", seed=5)
        module.setup("fit")
        images = torch.stack([module.train_set[i]["image"] for i in range(8)])
        outputs.append(module.training_views(images, torch.zeros(8, dtype=torch.long))["lr"])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_evaluation_specs_and_views(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), val_resolutions=[112, 14, "cross14"], num_workers=0)
    module.setup("validate")
    assert [(s.name, s.tag) for s in module.val_specs] == [
        (name, tag) for name in ("agedb_30", "lfw", "cfp_fp") for tag in ("112", "14", "cross14")]
    _, issame = load_bin(synth_root / "agedb_30.bin")
    np.testing.assert_array_equal(module.val_specs[0].issame, issame)
    loaders = module.val_dataloader()
    assert len(loaders) == 9
    raw = next(iter(loaders[1]))
    x = normalize(raw["image"])
    views = module.on_after_batch_transfer(dict(raw), 1)
    torch.testing.assert_close(views["image"], degrade_fixed(x, 14), rtol=0, atol=0)
    torch.testing.assert_close(views["flipped"], views["image"].flip(-1), rtol=0, atol=0)
    cross = module.on_after_batch_transfer(dict(raw), 2)["image"]
    even = raw["index"] % 2 == 0
    torch.testing.assert_close(cross[even], x[even], rtol=0, atol=0)
    torch.testing.assert_close(cross[~even], degrade_fixed(x, 14)[~even], rtol=0, atol=0)


def test_missing_requested_verification_set_fails(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), val_sets=["calfw"])
    with pytest.raises(FileNotFoundError, match="calfw"):
        module.setup("validate")


def test_global_batch_is_split_over_processes(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), batch_size=64)
    module.trainer = SimpleNamespace(world_size=2, global_rank=0)
    assert module.per_device_batch_size() == 32
    module.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ValueError, match="not divisible by 3"):
        module.per_device_batch_size()


def test_out_of_range_label_names_file_and_record(synth_root: Path) -> None:
    dataset = RecordFaceDataset(synth_root / "train.rec", synth_root / "train.idx", num_classes=10)
    last = len(dataset) - 1
    with pytest.raises(DataFormatError, match=r"train\.rec \(record 400\): label 49 outside 0\.\.9"):
        dataset[last]


def test_undecodable_image_names_file_and_record(tmp_path: Path) -> None:
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    write_face_records(rec, idx, [(0, b"\xff\xd8\xff\xe0 not a jpeg"), (0, b"")])
    dataset = RecordFaceDataset(rec, idx)
    with pytest.raises(DataFormatError, match=r"train\.rec \(record 1\): cannot decode image"):
        dataset[0]
    with pytest.raises(DataFormatError, match=r"train\.rec \(record 2\): empty image payload"):
        dataset[1]


def test_corrupt_record_in_a_worker_reports_file_and_key(tmp_path: Path, synth_root: Path) -> None:
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    shutil.copy(synth_root / "train.idx", idx)
    data = bytearray((synth_root / "train.rec").read_bytes())
    offset = dict(line.split("\t") for line in idx.read_text().splitlines())["400"]
    start = int(offset) + 8 + 24  # segment header + IRHeader: the JPEG's SOI marker
    data[start: start + 16] = bytes(16)
    rec.write_bytes(bytes(data))
    dataset = RecordFaceDataset(rec, idx, num_classes=50)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [len(dataset) - 1]), num_workers=1)
    with pytest.raises(DataFormatError, match=r"train\.rec \(record 400\): cannot decode image"):
        next(iter(loader))


def test_truncated_rec_is_refused_when_opened(tmp_path: Path, synth_root: Path) -> None:
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    shutil.copy(synth_root / "train.idx", idx)
    rec.write_bytes((synth_root / "train.rec").read_bytes()[:-300])
    with pytest.raises(DataFormatError, match=r"train\.idx \(record \d+\): line \d+: offset \d+ is past the end"):
        RecordFaceDataset(rec, idx)


def test_prepare_extracted_layout_matches_records(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "extracted"
    run_cli("prepare", "--source", str(synth_root), "--out", str(out))
    assert (out / "train.list").is_file() and (out / "property").is_file()
    lines = (out / "train.list").read_text().splitlines()
    assert lines[0] == "image/000000/00000001.jpg  0"  # the authors' two-space separator, relative path
    records = open_training_set(synth_root)
    folder = open_training_set(out)
    assert isinstance(folder, FolderFaceDataset) and isinstance(records, RecordFaceDataset)
    assert len(folder) == len(records) == 400 and folder.num_classes == 50
    for i in (0, 123, 399):
        assert folder[i]["label"] == records[i]["label"]
        assert torch.equal(folder[i]["image"], records[i]["image"])  # bytes copied verbatim, no re-encoding
    for name in ("agedb_30", "lfw", "cfp_fp"):
        paths, issame = read_pair_list(out, name)
        assert len(issame) == 200  # no first pair dropped (the authors' LFW header bug)
        from_bin = open_verification_set(synth_root, name)
        np.testing.assert_array_equal(issame, from_bin.issame)
        assert paths[0].read_bytes() == load_bin(synth_root / f"{name}.bin")[0][0]
        assert (out / "evaluation" / f"{name}.txt").read_text().splitlines()[0].startswith("00001.jpg 00002.jpg ")
    # The DataModule serves the extracted layout exactly like the records.
    module = FaceDataModule(str(out), num_workers=0, val_resolutions=[112])
    module.setup("fit")
    assert [s.name for s in module.val_specs] == ["agedb_30", "lfw", "cfp_fp"]


def test_train_list_written_elsewhere_is_resolved_under_root(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "extracted"
    prepare(synth_root, out, progress=False)
    text = (out / "train.list").read_text()
    (out / "train.list").write_text(text.replace("image/", "/home/someone/faces_webface_112x112/image/"))
    folder = FolderFaceDataset(out)
    assert folder.paths[0] == out / "image/000000/00000001.jpg"
    assert folder[0]["image"].shape == (3, 112, 112)


def test_bad_train_list_line_is_reported(tmp_path: Path) -> None:
    (tmp_path / "train.list").write_text("image/0/1.jpg  0\nimage/0/2.jpg\n")
    with pytest.raises(DataFormatError, match=r"train\.list: line 2"):
        FolderFaceDataset(tmp_path)

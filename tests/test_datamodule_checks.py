"""FaceDataModule's checks before the first step, and the bounds of its loaders (worker processes, prefetch)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

import fskd.data.datamodule as datamodule_module
from fskd.data.binfile import load_bin, save_bin
from fskd.data.datamodule import FaceDataModule
from fskd.data.datasets import FolderFaceDataset
from fskd.data.errors import DataFormatError
from fskd.data.folder import prepare
from fskd.data.recordio import FaceRecordFile, IndexedRecordWriter, IRHeader, pack
from fskd.data.sampler import ResumableSampler
from tests.helpers.reliability import checkpoint_path, fit, single_thread

SETS = ("agedb_30", "lfw", "cfp_fp")


def _trainer(**limits: object) -> SimpleNamespace:
    """The trainer attributes the DataModule reads at setup."""
    return SimpleNamespace(world_size=1, global_rank=0, fast_dev_run=False, **limits)


def _bins(source: Path, target: Path, names: dict[str, str]) -> Path:
    """``target`` holding copies of ``source``'s verification files, renamed by ``names`` (set -> file name)."""
    target.mkdir()
    for name, file_name in names.items():
        shutil.copy(source / f"{name}.bin", target / file_name)
    return target


@pytest.fixture
def extracted(synth_root: Path, tmp_path: Path) -> Path:
    """synth_root in the authors' extracted layout (training list and the lfw pair list)."""
    out = tmp_path / "extracted"
    prepare(synth_root, out, sets=["lfw"], progress=False)
    return out


# -- verification images decode at setup ----------------------------------------------------------------------
def test_corrupt_image_in_a_bin_fails_at_setup_naming_file_image_and_pair(synth_root: Path,
                                                                          tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    images, issame = load_bin(synth_root / "agedb_30.bin")
    corrupt = bytearray(images[17])
    corrupt[:16] = bytes(16)  # the JPEG's SOI marker and header gone
    images[17] = bytes(corrupt)
    save_bin(root / "agedb_30.bin", images, issame)
    module = FaceDataModule(str(root), num_workers=0)
    with pytest.raises(DataFormatError, match=rf"^{root / 'agedb_30.bin'}: image 17 \(pair 8\): cannot decode "
                                              rf"image \({len(corrupt)} bytes\)"):
        module.setup("validate")
    off = FaceDataModule(str(root), num_workers=0)
    off.trainer = _trainer(limit_val_batches=0)
    off.setup("validate")  # validation off: the images are not decoded


def test_missing_or_corrupt_file_of_a_pair_list_fails_at_setup_naming_list_and_line(extracted: Path) -> None:
    pair_list = extracted / "evaluation" / "lfw.txt"
    pair_list.write_text("\n" + pair_list.read_text())  # a blank first line: pair 8 is on line 10
    image = extracted / "evaluation" / "lfw" / "00018.jpg"  # image 17 (1-based file names), pair 8
    payload = image.read_bytes()
    image.unlink()
    with pytest.raises(DataFormatError, match=rf"^{pair_list}: line 10: image 17 \(pair 8\) {image} does not "
                                              r"exist \(1 of 400 listed images are missing\)$"):
        FaceDataModule(str(extracted), num_workers=0).setup("validate")
    image.write_bytes(payload[:40])  # present but truncated
    with pytest.raises(DataFormatError, match=rf"^{image}: image 17 \(pair 8, line 10 of {pair_list}\): cannot "
                                              r"decode image \(40 bytes\)"):
        FaceDataModule(str(extracted), num_workers=0).setup("validate")


def test_missing_file_of_the_training_list_fails_when_opened_naming_line(extracted: Path) -> None:
    second = (extracted / "train.list").read_text().splitlines()[1].split()[0]
    (extracted / second).unlink()
    with pytest.raises(DataFormatError, match=rf"^{extracted / 'train.list'}: line 2: listed image "
                                              rf"{extracted / second} does not exist \(1 of 400 listed images are "
                                              r"missing\)$"):
        FolderFaceDataset(extracted)
    with pytest.raises(DataFormatError, match=r"train\.list: line 2: listed image"):
        FaceDataModule(str(extracted), num_workers=0).setup("fit")


# -- the sets found, and mis-cased names ----------------------------------------------------------------------
def test_sets_found_are_listed_once(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _bins(synth_root, tmp_path / "data", {name: f"{name}.bin" for name in SETS})
    shutil.copy(synth_root / "lfw.bin", root / "calfw.bin")
    lines: list[str] = []
    monkeypatch.setattr(datamodule_module, "rank_zero_info", lines.append)
    module = FaceDataModule(str(root), num_workers=0, val_resolutions=[112, "cross14"])
    module.setup("validate")
    module.setup("test")
    assert lines == [f"verification sets in {root}: agedb_30 (agedb_30.bin, 200 pairs), lfw (lfw.bin, 200 pairs), "
                     "cfp_fp (cfp_fp.bin, 200 pairs); resolutions: 112, cross14; not evaluated: calfw.bin (add "
                     "them to --data.val_sets)"]


@pytest.mark.parametrize("val_sets", [None, list(SETS)])
def test_a_miscased_set_is_an_error_naming_the_file_found(synth_root: Path, tmp_path: Path,
                                                          val_sets: list[str] | None) -> None:
    root = _bins(synth_root, tmp_path / "data", {"agedb_30": "agedb_30.bin", "lfw": "LFW.bin",
                                                 "cfp_fp": "cfp_fp.bin"})
    if (root / "lfw.bin").is_file():
        pytest.skip("case-insensitive file system: LFW.bin is lfw.bin here")
    module = FaceDataModule(str(root), num_workers=0, val_sets=val_sets)
    with pytest.raises(FileNotFoundError, match=rf"^{root}: verification set 'lfw' not found \(expected lfw\.bin "
                                                r"or evaluation/lfw\.txt\); found LFW\.bin, which differs only in "
                                                r"case: rename it to lfw\.bin \(names are case-sensitive\)$"):
        module.setup("validate")


# -- suspicious inputs, warned once with their count ----------------------------------------------------------
def _tiny_jpeg(height: int, width: int) -> bytes:
    return encode_jpeg(torch.full((3, height, width), 128, dtype=torch.uint8)).numpy().tobytes()


def _data_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fskd.data.datamodule" and r.levelname == "WARNING"]


def test_small_verification_images_are_warned_once_with_count_and_first(synth_root: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "data"
    root.mkdir()
    images, issame = load_bin(synth_root / "lfw.bin")
    images[3], images[8] = _tiny_jpeg(1, 1), _tiny_jpeg(20, 40)
    save_bin(root / "lfw.bin", images, issame)
    module = FaceDataModule(str(root), num_workers=0, val_resolutions=[112, 14])
    with caplog.at_level(logging.WARNING, logger="fskd.data.datamodule"):
        module.setup("validate")
        module.setup("test")
    assert _data_warnings(caplog) == [
        f"{root / 'lfw.bin'}: 2 of the 400 images of verification set lfw are smaller than 32 pixels on a side "
        "before resizing (the first: image 3 (pair 1), 1x1); each is scaled up to 112x112: broken crops or "
        "placeholders?"]
    assert module.val_datasets[0][3]["image"].shape == (3, 112, 112)  # still evaluated, as before


def test_a_verification_set_without_pairs_is_left_out_with_a_warning(synth_root: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    root = _bins(synth_root, tmp_path / "data", {"agedb_30": "agedb_30.bin"})
    save_bin(root / "lfw.bin", [], [])
    with caplog.at_level(logging.WARNING, logger="fskd.data.datamodule"):
        module = FaceDataModule(str(root), num_workers=0, val_resolutions=[14])
        module.setup("validate")
        assert [spec.name for spec in module.val_specs] == ["agedb_30"]
        alone = FaceDataModule(str(root), num_workers=0, val_sets=["lfw"])
        alone.setup("validate")
        assert alone.val_specs == [] and alone.val_dataloader() == []
    assert _data_warnings(caplog) == [
        f"{root / 'lfw.bin'}: verification set lfw has no pairs: it is left out of validation",
        f"{root / 'lfw.bin'}: verification set lfw has no pairs: it is left out of validation",
        f"no verification set with pairs in {root}: validation is skipped"]


def test_small_training_images_are_warned_once_with_count_and_first(tiny_root: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Counted on the host as batches go by, over the first epoch (3 batches of 16: the 40 images, 8 of them
    twice), and warned once, naming the first small one met; later epochs add nothing."""
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    faces = FaceRecordFile(data / "train.rec", data / "train.idx")
    records = [faces.read_image(i) for i in range(len(faces))]
    faces.close()
    small = {5: (1, 1), 22: (24, 100)}
    with IndexedRecordWriter(data / "train.rec", data / "train.idx") as writer:
        for key, (label, payload) in enumerate(records, start=1):
            if key - 1 in small:
                payload = _tiny_jpeg(*small[key - 1])
            writer.write(key, pack(IRHeader(0, float(label), key, 0), payload))
    with single_thread(), caplog.at_level(logging.WARNING, logger="fskd.data.datamodule"):
        cli = fit(tmp_path, "--data.root", str(data), "--trainer.max_steps", "7", "--trainer.limit_val_batches", "0")
    order = ResumableSampler(range(40), 16, seed=0).global_order(0).tolist()
    first = next(index for index in order if index in small)
    count = sum(index in small for index in order)
    assert _data_warnings(caplog) == [
        f"{count} of the 48 training images read in the first epoch are smaller than 32 pixels on a side before "
        f"resizing (the first: {data / 'train.rec'} (record {first + 1}), {small[first][0]}x{small[first][1]}); "
        "each is scaled up to 112x112: broken crops or placeholders?"]
    assert cli.trainer.global_step == 7


def test_under_ddp_every_process_warns_about_the_small_images_it_read(tiny_root: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # Each process reads 1/W of the images: a warning from rank 0 alone would miss those of the others.
    module = FaceDataModule(str(tiny_root), num_workers=0)
    module.trainer = _trainer(limit_val_batches=0)
    module.setup("fit")
    module.trainer = SimpleNamespace(world_size=2, global_rank=1, fast_dev_run=False, limit_val_batches=0)
    sides = np.array([8, 112, 112])
    module._count_small_images(sides, sides, sides, np.array([3, 4, 5]))
    with caplog.at_level(logging.WARNING, logger="fskd.data.datamodule"):
        module._report_small_images("so far")
    assert _data_warnings(caplog) == [
        f"1 of the 3 training images read so far by process 1 of 2 are smaller than 32 pixels on a side before "
        f"resizing (the first: {tiny_root / 'train.rec'} (record 4), 8x8); each is scaled up to 112x112: broken "
        "crops or placeholders?"]


# -- evaluation that Lightning would run but could not complete -----------------------------------------------
def test_empty_val_resolutions_is_refused_unless_validation_is_off(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), num_workers=0, val_resolutions=[])
    module.trainer = _trainer(limit_val_batches=1.0)
    with pytest.raises(ValueError, match=r"^--data\.val_resolutions is empty, so there is nothing to evaluate; "
                                         r"pass --trainer\.limit_val_batches 0 to run without evaluation$"):
        module.setup("fit")
    module = FaceDataModule(str(synth_root), num_workers=0, val_resolutions=[])
    module.trainer = _trainer(limit_val_batches=0)
    module.setup("fit")
    assert module.val_dataloader() == []


@pytest.mark.parametrize(("limit", "kept"), [(1, 1), (0.5, 2), (3, 3)])
def test_a_batch_limit_that_cuts_a_set_short_is_refused_at_setup(synth_root: Path, limit: float,
                                                                  kept: int) -> None:
    module = FaceDataModule(str(synth_root), num_workers=0, val_sets=["lfw"], val_batch_size=100)
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=limit)
    with pytest.raises(ValueError, match=rf"^--trainer\.limit_val_batches {limit} would evaluate {kept} of the 4 "
                                         r"batches of verification set lfw per process, and its 10-fold protocol "
                                         r"needs every pair: pass --trainer\.limit_val_batches 0 to run without "
                                         r"evaluation, or 1\.0 for the whole sets$"):
        module.setup("validate")


@pytest.mark.parametrize("limit", [0, 4, 1.0])
def test_a_batch_limit_that_keeps_whole_sets_is_accepted(synth_root: Path, limit: float) -> None:
    module = FaceDataModule(str(synth_root), num_workers=0, val_sets=["lfw"], val_batch_size=100)
    module.trainer = _trainer(limit_val_batches=limit)
    module.setup("validate")
    assert [spec.tag for spec in module.val_specs] == ["112", "56", "28", "14"]


def test_the_test_limit_counts_per_process_and_fast_dev_run_is_named(synth_root: Path) -> None:
    module = FaceDataModule(str(synth_root), num_workers=0, val_sets=["lfw"], val_batch_size=100)
    module.trainer = SimpleNamespace(world_size=2, global_rank=0, fast_dev_run=1, limit_test_batches=1)
    with pytest.raises(ValueError, match=r"^--trainer\.limit_test_batches 1 \(set by --trainer\.fast_dev_run\) "
                                         r"would evaluate 1 of the 2 batches of verification set lfw per process"):
        module.setup("test")


def test_a_cutting_limit_stops_the_fit_before_any_step(tiny_root: Path, tmp_path: Path) -> None:
    with single_thread(), pytest.raises(ValueError, match=r"^--trainer\.limit_val_batches 1 would evaluate 1 of "
                                                           r"the 4 batches of verification set lfw per process"):
        fit(tmp_path, "--data.root", str(tiny_root), "--data.val_batch_size", "10", "--trainer.limit_val_batches",
            "1", "--trainer.max_steps", "2")
    assert not checkpoint_path(tmp_path).exists()


# -- loader processes -----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # no worker starts: the loaders are inspected
def test_only_the_training_loader_keeps_workers_and_evaluation_loaders_are_small(synth_root: Path) -> None:
    """The real config's loaders: 8 workers, 3 sets x 4 resolutions. Before: 13 persistent loaders of 8
    workers each (104 processes held); now 8 held, plus 2 while one evaluation loader is iterated."""
    module = FaceDataModule(str(synth_root), num_workers=8)
    module.setup("fit")
    train = module.train_dataloader()
    assert (train.num_workers, train.persistent_workers, train.prefetch_factor) == (8, True, 4)
    for loaders in (module.val_dataloader(), module.test_dataloader(), module.predict_dataloader()):
        assert len(loaders) == 12
        assert {(loader.num_workers, loader.persistent_workers, loader.prefetch_factor) for loader in loaders} == {
            (2, False, 2)}
    held = sum(loader.num_workers for loader in [train, *module.val_dataloader()] if loader.persistent_workers)
    assert held == 8
    wide = FaceDataModule(str(synth_root), num_workers=8, val_num_workers=6)
    wide.setup("validate")
    assert {(loader.num_workers, loader.persistent_workers) for loader in wide.val_dataloader()} == {(6, False)}
    none = FaceDataModule(str(synth_root), num_workers=0)
    none.setup("validate")
    assert {(loader.num_workers, loader.prefetch_factor) for loader in none.val_dataloader()} == {(0, None)}
    with pytest.raises(ValueError, match=r"^val_num_workers must be >= 0, got -1$"):
        FaceDataModule(str(synth_root), val_num_workers=-1)


def test_fewer_images_to_predict_than_processes_is_refused(synth_root: Path, tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    images, _ = load_bin(synth_root / "lfw.bin")
    for index in range(3):
        (faces / f"{index}.jpg").write_bytes(images[index])
    module = FaceDataModule(str(synth_root), num_workers=0, predict_source=str(faces))
    module.trainer = SimpleNamespace(world_size=4, global_rank=3, predicting=True)
    module.setup("predict")
    assert module.val_specs == []  # embedding a folder: the verification sets are not read
    with pytest.raises(ValueError, match=rf"^{faces}: 3 image\(s\) to embed over 4 processes, and every process "
                                         r"needs at least one: run at most 3 processes$"):
        module.predict_dataloader()
    module.trainer = SimpleNamespace(world_size=3, global_rank=2, predicting=True)
    assert len(module.predict_dataloader().dataset) == 3

"""Faults and hostile input through the real command line: each stops with an error naming its cause, before
training where it can be known then, and never leaves a corrupt or code-executing checkpoint behind."""

from __future__ import annotations

import datetime
import errno
import os
import pickle
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

import fskd.models.loading
from fskd.callbacks import PeerFailureWatch
from fskd.callbacks.failures import raised_on_every_process
from fskd.callbacks.resume import exception_prefix
from fskd.checkpoint_io import SafeCheckpointIO
from fskd.commands.lightning import lightning_main
from fskd.data.errors import DataFormatError
from fskd.data.recordio import FaceRecordFile, IndexedRecordWriter, IRHeader, pack
from fskd.models.loading import load_backbone
from fskd.systems import DistillModule, TeacherModule
from fskd.systems.base import NonFiniteLossError
from tests.helpers.reliability import (
    STUDENT_CONFIG,
    TEACHER_CONFIG,
    TINY,
    NaNAtStep,
    checkpoint_path,
    config_args,
    fit,
    recorded_steps,
    single_thread,
    working_directory,
)


@pytest.fixture
def data_copy(tiny_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny_root, copy)
    return copy


def _teacher_ckpt(path: Path, width: float = 0.125) -> Path:
    """A TeacherModule checkpoint in Lightning's layout, as DistillModule reads it."""
    teacher = TeacherModule(num_classes=10, backbone="iresnet18", width=width, embedding_size=32)
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, path)
    return path


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- non-finite loss -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("system", ["teacher", "student"])
def test_nonfinite_loss_stops_naming_step_and_terms_with_the_good_weights_saved(
        system: str, tiny_root: Path, tmp_path: Path) -> None:
    config, extra, terms = TEACHER_CONFIG, [], r"ce=nan"
    if system == "student":
        config, terms = STUDENT_CONFIG, r"ce=nan, distill=nan, loss=nan"
        extra = ["--model.teacher_ckpt", str(_teacher_ckpt(tmp_path / "teacher.ckpt"))]
    with working_directory(tmp_path), single_thread():
        cli = lightning_main([*config_args(config), *TINY, "--data.root", str(tiny_root), *extra,
                              "--trainer.max_steps", "8"], run=False)
        poison = NaNAtStep(step=5)  # poisons the input: the forward pass also feeds NaN into BN statistics
        cli.trainer.callbacks.insert(0, poison)
        expected = r"non-finite loss at optimizer step 5 \(epoch 1, batch 1 of the epoch, process 0\): "
        with pytest.raises(FloatingPointError, match=expected + terms + " .*after step 4"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = torch.load(checkpoint_path(tmp_path, config), weights_only=True)
    assert saved["global_step"] == 4
    good = poison.weights[4]
    assert saved["state_dict"].keys() == {k for k in good if not k.startswith("teacher.")}
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, good[key]), key  # weights and running statistics from before step 5
    # Named after its cause, beside last.ckpt (the same state, which --ckpt_path last resumes).
    assert (checkpoint_path(tmp_path, config, "exception-epoch=1-step=4.ckpt")).is_file()
    assert not (checkpoint_path(tmp_path, config, "epoch=1-step=4.ckpt")).exists()
    exception_state = torch.load(checkpoint_path(tmp_path, config, "exception-epoch=1-step=4.ckpt"),
                                 weights_only=True)
    assert exception_state["global_step"] == 4 and exception_state["state_dict"].keys() == saved["state_dict"].keys()


def test_nonfinite_loss_found_at_a_later_check_saves_the_state_of_the_check_before_it(tiny_root: Path,
                                                                                     tmp_path: Path) -> None:
    """With ``sync_every`` 4 the loss is read after steps 3 (validation, end of epoch), 4 and 6 (validation): the
    NaN of step 5 is found after step 6, when steps 5 and 6 have written NaN into the weights. The checkpoint
    written holds the state of the check after step 4 (weights, statistics, counters, data position), and no
    validation or checkpoint ran on the corrupted weights."""
    with working_directory(tmp_path), single_thread():
        cli = lightning_main([*config_args(TEACHER_CONFIG), *TINY, "--data.root", str(tiny_root),
                              "--trainer.max_steps", "8", "--model.sync_every", "4"], run=False)
        poison = NaNAtStep(step=5)
        cli.trainer.callbacks.insert(0, poison)
        expected = (r"non-finite loss at optimizer step 5 \(epoch 1, batch 1 of the epoch, process 0\): ce=nan "
                    r"\(a NaN/inf on any process stops all of them; found at the check after step 6, the loss being "
                    r"read every 4 steps \(--model.sync_every\)\)\. The checkpoint written on exit holds the state "
                    r"after step 4")
        with pytest.raises(NonFiniteLossError, match=expected):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert not all(torch.isfinite(v).all() for v in poison.weights[6].values() if v.is_floating_point())
    saved = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert saved["global_step"] == 4 and saved["FaceDataModule"]["position"] == {"epoch": 1, "consumed": 16,
                                                                                  "seed": 0, "size": 40}
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, poison.weights[4][key]), key
    exception_state = torch.load(checkpoint_path(tmp_path, name="exception-epoch=1-step=4.ckpt"), weights_only=True)
    assert exception_state["global_step"] == 4 and exception_state["optimizer_states"]
    assert sorted(p.name for p in checkpoint_path(tmp_path).parent.glob("*.ckpt")) == [
        "epoch=0-step=3.ckpt", "exception-epoch=1-step=4.ckpt", "last.ckpt"]


def test_nonfinite_loss_before_the_first_check_saves_nothing(tiny_root: Path, tmp_path: Path) -> None:
    """A NaN at step 1 with ``sync_every`` 4, found after step 3: no check had passed, so there is no good state
    of this fit to save, and none is written."""
    with working_directory(tmp_path), single_thread():
        cli = lightning_main([*config_args(TEACHER_CONFIG), *TINY, "--data.root", str(tiny_root),
                              "--trainer.max_steps", "8", "--model.sync_every", "4"], run=False)
        cli.trainer.callbacks.insert(0, NaNAtStep(step=1))
        with pytest.raises(NonFiniteLossError, match=r"optimizer step 1 .*found at the check after step 3.*No "
                                                     r"check had passed in this fit before it, so nothing is saved"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert list(checkpoint_path(tmp_path).parent.glob("*.ckpt")) == []


# -- an unwritable checkpoint folder -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["parent is a file", "read-only folder"])
def test_an_unwritable_checkpoint_folder_fails_before_the_first_step(how: str, tiny_root: Path,
                                                                    tmp_path: Path) -> None:
    """Found at setup, in one line naming the folder, instead of at the first checkpoint (2,000 steps into the
    real recipe). As root the mode bits do not stop a write, so the folder is tried by writing, not with
    ``os.access``; the read-only case needs a user that the mode bits stop."""
    if how == "parent is a file":
        (tmp_path / "blocked").write_text("a file where a folder should be")
        folder = tmp_path / "blocked" / "checkpoints"
    else:
        if os.geteuid() == 0:
            pytest.skip("running as root: a folder's mode bits do not prevent writing into it")
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
    with working_directory(tmp_path), single_thread():
        cli = lightning_main([*config_args(TEACHER_CONFIG), *TINY, "--data.root", str(tiny_root), "--trainer.max_steps",
                              "3", "--checkpoint.dirpath", str(folder),
                              "--trainer.callbacks+=tests.helpers.reliability.RecordBatches"], run=False)
        with pytest.raises(OSError) as caught:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    message = str(caught.value)
    assert message.startswith(f"{folder}: cannot write checkpoints into this folder (") and "\n" not in message
    assert "--checkpoint.dirpath" in message
    assert recorded_steps(cli) == [] and cli.trainer.global_step == 0


# -- data faults ---------------------------------------------------------------------------------------------
def test_corrupt_record_read_by_a_worker_stops_the_fit_naming_file_and_record(data_copy: Path,
                                                                            tmp_path: Path) -> None:
    offsets = dict(line.split("\t") for line in (data_copy / "train.idx").read_text().splitlines())
    data = bytearray((data_copy / "train.rec").read_bytes())
    start = int(offsets["20"])
    data[start + 4:start + 8] = struct.pack("<I", 2**29 - 1)  # record 20 claims a 512 MiB payload
    (data_copy / "train.rec").write_bytes(bytes(data))
    expected = r"train\.rec \(record 20\): truncated record: segment at offset \d+ declares 536870911 bytes"
    with single_thread(), pytest.raises(DataFormatError, match=expected):
        fit(tmp_path, "--data.root", str(data_copy), "--data.num_workers", "1", "--trainer.max_steps", "3")
    # The state before the failing batch was saved on the way out; resuming after the repair continues there.
    saved = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert saved["FaceDataModule"]["position"]["consumed"] == 16 * saved["global_step"]


@pytest.mark.parametrize(("classes", "message"), [
    (5, r"property: says 5 classes but the header of .*train\.rec lists 10 identities"),
    (10**6, r"property: says 1000000 classes for 40 training images"),
])
def test_property_contradicting_the_records_fails_before_the_model_is_built(
        classes: int, message: str, data_copy: Path, tmp_path: Path) -> None:
    (data_copy / "property").write_text(f"{classes},112,112")
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, "--data.root", str(data_copy), "--trainer.max_steps", "3")
    assert not (tmp_path / "runs").exists()


def test_label_past_the_head_fails_naming_label_and_record(data_copy: Path, tmp_path: Path) -> None:
    """Without a record header nothing tells the classes in advance: the first such label stops the run."""
    faces = FaceRecordFile(data_copy / "train.rec", data_copy / "train.idx")
    images = [faces.read_image(i) for i in range(len(faces))]
    faces.close()
    with IndexedRecordWriter(data_copy / "train.rec", data_copy / "train.idx") as writer:
        for key, (label, payload) in enumerate(images, start=1):
            writer.write(key, pack(IRHeader(0, float(label), key, 0), payload))
    (data_copy / "property").write_text("5,112,112")
    expected = r"train\.rec \(record \d+\): label [5-9] outside 0\.\.4"
    with single_thread(), pytest.raises(DataFormatError, match=expected):
        fit(tmp_path, "--data.root", str(data_copy), "--trainer.max_steps", "3")


def test_missing_or_wrong_teacher_fails_before_training(tiny_root: Path, tmp_path: Path) -> None:
    student = ["--data.root", str(tiny_root), "--trainer.max_steps", "2"]
    # jsonargparse reports errors raised while building the model as ValueErrors that keep the message.
    with pytest.raises((FileNotFoundError, ValueError), match=r"nowhere\.ckpt: checkpoint not found"):
        fit(tmp_path, *student, "--model.teacher_ckpt", str(tmp_path / "nowhere.ckpt"), config=STUDENT_CONFIG)
    wide = _teacher_ckpt(tmp_path / "wide.ckpt", width=0.25)
    with pytest.raises(ValueError, match=r"wide\.ckpt: teacher stage channels \(16, 32, 64, 128\) differ"):
        fit(tmp_path, *student, "--model.teacher_ckpt", str(wide), config=STUDENT_CONFIG)
    assert not (tmp_path / "runs").exists()


def _student_ckpt(path: Path, teacher: Path) -> Path:
    """A DistillModule checkpoint in Lightning's layout (hyper-parameters as LightningCLI saves them)."""
    student = DistillModule(teacher_ckpt=str(teacher), num_classes=10, backbone="iresnet18", width=0.125,
                            embedding_size=32)
    state = {k: v for k, v in student.state_dict().items() if not k.startswith("teacher.")}
    hparams = {"_class_path": "fskd.systems.DistillModule", **dict(student.hparams)}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


def test_a_student_checkpoint_is_refused_as_a_teacher_unless_asked_for(tiny_root: Path, tmp_path: Path) -> None:
    teacher = _teacher_ckpt(tmp_path / "teacher.ckpt")
    student = _student_ckpt(tmp_path / "student.ckpt", teacher)
    expected = (f"{student}: a distillation student's checkpoint (DistillModule, distilled from {teacher}), not a "
                "teacher; pass the teacher's own checkpoint, or --model.allow_student_teacher true "
                "(load_backbone(..., allow_student=True)) to use a student on purpose")
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        load_backbone(student)
    # Without the class path too (a checkpoint saved by hand): its hyper-parameters say it is a student.
    plain = torch.load(student, weights_only=True)
    del plain["hyper_parameters"]["_class_path"]
    torch.save(plain, tmp_path / "plain_student.ckpt")
    with pytest.raises(ValueError, match="plain_student.ckpt: a distillation student's checkpoint"):
        load_backbone(tmp_path / "plain_student.ckpt")
    assert load_backbone(student, allow_student=True).feature_channels == (8, 16, 32, 64)
    assert load_backbone(teacher).feature_channels == (8, 16, 32, 64)
    # The teacher of a distillation is loaded that way: refused before anything is trained or written.
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}\nwhile building --model fskd.systems.DistillModule$"):
        fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "2", "--model.teacher_ckpt",
            str(student), config=STUDENT_CONFIG)
    assert not (tmp_path / "runs").exists()
    # Asked for on purpose: the student serves as the teacher.
    fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "2", "--model.teacher_ckpt", str(student),
        "--model.allow_student_teacher", "true", config=STUDENT_CONFIG)
    assert any((tmp_path / "runs").rglob("last.ckpt"))


# -- checkpoints: disk full, pickled code, stale temporary files -----------------------------------------------
def test_stale_partial_files_of_dead_processes_are_removed_by_the_next_save(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer exists: the writer of a save killed midway
    host = socket.gethostname()
    stale = [f".last.ckpt.partial-{dead.pid}", f".last.ckpt.partial-{host}-{dead.pid}",
             f".epoch=0-step=3.ckpt.partial-{host}-{dead.pid}"]
    kept = [f".other.ckpt.partial-{host}-{os.getpid()}",  # a live writer (this process)
            f".last.ckpt.partial-another-host.example-{dead.pid}",  # another host's (a shared folder)
            "notes.partial-1"]  # not a temporary file of a save
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    SafeCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, "last.ckpt"])


def test_ddp_timeout_sets_the_process_group_timeout(tiny_root: Path, tmp_path: Path) -> None:
    with working_directory(tmp_path):
        cli = lightning_main(["--config", TEACHER_CONFIG, *TINY, "--data.root", str(tiny_root),
                              "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy",
                              "ddp", "--ddp_timeout", "42"], run=False)
    assert cli.trainer.strategy._timeout == datetime.timedelta(seconds=42)
    assert sum(isinstance(c, PeerFailureWatch) for c in cli.trainer.callbacks) == 1


def test_only_sigterm_and_a_non_finite_loss_count_as_raised_on_every_process() -> None:
    assert raised_on_every_process(SIGTERMException())
    assert raised_on_every_process(NonFiniteLossError("non-finite loss at optimizer step 5"))
    assert not raised_on_every_process(FloatingPointError("another one"))
    assert not raised_on_every_process(DataFormatError("train.rec", "truncated record", 20))
    assert not raised_on_every_process(RuntimeError("CUDA out of memory"))
    assert exception_prefix(SIGTERMException()) == "sigterm" and exception_prefix(OSError()) == "exception"



def test_checkpoint_write_failing_midway_leaves_the_previous_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    io = SafeCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "weights": torch.ones(1000)}, target)
    original = target.read_bytes()
    real_save = torch.save

    def half_then_enospc(obj, stream, *args, **kwargs) -> None:
        real_save(obj, stream, *args, **kwargs)
        stream.seek(stream.tell() // 2)
        stream.truncate()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fskd.models.loading.torch, "save", half_then_enospc)
    expected = r"last\.ckpt: could not write the checkpoint .*No space left.*the previous file.* is unchanged"
    with pytest.raises(OSError, match=expected):
        io.save_checkpoint({"global_step": 2, "weights": torch.zeros(1000)}, target)
    assert target.read_bytes() == original and os.listdir(tmp_path) == ["last.ckpt"]
    assert io.load_checkpoint(target)["global_step"] == 1


def test_disk_full_during_a_fit_keeps_the_previous_last_ckpt(tiny_root: Path, tmp_path: Path) -> None:
    """A real write error (the file-size limit, as a full disk) while saving the final checkpoint."""
    with single_thread():
        fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "2")
        last = checkpoint_path(tmp_path)
        original = last.read_bytes()
        with working_directory(tmp_path):
            cli = lightning_main(["--config", TEACHER_CONFIG, *TINY, "--data.root", str(tiny_root),
                                  "--trainer.max_steps", "3", "--trainer.val_check_interval", "2"], run=False)
        assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(original) // 2, hard))
        try:
            with working_directory(tmp_path), pytest.raises(OSError, match="could not write the checkpoint"):
                cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path="last")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous_handler)
    assert last.read_bytes() == original
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert not [p.name for p in last.parent.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("command", [["fit"], ["fit", "--weights_only", "false"], ["validate"]])
def test_checkpoint_with_pickled_code_is_refused_by_the_cli(command: list[str], tiny_root: Path,
                                                           tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "loops": _Exploit(marker)}, evil)
    with pytest.raises(ValueError, match=r"evil\.ckpt: refused to load: weights-only loading rejects"):
        fit_or_validate = command[0]
        with working_directory(tmp_path):
            lightning_main([fit_or_validate, "--config", TEACHER_CONFIG, *TINY, "--data.root", str(tiny_root),
                            "--trainer.max_steps", "2", "--ckpt_path", str(evil), *command[1:]])
    assert not marker.exists()


def test_bin_with_pickled_code_in_the_data_is_refused_before_training(data_copy: Path,
                                                                       tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (data_copy / "lfw.bin").write_bytes(pickle.dumps(([b"x", b"y"], [_Exploit(marker)]), protocol=2))
    with pytest.raises(DataFormatError, match=r"lfw\.bin: refused global (posix|os)\.system"):
        fit(tmp_path, "--data.root", str(data_copy), "--trainer.max_steps", "2")
    assert not marker.exists() and not checkpoint_path(tmp_path).exists()

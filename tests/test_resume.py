"""Exact resumption: a run stopped after k steps (max_steps, or SIGTERM from outside) and resumed with
``fit --ckpt_path last`` ends bit-identical to an uninterrupted run: weights, BN statistics, optimizer state,
learning rate, loop counters, training order, flip/degradation generator and global RNGs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fskd.commands.lightning import lightning_main, resume_conflicts
from fskd.data.datamodule import FaceDataModule
from fskd.data.sampler import ResumableSampler
from fskd.systems.base import NonFiniteLossError
from tests.conftest import REPO
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
    subprocess_env,
    training_state_differences,
    working_directory,
)

TOTAL_STEPS = 8
RECORD = ["--trainer.callbacks+=tests.helpers.reliability.RecordBatches"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Teacher and student trained for TOTAL_STEPS without interruption (the student distils the teacher)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    with single_thread():
        teacher = fit(workdir, "--data.root", str(tiny_root), "--trainer.max_steps", str(TOTAL_STEPS),
                      *RECORD)
        teacher_ckpt = checkpoint_path(workdir)
        student_args = ["--data.root", str(tiny_root), "--model.teacher_ckpt", str(teacher_ckpt)]
        student = fit(workdir, *student_args, "--trainer.max_steps", str(TOTAL_STEPS), *RECORD,
                      config=STUDENT_CONFIG)
    return {"teacher": (teacher_ckpt, recorded_steps(teacher), []),
            "student": (checkpoint_path(workdir, STUDENT_CONFIG), recorded_steps(student), student_args[2:])}


# -- the sampler and the draws on their own ------------------------------------------------------------------
def test_global_batches_do_not_depend_on_the_number_of_processes() -> None:
    size, batch = 40, 16
    reference = list(ResumableSampler(range(size), batch, 1, 0, seed=3))
    assert len(reference) == 48 and sorted(set(reference)) == list(range(size))
    assert reference[40:] == reference[:8]  # the last global batch is completed by wrapping around
    for world in (2, 4):
        shards = [list(ResumableSampler(range(size), batch, world, rank, seed=3)) for rank in range(world)]
        for step in range(3):
            per_rank = [shard[step * batch // world:(step + 1) * batch // world] for shard in shards]
            merged = [per_rank[slot % world][slot // world] for slot in range(batch)]
            assert merged == reference[step * batch:(step + 1) * batch]
    # Another epoch, another permutation; drop_last keeps whole batches only.
    sampler = ResumableSampler(range(size), batch, 1, 0, seed=3)
    for _ in range(3):
        sampler.advance(batch)
    assert sampler.state_dict()["epoch"] == 1 and list(sampler) != reference
    assert len(list(ResumableSampler(range(size), batch, 1, 0, seed=3, drop_last=True))) == 32


def test_restored_position_yields_the_rest_of_the_epoch_then_the_next() -> None:
    full = ResumableSampler(range(40), 16, 2, 1, seed=7)
    epoch0 = list(full)
    full.advance(16)
    full.advance(16)
    full.advance(16)
    epoch1 = list(full)
    resumed = ResumableSampler(range(40), 16, 2, 1, seed=7)
    resumed.load_state_dict({"epoch": 0, "consumed": 16})
    resumed.set_epoch(5)  # Lightning's epoch count does not move the order
    assert list(resumed) == epoch0[8:]
    resumed.advance(16)
    resumed.advance(16)
    assert resumed.state_dict()["epoch"] == 1 and list(resumed) == epoch1
    with pytest.warns(UserWarning, match="restarts from its first batch"):
        resumed.load_state_dict({"epoch": 1, "consumed": 16, "size": 41})
    assert list(resumed) == epoch1


def test_flip_and_degradation_draws_do_not_depend_on_the_number_of_processes(tiny_root: Path) -> None:
    images = torch.randint(0, 256, (8, 3, 112, 112), dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.long)

    def views(world: int, rank: int, rows: slice) -> dict[str, torch.Tensor]:
        module = FaceDataModule(str(tiny_root), batch_size=8, train_resolution="multi",
                                train_interpolation="random", seed=11)
        module.trainer = SimpleNamespace(world_size=world, global_rank=rank)
        module.setup("fit")
        return module.training_views(images[rows], labels[rows])

    single = views(1, 0, slice(None))
    for rank in (0, 1):
        shard = views(2, rank, slice(rank, None, 2))  # the slots ResumableSampler gives this rank
        assert torch.equal(shard["hr"], single["hr"][rank::2])
        assert torch.equal(shard["lr"], single["lr"][rank::2])


def test_augmentations_depend_on_sample_and_epoch_only(tiny_root: Path) -> None:
    module = FaceDataModule(str(tiny_root), photometric_p=0.8, crop_p=0.8, seed=2)
    module.setup("fit")
    train_set = module.train_set
    first = train_set[(5, 0)]["image"]
    for key in [(6, 0), (5, 1), (1, 0)]:
        train_set[key]  # other samples in between change nothing
    assert torch.equal(train_set[(5, 0)]["image"], first)
    assert not torch.equal(train_set[(5, 1)]["image"], first)  # a new epoch draws anew
    # Whichever worker loads a sample, it gets the same augmentation.
    sampler = [(i, 3) for i in range(8)]
    loaded = [torch.utils.data.DataLoader(train_set, batch_size=4, sampler=sampler, num_workers=workers)
              for workers in (0, 2)]
    for a, b in zip(*loaded, strict=True):
        assert torch.equal(a["image"], b["image"])


# -- truthful resumes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["last", "file"])
def test_a_resume_refuses_hyper_parameters_it_cannot_apply(how: str, tiny_root: Path, tmp_path: Path) -> None:
    """Before, ``--ckpt_path last --model.lr 10`` trained on with the restored lr 0.1 but recorded lr 10, and
    ``--ckpt_path FILE`` dropped the command-line values without a word."""
    with single_thread():
        fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "2")
        last = checkpoint_path(tmp_path)
        before = {path.name: path.read_bytes() for path in last.parent.iterdir()}
        expected = (r"last\.ckpt: cannot resume as asked: --model\.lr: the checkpoint was trained with 0\.1, this "
                    r"command asks for 10\.0; --model\.milestones: the checkpoint was trained with \[5\], this "
                    r"command asks for \[6\]\. Resuming restores the weights, the optimizer and its schedule from "
                    r"the checkpoint, so these options would not apply and would be recorded falsely: drop them to "
                    r"resume, or start a new run \(another --run, without --ckpt_path\) to train with them$")
        with pytest.raises(ValueError, match=expected):
            fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "4", "--ckpt_path",
                "last" if how == "last" else str(last), "--model.lr", "10", "--model.milestones", "[6]")
    assert {path.name: path.read_bytes() for path in last.parent.iterdir()} == before  # nothing written


def test_resume_conflicts_name_each_option_and_ignore_what_a_resume_applies() -> None:
    saved = {"_class_path": "fskd.systems.TeacherModule", "num_classes": 10, "lr": 0.1, "milestones": [5],
             "protocols": ["fskd", "insightface"], "head_kwargs": None}
    same = {"num_classes": None, "lr": 0.1, "milestones": (5,), "protocols": ["fskd"], "head_kwargs": None,
            "added_since": 1}  # a tuple equals the stored list; a key the checkpoint lacks is not compared
    assert resume_conflicts(saved, "fskd.systems.teacher.TeacherModule", same) == []
    assert resume_conflicts(saved, "fskd.systems.DistillModule", {"num_classes": 12, "lr": 0.1}) == [
        "--model: the checkpoint holds a fskd.systems.TeacherModule, this command builds fskd.systems.DistillModule",
        "--model.num_classes: the checkpoint was trained with 10, this command asks for 12"]


def test_a_resume_applies_and_records_the_options_it_can(tiny_root: Path, tmp_path: Path) -> None:
    """Validation protocols and checks do not depend on the restored state: a resume from a file applies them
    (before, the checkpoint's values silently replaced them) and records them."""
    with single_thread():
        fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "2")
        cli = fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", "3", "--ckpt_path",
                  str(checkpoint_path(tmp_path)), "--model.protocols", "[fskd]", "--model.check_finite_loss",
                  "false")
    assert cli.model.hparams.protocols == ["fskd"] and cli.model.hparams.check_finite_loss is False
    metrics = set(cli.trainer.callback_metrics)  # the validation at step 3 used only the asked protocol
    assert "val/lfw/14/acc" in metrics and not any("insightface" in key for key in metrics)
    saved = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert saved["global_step"] == 3
    assert saved["hyper_parameters"]["protocols"] == ["fskd"]
    assert saved["hyper_parameters"]["check_finite_loss"] is False


# -- whole runs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("system", "stop"), [("teacher", 4), ("student", 3)])
def test_max_steps_then_resume_equals_uninterrupted(system: str, stop: int, uninterrupted: dict,
                                                    tiny_root: Path, tmp_path: Path) -> None:
    """Teacher stopped mid-epoch (step 4, epochs of 3 steps), student at an epoch end with a validation."""
    reference, reference_steps, extra = uninterrupted[system]
    config = STUDENT_CONFIG if system == "student" else TEACHER_CONFIG
    args = ["--data.root", str(tiny_root), *extra, *RECORD]
    with single_thread():
        first = fit(tmp_path, *args, "--trainer.max_steps", str(stop), config=config)
        stopped = torch.load(checkpoint_path(tmp_path, config), weights_only=True)
        assert stopped["global_step"] == stop
        second = fit(tmp_path, *args, "--trainer.max_steps", str(TOTAL_STEPS), "--ckpt_path", "last",
                     config=config)
    assert recorded_steps(first) + recorded_steps(second) == reference_steps  # same data, flips, degradation
    assert training_state_differences(reference, checkpoint_path(tmp_path, config)) == []
    resumed = torch.load(checkpoint_path(tmp_path, config), weights_only=True)
    assert resumed["global_step"] == TOTAL_STEPS
    assert resumed["lr_schedulers"][0]["_last_lr"] == [pytest.approx(0.01)]  # milestone 5, after the resume
    if system == "student":
        assert not any(k.startswith("teacher.") for k in resumed["state_dict"])  # reloaded from teacher_ckpt


def test_resume_from_the_state_saved_after_a_late_nan_equals_uninterrupted(uninterrupted: dict, tiny_root: Path,
                                                                          tmp_path: Path) -> None:
    """The NaN of step 5, read at the check after step 6 (``sync_every`` 4), leaves the state of the check after
    step 4, taken at the end of that batch; resuming from it (without the NaN) trains steps 5-8 exactly as the
    uninterrupted run did."""
    reference, reference_steps, _ = uninterrupted["teacher"]
    with working_directory(tmp_path), single_thread():
        cli = lightning_main([*config_args(TEACHER_CONFIG), *TINY, "--data.root", str(tiny_root),
                              "--trainer.max_steps", str(TOTAL_STEPS), "--model.sync_every", "4"], run=False)
        cli.trainer.callbacks.insert(0, NaNAtStep(step=5))
        with pytest.raises(NonFiniteLossError, match="holds the state after step 4"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    with single_thread():
        resumed = fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", str(TOTAL_STEPS),
                      "--ckpt_path", "last", *RECORD)
    assert recorded_steps(resumed) == reference_steps[4:]
    assert training_state_differences(reference, checkpoint_path(tmp_path)) == []


@pytest.mark.slow
def test_sigterm_from_outside_saves_exits_and_resumes_exactly(uninterrupted: dict, tiny_root: Path,
                                                              tmp_path: Path) -> None:
    reference, reference_steps, _ = uninterrupted["teacher"]
    stop = 5
    marker, log = tmp_path / "paused", tmp_path / "steps.jsonl"
    command = [sys.executable, str(REPO / "cli.py"), "fit", "--config", TEACHER_CONFIG, *TINY,
               "--data.root", str(tiny_root), "--trainer.max_steps", str(TOTAL_STEPS),
               "--trainer.callbacks+=tests.helpers.reliability.RecordBatches",
               "--trainer.callbacks.path", str(log),
               "--trainer.callbacks+=tests.helpers.reliability.PauseAtStep",
               "--trainer.callbacks.step", str(stop), "--trainer.callbacks.marker", str(marker)]
    process = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not marker.exists():
            process.kill()
            pytest.fail(f"the run never reached step {stop}:\n{process.communicate(timeout=30)[0][-3000:]}")
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, output[-3000:]
    assert "resume with --ckpt_path last" in output
    saved = torch.load(checkpoint_path(tmp_path), weights_only=True)
    assert saved["global_step"] == stop
    before = [json.loads(line) for line in log.read_text().splitlines()]
    with single_thread():
        resumed = fit(tmp_path, "--data.root", str(tiny_root), "--trainer.max_steps", str(TOTAL_STEPS),
                      "--ckpt_path", "last", *RECORD)
    assert before + recorded_steps(resumed) == reference_steps
    assert training_state_differences(reference, checkpoint_path(tmp_path)) == []

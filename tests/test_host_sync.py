"""The training loop reads the device back at its checks only: at most one host synchronisation every
``sync_every`` steps (`fskd.systems.checks`), so that a GPU is never left waiting for the host in between.

On a CPU every value is on the host already, so "reads the device back" is counted as what would wait for a GPU:
a tensor turned into a Python value (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``__index__``), a
data-dependent shape (boolean indexing: ``nonzero``) and a blocking host-to-device copy. Conversions made while
the DataLoader produces a batch are left out: the loader, its sampler and its workers run on the host by
construction, before the batch reaches the device. Host-side bookkeeping on CPU tensors (the degradation plan)
goes through numpy, which cannot touch a device tensor at all.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fskd.callbacks import GracefulSigterm
from fskd.callbacks.console import ProgressBar
from fskd.commands.lightning import lightning_main
from fskd.data.datamodule import FaceDataModule
from fskd.data.transfer import to_device_async
from fskd.losses import RelationalKDLoss
from fskd.systems import TeacherModule
from fskd.systems.checks import TrainingChecks
from tests.helpers.reliability import (
    STUDENT_CONFIG,
    TEACHER_CONFIG,
    TINY,
    config_args,
    single_thread,
    working_directory,
)

CONVERSIONS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist")


def _inside_data_loader() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "torch/utils/data/" in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


class _StepMarker(L.Callback):
    """Sets ``step`` to the optimizer step being run (1-based), from the start of its batch to the start of the
    next one (so that a validation after a step counts for that step)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.step = trainer.global_step + 1

    def on_train_end(self, *args: Any) -> None:
        self.step = None


def _teacher_ckpt(path: Path) -> Path:
    teacher = TeacherModule(num_classes=10, backbone="iresnet18", width=0.125, embedding_size=32)
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, path)
    return path


@pytest.mark.parametrize("system", ["teacher", "student"])
def test_a_training_step_reads_the_device_only_at_the_checks(system: str, tiny_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """12 steps of batches of 4 (10 per epoch) through the real CLI, modules, DataModule (flips, random
    resolution and interpolation per sample), loggers and progress bar, with ``sync_every`` 4: steps 4, 8 and 12
    (the checks, logging and the bar), 6 and 12 (validation after them) and 10 (end of an epoch) read the device;
    the NaN/SIGTERM check reads it once. No other step reads anything."""
    config, extra = TEACHER_CONFIG, []
    if system == "student":
        config, extra = STUDENT_CONFIG, ["--model.teacher_ckpt", str(_teacher_ckpt(tmp_path / "teacher.ckpt"))]
    with working_directory(tmp_path), single_thread():
        cli = lightning_main([*config_args(config), *TINY, "--data.root", str(tiny_root), *extra,
                              "--trainer.max_steps", "12", "--data.batch_size", "4", "--model.sync_every", "4",
                              "--trainer.log_every_n_steps", "4", "--trainer.val_check_interval", "6",
                              "--trainer.enable_progress_bar", "true", "--trainer.logger", "true"], run=False)
        marker = _StepMarker()
        cli.trainer.callbacks.insert(0, marker)
        reads: dict[int, list[str]] = defaultdict(list)

        def counting(name: str) -> Any:
            original = getattr(torch.Tensor, name)

            def conversion(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if marker.step is not None and not _inside_data_loader():
                    caller = sys._getframe(1).f_code
                    reads[marker.step].append(f"{name} in {Path(caller.co_filename).name}:{caller.co_name}")
                return original(self, *args, **kwargs)
            return conversion

        for name in CONVERSIONS:
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        monkeypatch.undo()
    assert cli.trainer.global_step == 12
    assert {step for step, found in reads.items() if found} == {4, 6, 8, 10, 12}, dict(reads)
    for step in (4, 6, 8, 10, 12):
        assert reads[step].count("tolist in checks.py:check") == 1, reads[step]
    bar = next(c for c in cli.trainer.callbacks if isinstance(c, ProgressBar))
    assert "train/ce" in bar.get_metrics(cli.trainer, cli.model)  # the bar still shows the training loss


def test_training_views_copy_to_the_device_without_blocking(tiny_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The flips and the degradation plan are drawn on the CPU generator (the same draws on any device) and
    reach the batch's device in two non-blocking copies: the flip mask and the rows of every degradation group
    at once (before: a blocking copy of the mask and one per group, up to 48 with ``random``)."""
    data = FaceDataModule(str(tiny_root), train_resolution="multi", train_interpolation="random")
    copies: list[dict[str, Any]] = []
    original = torch.Tensor.to

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = original(self, *args, **kwargs)
        if result.device != self.device:
            copies.append({"from": self.device.type, "to": result.device.type, **kwargs})
        return result

    monkeypatch.setattr(torch.Tensor, "to", to)
    images = torch.zeros(64, 3, 112, 112, dtype=torch.uint8, device="meta")  # a device that is not the host
    views = data.training_views(images, torch.zeros(64, dtype=torch.long, device="meta"))
    assert views["lr"].device.type == "meta"
    assert copies == [{"from": "cpu", "to": "meta", "non_blocking": True}] * 2


def test_host_tensors_bound_for_the_host_are_not_copied() -> None:
    mask = torch.rand(8) < 0.5
    assert to_device_async(mask, mask.device) is mask and to_device_async(mask, "cpu") is mask


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_host_tensors_reach_a_gpu_from_pinned_memory() -> None:
    values = torch.arange(1000)
    copied = to_device_async(values, "cuda")
    torch.cuda.synchronize()
    assert copied.device.type == "cuda" and torch.equal(copied.cpu(), values)


class _SyncingOps(TorchDispatchMode):
    """Records the aten operators that make the host wait for a device: reading a value, data-dependent shapes."""

    WAITING = ("_local_scalar_dense", "nonzero", "masked_select", "unique")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.__name__.split(".")[0]
        if any(name.startswith(waiting) or name.startswith("_" + waiting) for waiting in self.WAITING):
            self.found.append(name)
        elif name.startswith("index") and any(isinstance(index, torch.Tensor) and index.dtype == torch.bool
                                              for index in (args[1] if len(args) > 1 else ()) or ()):
            self.found.append(f"{name} with a boolean mask")  # the kernel runs nonzero on the mask
        return func(*args, **(kwargs or {}))


def test_rkd_needs_no_host_synchronisation() -> None:
    """The RKD distance term normalised by the mean of the positive distances without boolean indexing."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8, 16, generator=generator, requires_grad=True)
    teacher = torch.randn(8, 16, generator=generator)
    with _SyncingOps() as ops:
        loss = RelationalKDLoss()(student, teacher)
        loss.backward()
    assert ops.found == []


def test_lightning_sigterm_broadcast_gives_way_to_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP Lightning broadcasts its SIGTERM flag before every batch (a copy to the device and a read); with
    the checks agreeing on SIGTERM instead, that broadcast is off for the fit and back afterwards."""
    checks, sigterm = TrainingChecks(), GracefulSigterm()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[sigterm, checks])
    broadcasts: list[Any] = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda *args, **kwargs: broadcasts.append(args))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: broadcasts.append("item"))
    epoch_loop = trainer.fit_loop.epoch_loop
    sigterm.setup(trainer, TeacherModule(num_classes=4, width=0.0625, embedding_size=8), "fit")
    epoch_loop._broadcast_sigterm_tensor()
    assert broadcasts == []
    assert [flag.read for flag in checks._flags] == [sigterm._read_requested]
    sigterm.teardown(trainer, None, "fit")
    assert "_broadcast_sigterm_tensor" not in vars(epoch_loop)


def test_sync_interval_is_every_step_on_a_cpu_and_the_logging_interval_elsewhere() -> None:
    module = TeacherModule(num_classes=4, width=0.0625, embedding_size=8)
    assert module.sync_interval() == 1
    assert module.to("meta").sync_interval() == 50  # no trainer: Lightning's default log_every_n_steps
    assert TeacherModule(num_classes=4, width=0.0625, embedding_size=8, sync_every=7).sync_interval() == 7
    with pytest.raises(ValueError, match="sync_every must be a positive number of steps"):
        TeacherModule(num_classes=4, width=0.0625, embedding_size=8, sync_every=0)

"""The systems' speed options (channels_last, fused SGD, torch.compile, label checks) change speed, not results."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fskd.models.loading import load_backbone
from fskd.systems import DistillModule, TeacherModule
from tests.conftest import CONFIGS, FAST, run_cli

TINY = dict(num_classes=7, backbone="iresnet18", width=0.0625, embedding_size=16)


def _pair(**options: bool) -> tuple[TeacherModule, TeacherModule]:
    torch.manual_seed(0)
    plain = TeacherModule(**TINY)
    torch.manual_seed(0)
    fast = TeacherModule(**TINY, **options)
    fast.configure_model()
    return plain, fast


def _batch(size: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(size, 3, 112, 112, generator=generator) * 2 - 1
    return {"hr": images, "lr": images, "label": torch.arange(size) % TINY["num_classes"]}


def test_channels_last_computes_the_same_as_nchw() -> None:
    """What the GPU option does (NHWC weights and inputs), checked on the CPU at a width torch handles there."""
    torch.manual_seed(0)
    plain = TeacherModule(**{**TINY, "width": 0.25})
    fast = TeacherModule(**{**TINY, "width": 0.25}, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    fast.to(memory_format=torch.channels_last)
    fast._channels_last_active = True  # what configure_model sets on a CUDA device
    assert fast.as_input(torch.zeros(1, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    batch = _batch()
    for module in (plain, fast):
        module.classification_loss(module(batch["lr"]), batch["label"], "train").backward()
    # Summation order differs between the layouts: compare to 0.1 % of the largest gradient.
    reference = plain.backbone.conv1.weight.grad
    torch.testing.assert_close(fast.backbone.conv1.weight.grad, reference,
                               atol=1e-3 * float(reference.abs().max()), rtol=0)
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(batch["lr"]), plain(batch["lr"]), atol=1e-5, rtol=1e-4)


def test_channels_last_is_ignored_on_the_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    module = TeacherModule(**TINY, channels_last=True)
    with caplog.at_level("WARNING"):
        module.configure_model()
    assert "channels_last is a GPU option; ignored on cpu" in caplog.text
    assert not module.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not module.as_input(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def test_fused_sgd_takes_the_same_step() -> None:
    plain, fast = _pair(fused_optimizer=True)
    optimizers = [m.configure_optimizers()["optimizer"] for m in (plain, fast)]
    assert optimizers[1].defaults["fused"] is True and not optimizers[0].defaults["fused"]
    batch = _batch()
    for module, optimizer in zip((plain, fast), optimizers, strict=True):
        for _ in range(2):  # the second step uses the momentum buffers
            optimizer.zero_grad()
            module.classification_loss(module(batch["lr"]), batch["label"], "train").backward()
            optimizer.step()
    for (name, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)


def test_compile_compiles_backbone_and_teacher_once_and_keeps_checkpoint_keys(tiny_teacher_ckpt: Path) -> None:
    student = DistillModule(teacher_ckpt=str(tiny_teacher_ckpt), num_classes=50, backbone="iresnet18",
                            width=0.25, embedding_size=128, compile=True)
    keys = list(student.state_dict())
    student.configure_model()
    compiled = student.backbone._compiled_call_impl
    assert compiled is not None and student.teacher._compiled_call_impl is not None
    student.configure_model()  # Lightning calls it again for validate: not compiled a second time
    assert student.backbone._compiled_call_impl is compiled
    assert list(student.state_dict()) == keys


def test_label_check_is_the_datasets_job_unless_asked() -> None:
    assert TeacherModule(**TINY).head.check_labels is False
    checked = TeacherModule(**TINY, check_labels=True)
    with pytest.raises(ValueError, match=r"label 7 is out of range \[0, 7\)"):
        checked.head(torch.randn(2, 16), torch.tensor([0, 7]))


def test_cli_fit_with_channels_last_and_fused_sgd_writes_a_normal_checkpoint(synth_root: Path,
                                                                            tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_cli("fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(synth_root),
                "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--model.channels_last", "true",
                "--model.fused_optimizer", "true", *FAST)
    finally:
        os.chdir(cwd)
    checkpoint = tmp_path / "runs/synthetic/checkpoints/last.ckpt"
    backbone = load_backbone(checkpoint)  # plain NCHW model from a channels_last run: same keys and shapes
    assert backbone(torch.zeros(1, 3, 112, 112)).embedding.shape == (1, 128)

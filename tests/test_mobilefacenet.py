"""MobileFaceNet-y1 (fskd.models.mobilefacenet): its graph, the factory, and training through the CLI as a teacher and
as an F-SKD student (the real pretrained network against mxnet: tests/test_mxnet_import.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fskd.commands.lightning import lightning_main
from fskd.models import MobileFaceNet, create_backbone, list_backbones, load_backbone
from fskd.models.mobilefacenet import BN_EPS, EMBEDDING_BN_EPS
from tests.conftest import CONFIGS, FAST

ARCHITECTURE = {"mode": "ir", "neck": "gdc", "width": 1.0, "embedding_size": 128, "dropout": 0.0}


def test_factory_builds_the_y1_graph_with_fskd_stage_maps() -> None:
    model = create_backbone("mobilefacenet", **ARCHITECTURE).eval()
    assert isinstance(model, MobileFaceNet) and "mobilefacenet" in list_backbones()
    assert (model.mode, model.neck, model.width, model.embedding_size, model.input_size) == ("ir", "gdc", 1.0, 128,
                                                                                              112)
    assert model.layers == (4, 6, 2) and model.feature_channels == (64, 64, 128, 128)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.embedding.shape == (2, 128) and out.attention == ()
    assert [tuple(f.shape[1:]) for f in out.features] == [(64, 56, 56), (64, 28, 28), (128, 14, 14), (128, 7, 7)]
    # weights + BN statistics = the 1,022,848 numbers of insightface's model-0000.params (284 arrays)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 284 and sum(v.numel() for v in state.values()) == 1_022_848
    assert model.conv_6_dw.conv.kernel_size == (7, 7) and model.conv_6_dw.conv.groups == 512
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)]
    assert {m.eps for m in bns[:-1]} == {BN_EPS} and bns[-1] is model.fc1 and model.fc1.eps == EMBEDDING_BN_EPS
    assert not model.fc1.weight.requires_grad  # MXNet fix_gamma=True
    assert all(m.num_parameters == m.weight.numel() > 1 for m in model.modules() if isinstance(m, torch.nn.PReLU))


def test_width_multiplier_and_defaults() -> None:
    tiny = create_backbone("mobilefacenet", width=0.25, embedding_size=16)  # neck and mode default to gdc / ir
    assert tiny.feature_channels == (16, 16, 32, 32) and tiny.neck == "gdc"
    out = tiny(torch.randn(3, 3, 112, 112))
    assert out.embedding.shape == (3, 16)
    out.embedding.sum().backward()
    assert all(p.grad is not None for p in tiny.parameters() if p.requires_grad)


@pytest.mark.parametrize(("changes", "message"), [
    ({"neck": "gap"}, "neck is 'gdc'"),
    ({"neck": "fc"}, "neck is 'gdc'"),
    ({"mode": "cbam"}, "only mode is 'ir'"),
    ({"dropout": 0.4}, "no dropout"),
    ({"width": 0.0}, "width must be > 0"),
    ({"embedding_size": 0}, "embedding_size"),
])
def test_settings_that_make_no_sense_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_backbone("mobilefacenet", **{**ARCHITECTURE, **changes})


def test_an_input_of_another_size_is_refused() -> None:
    model = create_backbone("mobilefacenet", width=0.25).eval()
    with pytest.raises(ValueError, match="input_size=112"):
        model(torch.randn(1, 3, 96, 96))


@pytest.mark.slow
def test_trains_through_the_cli_as_teacher_and_as_fskd_student(tiny_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`fskd fit` with --model.backbone mobilefacenet: a TeacherModule (3 steps), then a DistillModule student
    distilled by F-SKD from it (2 steps, validated at 112 and 14 px); load_backbone rebuilds both."""
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(CONFIGS / "synthetic.yaml"), "--model.backbone", "mobilefacenet", "--model.neck",
              "gdc", "--data.root", str(tiny_root), "--data.val_resolutions", "[112,14]",
              "--trainer.default_root_dir", str(tmp_path), *FAST]
    lightning_main(["fit", *common, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                    "--run", "mfn_teacher"])
    teacher_ckpt = tmp_path / "mfn_teacher" / "checkpoints" / "last.ckpt"
    teacher = load_backbone(teacher_ckpt, expected={"backbone": "mobilefacenet", "neck": "gdc"})
    assert isinstance(teacher, MobileFaceNet) and teacher.width == 0.25  # synthetic.yaml's width

    cli = lightning_main(["fit", *common, "--config", str(CONFIGS / "method" / "fskd.yaml"),
                          "--model.teacher_ckpt", str(teacher_ckpt), "--trainer.max_steps", "2",
                          "--trainer.val_check_interval", "2", "--run", "mfn_student"])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/distill"]) and float(metrics["train/distill"]) > 0
    assert 0.0 <= float(metrics["val/lfw/14/acc"]) <= 1.0
    student = load_backbone(tmp_path / "mfn_student" / "checkpoints" / "last.ckpt", allow_student=True)
    assert isinstance(student, MobileFaceNet)
    # the frozen teacher is unchanged by the student's training
    torch.testing.assert_close(cli.model.teacher.state_dict(), teacher.state_dict())

"""DistillModule: frozen teacher through a real fit, every distillation method, teacher checks before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fskd.commands.lightning import lightning_main
from fskd.losses import DISTILL_NAMES, FeatureSimilarityLoss
from fskd.systems import DistillModule, TeacherModule
from tests.conftest import CONFIGS, FAST

TINY = {"backbone": "iresnet18", "width": 0.125, "embedding_size": 32, "num_classes": 7}


def _save_teacher(tmp_path: Path, name: str = "teacher.ckpt", **overrides) -> Path:
    """A TeacherModule checkpoint in Lightning's layout (state_dict + hyper_parameters)."""
    teacher = TeacherModule(**{**TINY, **overrides})
    path = tmp_path / name
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, path)
    return path


def _batch(size: int = 4) -> dict[str, torch.Tensor]:
    hr = torch.rand(size, 3, 112, 112) * 2 - 1
    return {"hr": hr, "lr": hr.flip(-1), "label": torch.arange(size) % 7}


@pytest.mark.slow
def test_fit_keeps_teacher_frozen_and_out_of_checkpoints(tiny_teacher_ckpt: Path, synth_root: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = [arg for name in ("synthetic", "method/fskd", "resolution/14") for arg in
              ("--config", str(CONFIGS / f"{name}.yaml"))]
    reference = {k[len("backbone."):]: v for k, v in
                 torch.load(tiny_teacher_ckpt, weights_only=True)["state_dict"].items() if k.startswith("backbone.")}
    cli = lightning_main(["fit", *config, "--data.root", str(synth_root),
                          "--model.teacher_ckpt", str(tiny_teacher_ckpt), "--trainer.max_steps", "4",
                          "--trainer.val_check_interval", "4", "--data.val_resolutions", "[14]", *FAST])
    model = cli.model
    # Weights and BN running statistics of the teacher are exactly the checkpoint's after training.
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert not model.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.teacher.parameters()}
    assert {id(p) for p in model.backbone.parameters()} <= optimised
    metrics = cli.trainer.callback_metrics
    for key in ("train/ce", "train/distill", "train/loss", "val/agedb_30/14/acc"):
        assert key in metrics
    # Student checkpoints do not carry the teacher again...
    last = tmp_path / "runs/synthetic_fskd_14/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state) and any(k.startswith("backbone.") for k in state)
    # ...and a student evaluates without its teacher.
    cli = lightning_main(["validate", *config, "--data.root", str(synth_root), "--model.teacher_ckpt",
                          "null", "--ckpt_path", str(last), "--data.val_resolutions", "[14]", *FAST])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/agedb_30/14/acc"]) <= 1.0


def test_teacher_stays_in_eval_mode_when_module_trains(tmp_path: Path) -> None:
    module = DistillModule(teacher_ckpt=str(_save_teacher(tmp_path)), **TINY)
    module.train()
    assert module.backbone.training and not module.teacher.training
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    student = module.backbone(_batch()["lr"])
    with torch.no_grad():
        module.teacher(_batch()["hr"])
    assert student.embedding.requires_grad
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, before[key])


@pytest.mark.parametrize("method", [m for m in DISTILL_NAMES if m != "askd"] + ["askd"])
def test_every_method_gives_a_finite_loss_with_gradients(method: str, tmp_path: Path) -> None:
    mode = "cbam" if method == "askd" else "ir"
    module = DistillModule(teacher_ckpt=str(_save_teacher(tmp_path, mode=mode)), distill=method, mode=mode, **TINY)
    batch = _batch()
    student = module.backbone(batch["lr"])
    with torch.no_grad():
        teacher = module.teacher(batch["hr"])
    value = module.distillation(student, teacher)
    assert value.dtype == torch.float32 and torch.isfinite(value) and value > 0
    value.backward()
    assert module.backbone.conv1.weight.grad is not None
    assert all(p.grad is None for p in module.teacher.parameters())
    assert module.distill_weight == module.distill_loss.default_weight
    assert (module.hints is not None) == (method in ("fskd_hint", "fitnet", "fskd_cross"))


MOBILEFACENET = {"backbone": "mobilefacenet", "neck": "gdc", "width": 0.25, "embedding_size": 32, "num_classes": 7}


@pytest.mark.parametrize("method", [m for m in DISTILL_NAMES if m != "askd"])
def test_every_method_trains_a_mobilefacenet_student_from_a_mobilefacenet_teacher(method: str,
                                                                                   tmp_path: Path) -> None:
    """Every loss that does not need CBAM gates works with MobileFaceNet's four stage maps (56/28/14/7 px)."""
    module = DistillModule(teacher_ckpt=str(_save_teacher(tmp_path, **MOBILEFACENET)), distill=method,
                           **MOBILEFACENET)
    batch = _batch()
    student = module.backbone(batch["lr"])
    assert [f.shape[-1] for f in student.features] == [56, 28, 14, 7]
    with torch.no_grad():
        teacher = module.teacher(batch["hr"])
    value = module.distillation(student, teacher)
    assert torch.isfinite(value) and value > 0
    value.backward()
    assert next(module.backbone.parameters()).grad is not None  # the stem learns from the loss


def test_fskd_term_is_the_feature_similarity_loss(tmp_path: Path) -> None:
    module = DistillModule(teacher_ckpt=str(_save_teacher(tmp_path)), distill_weight=3.0, **TINY)
    batch = _batch()
    student = module.backbone(batch["lr"])
    teacher = module.teacher(batch["hr"])
    expected = FeatureSimilarityLoss()(student.features, teacher.features)
    torch.testing.assert_close(module.distillation(student, teacher), expected)
    assert module.distill_weight == 3.0


def test_init_from_teacher_copies_weights(tmp_path: Path) -> None:
    module = DistillModule(teacher_ckpt=str(_save_teacher(tmp_path)), init_from_teacher=True, **TINY)
    for (name, a), b in zip(module.backbone.state_dict().items(), module.teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_teacher_problems_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ckpt: checkpoint not found"):
        DistillModule(teacher_ckpt=str(tmp_path / "missing.ckpt"), **TINY)
    wider = _save_teacher(tmp_path, "wide.ckpt", width=0.25)
    with pytest.raises(ValueError, match=r"wide\.ckpt: teacher stage channels \(16, 32, 64, 128\) differ"):
        DistillModule(teacher_ckpt=str(wider), **TINY)
    with pytest.raises(ValueError, match="'askd' needs CBAM teacher and student"):
        DistillModule(teacher_ckpt=str(_save_teacher(tmp_path)), distill="askd", mode="cbam", **TINY)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        DistillModule(teacher_ckpt=str(garbage), **TINY)


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Exploit()}}, path)
    with pytest.raises(ValueError, match="evil.ckpt: refused to load"):
        DistillModule(teacher_ckpt=str(path), **TINY)
    assert not marker.exists()

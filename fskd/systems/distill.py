"""`DistillModule`: a low-resolution student trained with margin softmax plus a distillation loss from a frozen
HR teacher (F-SKD by default).

The teacher sees the HR view and the student the degraded view of the same flipped image (both made by the
DataModule). Total loss = CE(student margin head) + weight x distillation loss; each term is logged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fskd.losses import HintAdapters, create_distill_loss
from fskd.models.loading import load_backbone, load_head
from fskd.systems.base import FaceRecognitionModule


class DistillModule(FaceRecognitionModule):
    """Student + frozen teacher.

    Args:
        teacher_ckpt: a `TeacherModule` checkpoint (loaded weights-only; its own hyper-parameters define the
            teacher's architecture). Required for ``fit``; evaluation of a trained student does not need it.
        distill: ``fskd`` (paper-era F-SKD), ``fskd_hint`` (later code: 1x1 hint adapters + BN on the student),
            ``askd`` (CBAM attention maps), ``fitnet``, ``at``, ``rkd`` or ``hkd``.
        distill_weight: weight of the distillation term; ``None`` = the authors' default for that loss
            (F-SKD 20); 0 trains the same student without distillation (the teacher is then not run).
        hint_batch_norm: BN after the hint convolutions (``fskd_hint``/``fitnet``).
        init_from_teacher: start the student from the teacher's weights instead of from scratch.
        save_teacher: also store the teacher's weights in every student checkpoint (off: they are reloaded from
            ``teacher_ckpt``, which keeps student checkpoints small).
        **kwargs: the student's architecture, head and optimiser (see `FaceRecognitionModule`).
    """

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        distill: str = "fskd",
        distill_weight: float | None = None,
        hint_batch_norm: bool = True,
        init_from_teacher: bool = False,
        save_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.distill_loss = create_distill_loss(distill)
        self.distill_input = self.distill_loss.inputs
        self.distill_weight = float(distill_weight if distill_weight is not None else
                                    self.distill_loss.default_weight)
        self.hints = (HintAdapters(self.backbone.feature_channels, batch_norm=hint_batch_norm)
                      if self.distill_loss.needs_hint else None)
        self.teacher: nn.Module | None = None
        self.teacher_head: nn.Module | None = None
        if teacher_ckpt is not None:
            self._load_teacher(teacher_ckpt)
            if init_from_teacher:
                self.backbone.load_state_dict(self.teacher.state_dict())

    # -- teacher -----------------------------------------------------------------------------------------------
    def _load_teacher(self, path: str) -> None:
        teacher = load_backbone(path)
        student = self.backbone
        need = self.distill_input
        if need == "features" and self.distill_loss.same_channels and \
                teacher.feature_channels != student.feature_channels:
            raise ValueError(f"{path}: teacher stage channels {teacher.feature_channels} differ from the student's "
                             f"{student.feature_channels}; {self.hparams.distill!r} compares stage maps one to one")
        if need == "attention" and (teacher.mode != "cbam" or student.mode != "cbam"
                                    or list(teacher.layers) != list(student.layers)):
            raise ValueError(f"{path}: 'askd' needs CBAM teacher and student with the same blocks; teacher "
                             f"{teacher.mode} {list(teacher.layers)}, student {student.mode} {list(student.layers)}")
        if self.hparams.init_from_teacher and teacher.state_dict().keys() != student.state_dict().keys():
            raise ValueError(f"{path}: init_from_teacher needs the same architecture for teacher and student")
        teacher.requires_grad_(False)
        self.teacher = teacher.eval()
        if need == "logits":
            self.teacher_head = load_head(path).requires_grad_(False)

    def compiled_modules(self) -> list[nn.Module]:
        return [*super().compiled_modules(), *([self.teacher] if self.teacher is not None else [])]

    def train(self, mode: bool = True) -> DistillModule:
        """Lightning switches modes around validation; the teacher's BN must keep its running statistics."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        if self.teacher_head is not None:
            self.teacher_head.eval()
        return self

    def on_fit_start(self) -> None:
        if self.teacher is None:
            raise ValueError("DistillModule needs model.teacher_ckpt (a TeacherModule checkpoint) to train")

    # -- training ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        student = self.backbone(self.as_input(batch["lr"]))
        ce = self.classification_loss(student.embedding, batch["label"], "train")
        if self.distill_weight == 0.0:
            # A control run (same module, same init, no distillation): skip the teacher's forward pass.
            distill = torch.zeros((), device=ce.device)
        else:
            with torch.no_grad():
                teacher = self.teacher(self.as_input(batch["hr"]))
            distill = self.distillation(student, teacher)
        loss = ce + self.distill_weight * distill
        self.check_finite(batch_idx, ce=ce, distill=distill, loss=loss)
        self.log("train/distill", distill, prog_bar=True)
        self.log("train/loss", loss)
        return loss

    def distillation(self, student: Any, teacher: Any) -> torch.Tensor:
        """The unweighted distillation term for this module's loss (computed in fp32 by the loss)."""
        if self.distill_input == "features":
            features = self.hints(student.features) if self.hints is not None else student.features
            return self.distill_loss(features, teacher.features)
        if self.distill_input == "attention":
            return self.distill_loss(student.attention, teacher.attention)
        if self.distill_input == "embedding":
            return self.distill_loss(student.embedding, teacher.embedding)
        with torch.no_grad():
            teacher_logits = self.teacher_head.logits(teacher.embedding)
        return self.distill_loss(self.head.logits(student.embedding), teacher_logits)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.hparams.save_teacher:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(("teacher.", "teacher_head."))]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for name in ("teacher", "teacher_head"):
            module = getattr(self, name)
            stored = [k for k in state if k.startswith(f"{name}.")]
            if module is None:
                # Evaluating a student without its teacher: ignore teacher weights stored alongside.
                for key in stored:
                    del state[key]
            elif not stored:
                # Student checkpoints omit the teacher; keep the one loaded from teacher_ckpt.
                state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})

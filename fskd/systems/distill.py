"""`DistillModule`: a low-resolution student trained with margin softmax plus a distillation loss from a frozen
HR teacher (F-SKD by default).

The teacher sees the HR view and the student the degraded view of the same flipped image (both made by the
DataModule). Total loss = CE(student margin head) + weight x distillation loss; each term is logged.

``fskd_cross`` (the authors' final method) adds a cross-sample relational term on the last-stage maps of each
anchor and a positive image of its identity; the positives are mined with the teacher when the fit starts
(`fskd.systems.positives`) and drawn by the DataModule. ``logit_distill`` adds Hinton KD on the logits to any
method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fskd.data.positives import load_positives, positives_path
from fskd.losses import CrossSampleRelationLoss, HintAdapters, LogitKDLoss, create_distill_loss
from fskd.models.loading import load_backbone, load_head, read_checkpoint
from fskd.systems.base import FaceRecognitionModule
from fskd.systems.positives import refresh_positives, teacher_embeddings


class DistillModule(FaceRecognitionModule):
    """Student + frozen teacher.

    Args:
        teacher_ckpt: a `TeacherModule` checkpoint (loaded weights-only; its own hyper-parameters define the
            teacher's architecture). Required for ``fit``; evaluation of a trained student does not need it.
        distill: ``fskd`` (paper-era F-SKD), ``fskd_hint`` (later code: 1x1 hint adapters + BN on the student),
            ``fskd_cross`` (final code: ``fskd_hint`` plus the cross-sample term on anchor/positive pairs),
            ``askd`` (CBAM attention maps), ``fitnet``, ``at``, ``rkd`` or ``hkd``.
        distill_weight: weight of the distillation term; ``None`` = the authors' default for that loss
            (F-SKD 20); 0 trains the same student without distillation (the teacher is then not run).
        hint_batch_norm: BN after the hint convolutions (``fskd_hint``/``fskd_cross``/``fitnet``).
        cross_weight: weight of the cross-sample term of ``fskd_cross``; ``None`` = the authors' 4.0.
        cross_margin: positives of an image are the other images of its identity whose teacher cosine is above
            this (and below 0.99, which leaves out duplicates); ``fskd_cross`` only.
        positives_path: where the mined positives are kept; ``None`` = next to ``teacher_ckpt``
            (``<stem>.positives.npz``). Reused while the training images, labels, margin and teacher match.
        logit_distill: also distil the logits (Hinton KD, T = 4, weight 1), with any method; reads the
            teacher's margin head.
        allow_student_teacher: accept a distilled student's checkpoint as ``teacher_ckpt`` (refused by default:
            it is usually a mistaken path).
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
        cross_weight: float | None = None,
        cross_margin: float = 0.0,
        positives_path: str | None = None,
        logit_distill: bool = False,
        allow_student_teacher: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.distill_loss = create_distill_loss(distill)
        self.distill_input = self.distill_loss.inputs
        self.distill_weight = float(distill_weight if distill_weight is not None else
                                    self.distill_loss.default_weight)
        self.hints = (HintAdapters(self.backbone.feature_channels, batch_norm=hint_batch_norm)
                      if self.distill_loss.needs_hint else None)
        self.cross_loss: CrossSampleRelationLoss | None = None
        if self.distill_loss.needs_positives:
            self.cross_loss = CrossSampleRelationLoss()
            self.cross_weight = float(cross_weight if cross_weight is not None else self.cross_loss.default_weight)
        elif cross_weight is not None:
            raise ValueError(f"cross_weight applies to distill 'fskd_cross' only, not {distill!r}")
        if logit_distill and self.distill_input == "logits":
            raise ValueError(f"logit_distill would add the logit term of {distill!r} a second time")
        self.logit_loss = LogitKDLoss() if logit_distill else None
        self.teacher: nn.Module | None = None
        self.teacher_head: nn.Module | None = None
        if teacher_ckpt is not None:
            self._load_teacher(teacher_ckpt)
            if init_from_teacher:
                self.backbone.load_state_dict(self.teacher.state_dict())

    # -- teacher -----------------------------------------------------------------------------------------------
    def _load_teacher(self, path: str) -> None:
        teacher = load_backbone(path, allow_student=self.hparams.allow_student_teacher)
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
        if need == "logits" or self.logit_loss is not None:
            self.teacher_head = self._load_teacher_head(path)

    def _load_teacher_head(self, path: str) -> nn.Module:
        checkpoint = read_checkpoint(path)
        hparams = checkpoint["hyper_parameters"]
        if "num_classes" not in hparams or not any(k.startswith("head.") for k in checkpoint["state_dict"]):
            raise ValueError(f"{path}: logit distillation needs the teacher's margin head, and this checkpoint has "
                             "none (an imported network without its head?)")
        head = load_head(path)
        if head.num_classes != self.head.num_classes:
            raise ValueError(f"{path}: the teacher's head has {head.num_classes} classes, the student's "
                             f"{self.head.num_classes}; logit distillation compares them one to one")
        return head.requires_grad_(False)

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
        if self.cross_loss is not None:
            self.prepare_positives()

    # -- positives (fskd_cross) --------------------------------------------------------------------------------
    def prepare_positives(self) -> None:
        """Give the DataModule its positives: process 0 mines them with the teacher, or reuses the file when it
        fits the run; the other processes wait, then every process loads the file.

        Runs in ``on_fit_start``, which Lightning calls after the checkpoint's DataModule state is restored and
        before it asks for the training loader.
        """
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if not (hasattr(datamodule, "set_positives") and hasattr(datamodule, "training_images")):
            raise ValueError(f"distill {self.hparams.distill!r} needs a DataModule with set_positives and "
                             "training_images (FaceDataModule) to draw positive pairs")
        path = Path(self.hparams.positives_path or positives_path(self.hparams.teacher_ckpt))
        if trainer.is_global_zero:
            data_batch = getattr(datamodule, "val_batch_size", 256)
            workers = getattr(datamodule, "num_workers", 0)

            def embed(dataset: Any) -> Any:
                return teacher_embeddings(self.teacher, dataset, self.device, batch_size=data_batch,
                                          num_workers=workers, forward_context=trainer.precision_plugin.forward_context,
                                          as_input=self.as_input)

            refresh_positives(path, self.hparams.teacher_ckpt, datamodule.training_images(),
                              self.hparams.cross_margin, embed)
        trainer.strategy.barrier("fskd_positives")
        table, _ = load_positives(path)
        datamodule.set_positives(table)

    # -- training ----------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.cross_loss is not None:
            return self._cross_training_step(batch, batch_idx)
        student = self.backbone(self.as_input(batch["lr"]))
        ce = self.classification_loss(student.embedding, batch["label"], "train")
        teacher = None
        if self.distill_weight == 0.0:
            # A control run (same module, same init, no distillation): skip the teacher's forward pass.
            distill = torch.zeros((), device=ce.device)
        else:
            with torch.no_grad():
                teacher = self.teacher(self.as_input(batch["hr"]))
            distill = self.distillation(student, teacher)
        loss = ce + self.distill_weight * distill
        terms = {"ce": ce, "distill": distill}
        if self.logit_loss is not None:
            if teacher is None:
                with torch.no_grad():
                    teacher = self.teacher(self.as_input(batch["hr"]))
            terms["logit"] = self.logit_distillation(student.embedding, teacher.embedding)
            loss = loss + self.logit_loss.default_weight * terms["logit"]
            self.log("train/logit", terms["logit"])
        self.check_finite(batch_idx, **terms, loss=loss)
        self.log("train/distill", distill)
        self.log("train/loss", loss)
        return loss

    def _cross_training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """``fskd_cross``: anchors and positives go through the student as one batch (one set of BatchNorm
        statistics, as the authors run them), and through the teacher; CE and the point term on the anchors, the
        cross-sample term on the last-stage maps of both (student maps after the hint adapters)."""
        if "lr_positive" not in batch:
            raise ValueError("fskd_cross needs batches with positives (lr_positive, hr_positive, has_positive): "
                             "the DataModule's set_positives was not called")
        count = batch["lr"].shape[0]
        student = self.backbone(self.as_input(torch.cat([batch["lr"], batch["lr_positive"]])))
        ce = self.classification_loss(student.embedding[:count], batch["label"], "train")
        zero = torch.zeros((), device=ce.device)
        distill, cross, logit = zero, zero, None
        if self.distill_weight != 0.0 or self.cross_weight != 0.0 or self.logit_loss is not None:
            with torch.no_grad():
                teacher = self.teacher(self.as_input(torch.cat([batch["hr"], batch["hr_positive"]])))
            student_maps = self.hints(student.features)
            if self.distill_weight != 0.0:
                distill = self.distill_loss([m[:count] for m in student_maps],
                                            [t[:count] for t in teacher.features])
            if self.cross_weight != 0.0:
                last, teacher_last = student_maps[-1], teacher.features[-1]
                cross = self.cross_loss(last[:count], last[count:], teacher_last[:count], teacher_last[count:],
                                        mask=batch["has_positive"])
            if self.logit_loss is not None:
                logit = self.logit_distillation(student.embedding[:count], teacher.embedding[:count])
        loss = ce + self.distill_weight * distill + self.cross_weight * cross
        terms = {"ce": ce, "distill": distill, "cross": cross}
        if logit is not None:
            loss = loss + self.logit_loss.default_weight * logit
            terms["logit"] = logit
            self.log("train/logit", logit)
        self.check_finite(batch_idx, **terms, loss=loss)
        self.log("train/distill", distill)
        self.log("train/cross", cross)
        self.log("train/loss", loss)
        return loss

    def logit_distillation(self, student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
        """Hinton KD between the margin-free logits of the student's and the teacher's heads (``logit_distill``)."""
        with torch.no_grad():
            teacher_logits = self.teacher_head.logits(teacher_embedding)
        return self.logit_loss(self.head.logits(student_embedding), teacher_logits)

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

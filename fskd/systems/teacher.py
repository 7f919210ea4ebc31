"""`TeacherModule`: margin-softmax training of a face recogniser.

Trains on the DataModule's ``lr`` view, which is the HR image for ``train_resolution: 112`` (the teacher) and the
degraded image otherwise, so the same module trains the no-distillation low-resolution baselines.
"""

from __future__ import annotations

import torch

from fskd.systems.base import FaceRecognitionModule


class TeacherModule(FaceRecognitionModule):
    """Backbone + margin head, cross-entropy on the margin logits (see `FaceRecognitionModule` for arguments)."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        embedding = self.backbone(self.as_input(batch["lr"])).embedding
        loss = self.classification_loss(embedding, batch["label"], "train")
        self.check_finite(batch_idx, ce=loss)
        self.log("train/loss", loss)
        return loss

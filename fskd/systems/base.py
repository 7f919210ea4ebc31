"""Shared system code: backbone + margin head, the authors' optimiser and schedule, verification at every resolution."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fskd.evaluation.metric import VerificationMetric
from fskd.models import create_backbone, create_head

log = logging.getLogger(__name__)

PAPER_MILESTONES = (18000, 28000, 36000, 44000)


class FaceRecognitionModule(L.LightningModule):
    """Backbone + margin head trained with SGD and a per-iteration MultiStep schedule.

    Args:
        num_classes: training identities; the CLI links it from the DataModule, so configs never repeat it.
        backbone: factory name (``iresnet18/34/50/100``); ``mode`` ``ir``/``se``/``cbam``; ``neck`` ``gap``
            (the authors' paper-era global average pooling) or ``fc`` (insightface BN-Dropout-FC-BN); ``width``
            multiplies the stage widths (tiny CPU/test models).
        head: ``cosface`` (authors' default, s=30, m=0.25), ``arcface``, ``adaface`` or ``softmax``;
            ``head_kwargs`` overrides e.g. ``{"s": 64, "m": 0.5}``.
        lr, momentum, nesterov, weight_decay: SGD as the authors (weight decay on every parameter).
        milestones, gamma: learning-rate decay points in optimizer steps (iterations), as the authors.
        protocols: verification protocols computed at validation; the first is logged as ``acc``.
    """

    monitor = "val/mean_acc"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "iresnet50",
        mode: str = "ir",
        neck: str = "gap",
        width: float = 1.0,
        embedding_size: int = 512,
        dropout: float = 0.0,
        head: str = "cosface",
        head_kwargs: dict[str, float] | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        milestones: Sequence[int] = PAPER_MILESTONES,
        gamma: float = 0.1,
        protocols: Sequence[str] = ("fskd", "insightface"),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, mode=mode, neck=neck, width=width,
                                        embedding_size=embedding_size, dropout=dropout)
        self.head = create_head(head, embedding_size, num_classes, **(head_kwargs or {}))
        self.val_metrics = nn.ModuleList()
        self.val_specs: list = []

    # -- model -------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of normalised images (B, 3, 112, 112)."""
        return self.backbone(images).embedding

    def classification_loss(self, embedding: torch.Tensor, labels: torch.Tensor, prefix: str) -> torch.Tensor:
        logits = self.head(embedding, labels)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log(f"{prefix}/ce", loss, prog_bar=True)
        self.log(f"{prefix}/acc", accuracy)
        return loss

    # -- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                                    weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.milestones), gamma=hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation --------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        specs = list(getattr(datamodule, "val_specs", []) or [])
        if specs and len(self.val_metrics) != len(specs):
            self.val_specs = specs
            self.val_metrics = nn.ModuleList(
                VerificationMetric(spec.issame, protocols=tuple(self.hparams.protocols)) for spec in specs
            ).to(self.device)

    def _evaluation_step(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> None:
        if not self.val_metrics:
            return
        count = batch["image"].shape[0]
        embeddings = self(torch.cat([batch["image"], batch["flipped"]]))
        self.val_metrics[dataloader_idx].update(batch["index"], embeddings[:count].float(),
                                                embeddings[count:].float())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"index": batch["index"], "embedding": self(batch["image"]).float()}

    def _log_verification(self, stage: str) -> None:
        if not self.val_metrics:
            return
        if self.trainer.sanity_checking:
            # The sanity check sees only a few batches: not every pair, so no accuracy to report.
            for metric in self.val_metrics:
                metric.reset()
            return
        primary = []
        for spec, metric in zip(self.val_specs, self.val_metrics, strict=True):
            values = metric.compute()
            metric.reset()
            for key, value in values.items():
                # Every rank holds the same gathered value, so no cross-rank reduction is needed.
                self.log(f"{stage}/{spec.name}/{spec.tag}/{key}", value, sync_dist=False, rank_zero_only=False)
            primary.append(values["acc"])
        self.log(f"{stage}/mean_acc", torch.stack([torch.as_tensor(v) for v in primary]).mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_verification("val")

    def on_test_epoch_end(self) -> None:
        self._log_verification("test")

"""Shared system code: backbone + margin head, the authors' optimiser and schedule, verification at every resolution."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fskd.models import create_backbone, create_head
from fskd.models.loading import IMPORT_KEY
from fskd.systems.metric import VerificationMetric

log = logging.getLogger(__name__)

PAPER_MILESTONES = (18000, 28000, 36000, 44000)


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss (`FaceRecognitionModule.check_finite`). Under DDP the processes agree on it first, so it is
    raised on every process at the same step: ``raised_on_every_process`` tells the failure handling
    (`fskd.callbacks.failures`) that the processes may still save a checkpoint together."""

    raised_on_every_process = True


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
        check_finite_loss: stop with a `NonFiniteLossError` (a `FloatingPointError`) naming the step and the
            loss terms when a loss is NaN or infinite, before the backward pass, so that the weights (and the
            checkpoint written on the way out) are those of the last good step; the buffers the failed forward
            pass updated (BatchNorm running statistics) are put back too. Costs a copy of those buffers, one host
            synchronisation and, under DDP, one tiny all-reduce (so that every process stops together) per step.
        check_labels: the head checks ``0 <= label < num_classes`` on every step (one more host
            synchronisation). Off by default: the datasets already check every label against the number of
            classes on the CPU, in the loader, and name the record (the CLI links ``num_classes`` from them).
        channels_last, fused_optimizer, compile: GPU speed options, off by default (docs/benchmarks.md has
            what each was measured to give). ``channels_last`` stores the convolution weights and inputs
            NHWC; ``fused_optimizer`` uses SGD's fused kernel (``torch.optim.SGD(fused=True)``); ``compile``
            compiles the backbone (and a distillation teacher) in place with `torch.compile` (state-dict keys
            unchanged, so checkpoints stay interchangeable), at the cost of a long first step.
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
        check_finite_loss: bool = True,
        check_labels: bool = False,
        channels_last: bool = False,
        fused_optimizer: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, mode=mode, neck=neck, width=width,
                                        embedding_size=embedding_size, dropout=dropout)
        self.head = create_head(head, embedding_size, num_classes, check_labels=check_labels,
                                **(head_kwargs or {}))
        self._speed_options_applied = False
        self._channels_last_active = False
        self.val_metrics = nn.ModuleList()
        self.val_specs: list = []
        self._buffers_before_step: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- model -------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of normalised images (B, 3, 112, 112)."""
        return self.backbone(self.as_input(images)).embedding

    def as_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the memory format the convolutions were set up for (NHWC with ``channels_last``)."""
        if self._channels_last_active:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def compiled_modules(self) -> list[nn.Module]:
        """Modules that ``compile`` compiles: the backbone (DistillModule adds its teacher)."""
        return [self.backbone]

    def configure_model(self) -> None:
        # Lightning calls this hook before every fit/validate/test/predict; apply the options once.
        if self._speed_options_applied:
            return
        self._speed_options_applied = True
        if self.hparams.get("channels_last", False):
            device = self._trainer.strategy.root_device if self._trainer is not None else self.device
            if device.type == "cuda":
                self.to(memory_format=torch.channels_last)
                self._channels_last_active = True
            else:
                # Measured no faster on the CPU (docs/benchmarks.md), and torch 2.14's CPU backward crashed
                # (segfault) for channels_last iResNet-18 at widths 1/16 and 1/8 in fp32.
                log.warning("channels_last is a GPU option; ignored on %s", device)
        if self.hparams.get("compile", False):
            for module in self.compiled_modules():
                module.compile()

    def classification_loss(self, embedding: torch.Tensor, labels: torch.Tensor, prefix: str) -> torch.Tensor:
        logits = self.head(embedding, labels)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log(f"{prefix}/ce", loss, prog_bar=True)
        self.log(f"{prefix}/acc", accuracy)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.get("check_finite_loss", True):
            # Buffers that this step's forward pass may change (running statistics of modules in training mode).
            self._buffers_before_step = [
                (buffer, buffer.detach().clone()) for module in self.modules() if module.training
                for buffer in module.buffers(recurse=False)
            ]

    def check_finite(self, batch_idx: int, **terms: torch.Tensor) -> None:
        """Raise `NonFiniteLossError` if any loss term is NaN/inf on any process (all processes raise together).

        Called by ``training_step`` before it returns the loss, i.e. before backward and the optimizer step.
        """
        if not self.hparams.get("check_finite_loss", True):
            return
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        bad = not bool(torch.isfinite(values).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        with torch.no_grad():
            for buffer, saved in self._buffers_before_step:
                buffer.copy_(saved)
        where = ""
        if trainer is not None:
            where = f" (epoch {self.current_epoch}, batch {batch_idx} of the epoch, process {trainer.global_rank})"
        details = ", ".join(f"{name}={value.item():.6g}" for name, value in zip(terms, values, strict=True))
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {self.global_step + 1}{where}: {details} (a NaN/inf on any process "
            "stops all of them). Training stopped before this step's backward pass: the weights, and the "
            "checkpoint written on exit, are those after step " f"{self.global_step}; resuming from it continues "
            "with the next batch. Lower the learning rate or use --trainer.precision 32-true / bf16-mixed.")

    # -- optimisation ------------------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """An imported network (``fskd import-teacher``) may come without a margin head, or with one for other
        classes: evaluation and prediction never use the head, so this module's own is kept."""
        if IMPORT_KEY not in checkpoint:
            return
        state = checkpoint["state_dict"]
        stored = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        own = self.head.state_dict()
        if stored.keys() != own.keys() or any(stored[k].shape != v.shape for k, v in own.items()):
            log.info("imported checkpoint (%s): its margin head is not this model's; a new head is used",
                     checkpoint[IMPORT_KEY].get("format", "?"))
            for key in stored:
                del state[f"head.{key}"]
            state.update({f"head.{k}": v for k, v in own.items()})

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov,
                                    weight_decay=hp.weight_decay,
                                    fused=True if hp.get("fused_optimizer", False) else None)
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

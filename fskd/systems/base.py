"""Shared system code: backbone + margin head, the authors' optimiser and schedule, verification at every resolution."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fskd.models import create_backbone, create_head
from fskd.models.loading import IMPORT_KEY
from fskd.systems.checks import ALL_FINITE, TrainingChecks
from fskd.systems.metric import VerificationMetric

log = logging.getLogger(__name__)

PAPER_MILESTONES = (18000, 28000, 36000, 44000)

#: Steps between two host synchronisations of the training loop on an accelerator when neither ``sync_every``
#: nor the trainer says otherwise (Lightning's default ``log_every_n_steps``).
DEFAULT_SYNC_EVERY = 50


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss (`FaceRecognitionModule.check_finite`), found at a check of `fskd.systems.checks`. The
    processes agree on it first, so it is raised on every process at the same step: ``raised_on_every_process``
    tells the failure handling (`fskd.callbacks.failures`) that the processes may still save a checkpoint
    together.

    ``state`` is the training state of the last check passed before the bad step (a checkpoint dictionary, which
    `fskd.callbacks.FskdCheckpoint` writes instead of the live state, possibly corrupted since), or None when no
    check had passed in this fit (then nothing is saved).
    """

    raised_on_every_process = True

    def __init__(self, message: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.state = state


def _same_specs(first: list, second: list) -> bool:
    """Whether two lists of evaluation loaders (`fskd.data.datamodule.EvalSpec`) are the same loaders: set,
    resolution, cross-resolution flag and pair labels, in order."""
    return len(first) == len(second) and all(
        (a.name, a.resolution, a.cross) == (b.name, b.resolution, b.cross) and np.array_equal(a.issame, b.issame)
        for a, b in zip(first, second, strict=True))


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
            loss terms when a loss is NaN or infinite. The loss terms are checked on the device at every step
            and read at the checks of `fskd.systems.checks.TrainingChecks` (every ``sync_every`` steps), so a
            non-finite loss stops the run up to ``sync_every - 1`` steps late; the checkpoint written on the way
            out is then the complete state of the last check passed before it (weights, BatchNorm statistics,
            optimizer, counters, data position: what a checkpoint taken then would hold), kept on the device at
            every check. Costs that copy (the size of the weights and optimizer state) and, under DDP, nothing
            more than the all-reduce the checks run anyway.
        sync_every: optimizer steps between two host synchronisations of the training loop (the NaN check
            above and, under DDP, the agreement on SIGTERM; `fskd.systems.checks`), which also happen after the
            last batch of an epoch, before a validation or a step checkpoint, and when training ends. ``None``:
            every step on a CPU (a synchronisation costs nothing there, and a NaN is then caught at its step),
            ``trainer.log_every_n_steps`` (Lightning's default 50) on an accelerator, where the loggers and the
            progress bar read the logged values at those same steps.
        check_labels: the head checks ``0 <= label < num_classes`` on every step (one more host
            synchronisation). Off by default: the datasets already check every label against the number of
            classes on the CPU, in the loader, and name the record (the CLI links ``num_classes`` from them).
        eval_fp32: validation, test and predict embed in float32 even when the trainer's precision is mixed
            (``bf16-mixed``/``16-mixed`` autocast), so that accuracies do not depend on the training precision
            and compare with fp32 evaluations elsewhere. Measured with a real MobileFaceNet on ORL and Extended
            Yale B: bf16 autocast moves embeddings by 1.5-2 % and verification accuracies by up to 0.75 points
            at 14 px (docs/reliability.md). ``False`` embeds under the trainer's autocast (faster: 2.0-2.6x for
            tiny iResNet-18s on a 2-core CPU). True-half precisions (``bf16-true``) are left as they are.
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
        sync_every: int | None = None,
        check_labels: bool = False,
        channels_last: bool = False,
        fused_optimizer: bool = False,
        compile: bool = False,
        eval_fp32: bool = True,
    ) -> None:
        super().__init__()
        if sync_every is not None and sync_every < 1:
            raise ValueError(f"sync_every must be a positive number of steps or None, got {sync_every}")
        self.save_hyperparameters()
        self.backbone = create_backbone(backbone, mode=mode, neck=neck, width=width,
                                        embedding_size=embedding_size, dropout=dropout)
        self.head = create_head(head, embedding_size, num_classes, check_labels=check_labels,
                                **(head_kwargs or {}))
        self._speed_options_applied = False
        self._channels_last_active = False
        self.val_metrics = nn.ModuleList()
        self.val_specs: list = []
        self._computed_sets: dict[int, dict[str, torch.Tensor]] = {}  # this evaluation's finished sets
        # The device-side NaN record of `check_finite` (see `finite_loss_state`).
        self._loss_terms: tuple[str, ...] = ()
        self._loss_history: torch.Tensor | None = None
        self._first_nonfinite: torch.Tensor | None = None
        self._step_places: deque[tuple[int, int, int]] = deque()

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
        # Not prog_bar: Lightning converts progress-bar values to numbers after every batch (a host
        # synchronisation); fskd's ProgressBar reads them at its own, sparser updates.
        self.log(f"{prefix}/ce", loss)
        self.log(f"{prefix}/acc", accuracy)
        return loss

    # -- non-finite losses and host synchronisation ------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        """`TrainingChecks`, which reads the NaN record of `check_finite` every `sync_interval` steps."""
        return [TrainingChecks()]

    def sync_interval(self) -> int:
        """Optimizer steps between two checks of `TrainingChecks` (see ``sync_every``)."""
        every = self.hparams.get("sync_every")
        if every is not None:
            return int(every)
        if self.device.type == "cpu":
            return 1
        trainer = self._trainer
        return int(getattr(trainer, "log_every_n_steps", 0) or DEFAULT_SYNC_EVERY)

    def on_train_start(self) -> None:
        self._loss_history = self._first_nonfinite = None

    def check_finite(self, batch_idx: int, **terms: torch.Tensor) -> None:
        """Record, on the device and without waiting for it, whether the loss terms of this step are finite.

        Called by ``training_step`` with every term of its loss. `TrainingChecks` reads the record every
        `sync_interval` steps and raises `nonfinite_error` for the first step whose terms were not finite, on
        every process together.
        """
        if not self.hparams.get("check_finite_loss", True):
            return
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        step, window = self.global_step + 1, self.sync_interval()
        history = self._loss_history
        if history is None or history.shape != (window, len(values)) or history.device != values.device:
            self._loss_terms = tuple(terms)
            self._loss_history = values.new_full((window, len(values)), float("nan"))
            self._first_nonfinite = torch.full((), ALL_FINITE, dtype=torch.int64, device=values.device)
            self._step_places = deque(maxlen=window)
        # The last `window` steps' terms (a check comes at least every `window` steps), for the message.
        self._loss_history[step % window] = values
        self._step_places.append((step, self.current_epoch, batch_idx))
        bad = ~torch.isfinite(values).all()
        torch.maximum(self._first_nonfinite, torch.where(bad, -step, ALL_FINITE), out=self._first_nonfinite)

    def finite_loss_state(self) -> torch.Tensor | None:
        """The device-side NaN record (int64 scalar): `ALL_FINITE`, or minus the first optimizer step whose loss
        terms were not finite; None when ``check_finite_loss`` is off or no step was recorded in this fit."""
        if not self.hparams.get("check_finite_loss", True):
            return None
        return self._first_nonfinite

    def nonfinite_error(self, step: int, checked_step: int, state: dict[str, Any] | None) -> NonFiniteLossError:
        """The error for a non-finite loss at optimizer ``step`` (on this or another process), found at the check
        after ``checked_step``; ``state`` is the training state of the last check passed (see
        `NonFiniteLossError`). Names this process's loss terms at that step."""
        trainer = self._trainer
        where = ""
        place = next(((epoch, batch) for s, epoch, batch in self._step_places if s == step), None)
        if trainer is not None and place is not None:
            where = f" (epoch {place[0]}, batch {place[1]} of the epoch, process {trainer.global_rank})"
        details = "?"
        if self._loss_history is not None and place is not None:
            values = self._loss_history[step % len(self._loss_history)].tolist()
            details = ", ".join(f"{name}={value:.6g}" for name, value in zip(self._loss_terms, values, strict=True))
        interval = self.sync_interval()
        found = "" if checked_step == step else (
            f"; found at the check after step {checked_step}, the loss being read every {interval} steps "
            "(--model.sync_every)")
        if state is not None:
            saved = int(state["global_step"])
            outcome = (f"The checkpoint written on exit holds the state after step {saved}, the last check passed "
                       "(weights, BatchNorm statistics, optimizer, counters, data position, as a checkpoint taken "
                       f"then): resuming from it trains steps {saved + 1}.. again on the same batches, so start a "
                       "new run to change the recipe.")
        else:
            outcome = ("No check had passed in this fit before it, so nothing is saved for it: the checkpoints "
                       "written before (the one this fit resumed from, if any) stay as they are.")
        return NonFiniteLossError(
            f"non-finite loss at optimizer step {step}{where}: {details} (a NaN/inf on any process stops all of "
            f"them{found}). {outcome} Lower the learning rate or use --trainer.precision 32-true / bf16-mixed.",
            state)

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
        # Rebuilt whenever the loaders differ, not only in number: a module validated again with another
        # datamodule of as many loaders kept the first one's names and pair labels, and logged each set's
        # accuracy under another set's name.
        if specs and not _same_specs(specs, self.val_specs):
            self.val_specs = specs
            self.val_metrics = nn.ModuleList(
                VerificationMetric(spec.issame, protocols=tuple(self.hparams.protocols)) for spec in specs
            ).to(self.device)

    def _evaluation_step(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> None:
        if not self.val_metrics:
            return
        self._compute_finished_sets(dataloader_idx)
        count = batch["image"].shape[0]
        embeddings = self._evaluation_embeddings(torch.cat([batch["image"], batch["flipped"]]))
        self.val_metrics[dataloader_idx].update(batch["index"], embeddings[:count].float(),
                                                embeddings[count:].float())

    def _compute_finished_sets(self, current: int) -> None:
        """Compute and free the metrics of the evaluation loaders before ``current``.

        Lightning reads the evaluation loaders one after another, so when loader ``current`` sends its first
        batch every earlier one is complete: its accuracy is computed then (a collective under DDP, reached by
        every process at the same loader) and its features are freed, so that a validation holds the features of
        one (set, resolution) at a time instead of all 12-15 until its end. Not during the sanity check, whose
        few batches cover no set.
        """
        if self.trainer.sanity_checking:
            return
        for position in range(current):
            if position not in self._computed_sets:
                self._computed_sets[position] = self.val_metrics[position].compute()
                self.val_metrics[position].reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"index": batch["index"], "embedding": self._evaluation_embeddings(batch["image"]).float()}

    def _evaluation_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings for evaluation: outside the trainer's autocast with ``eval_fp32`` (the weights of a mixed
        precision are float32 already), else as the trainer runs them."""
        device_type = images.device.type
        if self.hparams.get("eval_fp32", True) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self(images.float())
        return self(images)

    def _log_verification(self, stage: str) -> None:
        if not self.val_metrics:
            return
        if self.trainer.sanity_checking:
            # The sanity check sees only a few batches: not every pair, so no accuracy to report.
            for metric in self.val_metrics:
                metric.reset()
            self._computed_sets = {}
            return
        self._compute_finished_sets(len(self.val_metrics))
        computed, self._computed_sets = self._computed_sets, {}
        primary = []
        for position, spec in enumerate(self.val_specs):
            values = computed[position]
            for key, value in values.items():
                # Every rank holds the same gathered value, so no cross-rank reduction is needed.
                self.log(f"{stage}/{spec.name}/{spec.tag}/{key}", value, sync_dist=False, rank_zero_only=False)
            primary.append(values["acc"])
        self.log(f"{stage}/mean_acc", torch.stack([torch.as_tensor(v) for v in primary]).mean(), prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        self._computed_sets = {}  # nothing left over from an evaluation that stopped part-way

    def on_test_epoch_start(self) -> None:
        self._computed_sets = {}

    def on_validation_epoch_end(self) -> None:
        self._log_verification("val")

    def on_test_epoch_end(self) -> None:
        self._log_verification("test")

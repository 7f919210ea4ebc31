"""A quiet, truthful console: a progress bar without a made-up epoch total, a model summary without a FLOPs
count nobody measured, and no third-party advertising or warnings a user cannot act on.

`quiet_console` is called by every ``fskd fit|validate|test|predict`` (and so by ``fskd demo``); it is
idempotent. The filters it installs are process-wide on purpose: a ``warnings.catch_warnings`` block around one
run (as the demo has) would otherwise drop a filter that was added while it was open.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.utilities import rank_zero_info

#: Warnings fskd has decided about; each line says why it is not the user's to act on.
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # DistillModule keeps its frozen teacher in eval mode on purpose (BN statistics stay the teacher's).
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
    # Evaluating a checkpoint from another folder: the best-k bookkeeping of the fit is not needed.
    (r"The dirpath has changed from", UserWarning),
    # The model summary cannot size bf16 parameters; fskd's summary prints parameter counts only.
    (r"Precision .* is not supported by the model summary", UserWarning),
    # torch deprecating an API Lightning still uses (LeafSpec); nothing in fskd or its configs causes it.
    (r".*isinstance\(treespec, LeafSpec\)", FutureWarning),
)


#: Starts of Lightning info lines that say nothing to an fskd user.
QUIET_INFO: tuple[str, ...] = (
    "💡 Tip",  # advertising for hosted services ("try installing litlogger / litmodels")
    "Trainer already configured with model summary callbacks",  # fskd's own ParameterSummary, by design
)


class _QuietInfo(logging.Filter):
    """Drops the Lightning info lines of `QUIET_INFO`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(QUIET_INFO)


_FILTER = _QuietInfo()


def quiet_console() -> None:
    """Install the warning filters and the info-line filter (once per process)."""
    for message, category in QUIET_WARNINGS:
        if not any(f[1] is not None and f[1].pattern == message for f in warnings.filters):
            warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, truthful for step-based recipes: "Epoch 6 of a 47000-step run" instead of
    "Epoch 6/-2" (``max_epochs: -1``), and without the logger's version number among the metrics.

    Reading a logged value is a host synchronisation (the host waits for the device to compute it), so the
    training values are read at sparse steps only: ``train_metrics`` (those logged, from the trainer's callback
    metrics; the systems log them without ``prog_bar``, which Lightning would read after every batch) are
    shown every ``metrics_every`` optimizer steps, and at the end of an epoch and of a validation. ``None``: at the
    checks of the module (``sync_interval``, see `fskd.systems.checks`), else every
    ``trainer.log_every_n_steps`` steps, so that the bar reads the device when the loop does anyway. The bar
    itself still advances after every batch (host-side only).
    """

    def __init__(self, *args: Any, metrics_every: int | None = None,
                 train_metrics: Sequence[str] = ("train/ce", "train/distill"), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if metrics_every is not None and metrics_every < 1:
            raise ValueError(f"metrics_every must be a positive number of steps or None, got {metrics_every}")
        self.metrics_every = metrics_every
        self.train_metrics = tuple(train_metrics)

    def metrics_due(self, trainer: Any, pl_module: Any) -> bool:
        """Whether the batch that just ended updates the metrics shown (see the class doc)."""
        every = self.metrics_every
        if every is None:
            interval = getattr(pl_module, "sync_interval", None)
            every = interval() if callable(interval) else (getattr(trainer, "log_every_n_steps", 0) or 50)
        return trainer.global_step % every == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # RichProgressBar's own, with the metrics updated only when due.
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed in the middle of an epoch
        self._update(self.train_progress_bar_id, batch_idx + 1)
        if self.metrics_due(trainer, pl_module):
            self._update_metrics(trainer, pl_module)
        self.refresh()

    @property
    def total_train_batches(self) -> int | float:
        """Batches left in a step-limited run: Lightning counts the steps left as batches, so with
        ``accumulate_grad_batches: 8`` its bar read "32/4" (batches of 4 optimizer steps)."""
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            remaining = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            return min(trainer.num_training_batches, remaining)
        return super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return f"Epoch {current_epoch} of a {trainer.max_steps}-step run"
        return f"Epoch {current_epoch}"

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        logged = trainer.callback_metrics
        for name in self.train_metrics:
            value = logged.get(name)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                metrics[name] = value.item()
        return metrics


class ParameterSummary(ModelSummary):
    """The model's top-level modules with their parameter counts and mode, and the totals; no FLOPs line
    (Lightning prints "Total FLOPs: 0" unless the model defines an example input)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        widths = [max(len(name), *(len(v) for v in values)) if values else len(name) for name, values in columns]
        rows = [" | ".join(name.ljust(width) for (name, _), width in zip(columns, widths, strict=True))]
        rows.append("-" * len(rows[0]))
        for index in range(len(columns[0][1]) if columns else 0):
            rows.append(" | ".join(values[index].ljust(width)
                                   for (_, values), width in zip(columns, widths, strict=True)))
        frozen = total_parameters - trainable_parameters
        rows.append(f"{trainable_parameters:,} trainable and {frozen:,} frozen parameters "
                    f"({model_size:,.1f} MB in float32)")
        rank_zero_info("\n" + "\n".join(rows))

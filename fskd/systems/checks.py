"""`TrainingChecks`: at most one host synchronisation of the training loop every few steps.

A training step only queues work on the device; the host runs ahead (the next batch's transfer, flips,
degradation, forward pass) as long as nothing reads a device value back. What the loop must read, whether a loss
was NaN/inf (`fskd.systems.base.FaceRecognitionModule.check_finite` records it on the device) and whether any
process got SIGTERM (`fskd.callbacks.GracefulSigterm` registers it with `TrainingChecks.add_host_flag`), is read
together, at the end of every ``sync_every``-th optimizer step (``FaceRecognitionModule.sync_interval``: every
step on a CPU, ``trainer.log_every_n_steps`` steps elsewhere) and wherever the training state is about to be
used or left: after the last batch of an epoch, before a validation or a checkpoint of ``every_n_train_steps``,
at the last step, when training ends, and at once in a single process that got SIGTERM. Under DDP it is one
all-reduce (MAX) of one small integer tensor, then one read of it; in one process just the read.

The NaN guard keeps, at every check it passes, a copy on the device of the whole training state: what a
checkpoint written then would hold (weights, BatchNorm statistics, optimizer, schedule, loop counters, data
position, RNGs). A non-finite loss is found at the first check after it, up to ``sync_every - 1`` steps late,
and the steps in between may have written NaN into the weights: the `NonFiniteLossError` raised then carries the
copy of the last check passed (its ``state``), which `fskd.callbacks.FskdCheckpoint` writes on the way out
instead of the live state. The copy costs the device memory of the weights and optimizer state (about 0.3 GB
for iResNet-50 with its CASIA-WebFace head) and one device-side copy of them per check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection

#: The value of the device-side NaN record (`FaceRecognitionModule.finite_loss_state`) while every loss was
#: finite; otherwise it holds minus the first step whose loss was not (so that a MAX all-reduce gives the
#: earliest step of all processes).
ALL_FINITE = -(2**62)

#: Checkpoint keys that Lightning leaves out of a ``save_weights_only`` checkpoint (besides the precision
#: plugin's state, named after its class).
NOT_IN_WEIGHTS_ONLY = ("callbacks", "optimizer_states", "lr_schedulers")


class HostFlag(NamedTuple):
    """A host-side condition the processes agree on at every check: ``act(trainer)`` runs on every process when
    ``read()`` was true on any of them."""

    read: Callable[[], bool]
    act: Callable[[L.Trainer], None]


def validation_due(trainer: L.Trainer) -> bool:
    """Whether Lightning runs a validation after the current training batch (read in ``on_train_batch_end``)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    try:
        return bool(epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except Exception:  # another Lightning version: assume it does (a check too many, never one too few)
        return True


def training_state(trainer: L.Trainer) -> dict[str, Any]:
    """What a checkpoint written now would hold, every tensor copied where it is (no host synchronisation)."""
    state = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    return apply_to_collection(state, torch.Tensor, lambda tensor: tensor.detach().clone())


def weights_only(state: dict[str, Any], trainer: L.Trainer) -> dict[str, Any]:
    """``state`` (a full checkpoint) as Lightning's ``weights_only`` dump would hold it."""
    left_out = {*NOT_IN_WEIGHTS_ONLY, type(trainer.precision_plugin).__qualname__}
    return {key: value for key, value in state.items() if key not in left_out}


class TrainingChecks(L.Callback):
    """Reads the NaN record of the module and the host flags of other callbacks together, every few steps (see
    the module doc), keeps the state of the last check passed, and raises the module's `NonFiniteLossError`
    (``nonfinite_error``) at the first check that finds a non-finite loss.

    `fskd.systems.base.FaceRecognitionModule` adds it to every trainer it is fitted with
    (``configure_callbacks``); modules without ``sync_interval``/``finite_loss_state`` are checked every step,
    for the host flags only.
    """

    def __init__(self) -> None:
        self._flags: list[HostFlag] = []
        self._state: dict[str, Any] | None = None
        self._checked_step: int | None = None

    def add_host_flag(self, read: Callable[[], bool], act: Callable[[L.Trainer], None]) -> None:
        """Agree on ``read()`` at every check: ``act(trainer)`` runs on every process when it was true on any."""
        if not any(flag.read == read for flag in self._flags):
            self._flags.append(HostFlag(read, act))

    @property
    def state(self) -> dict[str, Any] | None:
        """The training state of the last check passed (None before the first one of this fit)."""
        return self._state

    # -- when --------------------------------------------------------------------------------------------------
    def due(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether the current training batch (its ``on_train_batch_end``) ends with a check."""
        step = trainer.global_step
        interval = pl_module.sync_interval() if hasattr(pl_module, "sync_interval") else 1
        if step % interval == 0 or trainer.should_stop:
            return True
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or 0 < trainer.max_steps <= step:
            return True
        for callback in trainer.checkpoint_callbacks:
            every = getattr(callback, "_every_n_train_steps", 0) or 0
            if (every > 0 and step % every == 0) or getattr(callback, "_train_time_interval", None) is not None:
                return True  # a time-based checkpoint may come after any batch: check every batch
        if validation_due(trainer):
            return True
        # One process: a requested stop (SIGTERM) needs no agreement, only the NaN check before its checkpoint.
        return trainer.world_size == 1 and any(flag.read() for flag in self._flags)

    # -- hooks -------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._state, self._checked_step = None, None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.due(trainer, pl_module):
            self.check(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A stop that no check foresaw (a callback's should_stop, max_time): check before the final save.
        if self._checked_step != trainer.global_step:
            self.check(trainer, pl_module)

    # -- the check ---------------------------------------------------------------------------------------------
    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read the NaN record and the host flags (one all-reduce under DDP, one device read), then raise on a
        non-finite loss, act on the flags agreed, or keep the state of this check."""
        self._checked_step = trainer.global_step
        loss_state = pl_module.finite_loss_state() if hasattr(pl_module, "finite_loss_state") else None
        host = [bool(flag.read()) for flag in self._flags]
        distributed = (trainer.world_size > 1 and torch.distributed.is_available()
                       and torch.distributed.is_initialized())
        first_bad = None
        if loss_state is None and not (distributed and host):
            agreed = host  # nothing on the device and nothing to agree on: no synchronisation
        else:
            device = loss_state.device if loss_state is not None else pl_module.device
            # torch.full, not torch.tensor(host): no blocking host-to-device copy.
            parts = [torch.full((), int(value), dtype=torch.int64, device=device) for value in host]
            values = torch.stack([*parts, *([loss_state] if loss_state is not None else [])])
            if distributed:
                torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
            read = values.tolist()  # the one host synchronisation of these steps
            agreed = [bool(value) for value in read[:len(host)]]
            if loss_state is not None and read[-1] != ALL_FINITE:
                first_bad = -read[-1]
        if first_bad is not None:
            raise pl_module.nonfinite_error(first_bad, trainer.global_step, self._state)
        for flag, value in zip(self._flags, agreed, strict=True):
            if value:
                flag.act(trainer)
        if loss_state is not None and not any(agreed):
            # A stop agreed on saves the live state, checked just now; otherwise keep it for a later NaN.
            self._state = None  # free the previous copy before making the next one
            self._state = training_state(trainer)

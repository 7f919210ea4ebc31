"""Callbacks that make a resumed run continue exactly: the checkpoint at the end of training, the global RNGs.

`FskdCheckpoint` is Lightning's ``ModelCheckpoint`` with fixes for resuming: ``last.ckpt`` is always
rewritten when training ends (Lightning skips it when the run already wrote one, so a run stopped by
``max_steps`` between validations left a stale one), a fit stopped mid-epoch by ``max_steps`` is recorded as
mid-epoch (Lightning's epoch count would drift by one on resume), and ``save_on_exception`` saves only while
fitting (``validate``/``test`` failing would otherwise overwrite the run's ``last.ckpt`` with a checkpoint
without optimizer state), names what it saves after the cause (``exception-epoch=0-step=3.ckpt``,
``sigterm-...``; ``last.ckpt`` gets the same state) and, under DDP, saves only for exceptions raised on every
process together (`fskd.callbacks.failures`): a save after a rank-local failure would hang the run. After a
non-finite loss it writes the state of the last check passed (`fskd.systems.base.NonFiniteLossError`), not the
live one. Before the first step of a fit it checks that its folder can be written (on global rank 0), so that
an unwritable ``--checkpoint.dirpath`` fails at once rather than at the first checkpoint, hours later.

`GracefulSigterm` replaces Lightning's SIGTERM handler during ``fit``. Lightning 2.6's handler broadcasts
from inside the signal handler and forwards the signal to the processes it launched; when every process gets
SIGTERM (SLURM, ``kill`` of a process group) the processes run mismatched collectives and crash without a
checkpoint. Here the handler only records the request; the processes agree on it at the checks of
`fskd.systems.checks.TrainingChecks` (the same all-reduce as the NaN check: every ``sync_every`` steps, every
step on a CPU), or, for a module without them, at the end of every training batch, and all stop together at the
same batch boundary, after that step's validation if one is due, through Lightning's usual SIGTERM path
(checkpoint written by ``save_on_exception``). Lightning's own per-step broadcast of its SIGTERM flag (a host
synchronisation per step under DDP) is turned off for those fits: only this agreement sets the flag.

`GlobalRNGState` saves the global torch (CPU and current CUDA device), numpy and Python ``random`` states
in every checkpoint and puts them back when training resumes. The training order, the flips and the
degradation have their own generators (``fskd.data.datamodule``); the global torch generator still drives dropout
and anything a user adds. The states are stored as tensors and plain numbers, so checkpoints stay loadable
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from fskd.callbacks.failures import describe_exception, raised_on_every_process
from fskd.systems.base import NonFiniteLossError
from fskd.systems.checks import TrainingChecks, validation_due, weights_only

log = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of this process, in a weights-only-loadable form."""
    numpy_state = np.random.get_state(legacy=True)
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(numpy_state[0]),
            "keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": int(python_version), "gauss_next": python_gauss,
                   "internal": torch.tensor(python_internal, dtype=torch.int64)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (missing parts are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), int(saved["pos"]),
                             int(saved["has_gauss"]), float(saved["cached_gaussian"])))
    if "python" in state:
        saved = state["python"]
        random.setstate((int(saved["version"]), tuple(int(v) for v in saved["internal"].tolist()),
                         saved["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


class GlobalRNGState(L.Callback):
    """Saves the global RNG states with every checkpoint and restores them when a resumed fit starts training.

    They are applied at ``on_train_start`` (after the sanity check and after the training loader's iterator
    exists), the point that matches where the saving run continued. Every process gets the states of rank 0:
    all ranks are seeded alike and draw alike, so they hold the same states anyway.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is not None:
            restore_rng_state(self._to_restore)
            self._to_restore = None


def exception_prefix(exception: BaseException) -> str:
    """The prefix of the checkpoint saved on the way out of ``exception``: ``sigterm`` for SIGTERM (a requested
    stop), ``exception`` otherwise, so that ``sigterm-epoch=0-step=3.ckpt`` / ``exception-epoch=0-step=3.ckpt``
    are never mistaken for the checkpoints of regular validations (``epoch=0-step=3.ckpt``)."""
    return "sigterm" if isinstance(exception, SIGTERMException) else "exception"


def unwritable_folder(folder: str | os.PathLike) -> str | None:
    """Why checkpoints cannot be written into ``folder`` (created if missing), or None when they can.

    Tried by creating and deleting a file there, not with ``os.access``: as root, ``os.access`` (and the mode
    bits) say yes to everything, while a read-only mount or a parent that is a file still say no.
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".fskd-write-test-"):
            pass
    except OSError as error:
        return f"{type(error).__name__}: {error.strerror or error}"
    return None


@contextmanager
def dumping(trainer: L.Trainer, state: dict[str, Any]) -> Iterator[None]:
    """Make ``trainer.save_checkpoint`` (and so every save of a ``ModelCheckpoint``) write ``state`` instead of the
    live training state, within the block."""
    connector = trainer._checkpoint_connector

    def dump_checkpoint(weights_only_: bool | None = False) -> dict[str, Any]:
        return weights_only(state, trainer) if weights_only_ else state

    connector.dump_checkpoint = dump_checkpoint  # an instance attribute shadows the method
    try:
        yield
    finally:
        del connector.dump_checkpoint


class FskdCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the final state of a fit (see the module doc)."""

    # A class attribute, not an __init__: the CLI reads the options from ModelCheckpoint's own signature.
    _saving_at_train_end = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's setup (it resolves the folder), then, for ``fit``, a write test of the folder on global rank
        0; every process raises the same one-line error if it fails."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.dirpath is None:
            return
        reason = unwritable_folder(self.dirpath) if trainer.is_global_zero else None
        reason = trainer.strategy.broadcast(reason)
        if reason is not None:
            raise OSError(f"{self.dirpath}: cannot write checkpoints into this folder ({reason}); nothing was "
                          "trained: pass a writable --checkpoint.dirpath (or --trainer.default_root_dir)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._saving_at_train_end = True
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            finally:
                self._saving_at_train_end = False
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """A fit stopped by ``max_steps`` in the middle of an epoch has already counted that epoch as finished
        when ``on_train_end`` runs; record it as unfinished, as a checkpoint taken after the same batch would,
        so that a resumed run keeps Lightning's epoch numbers (its data order does not depend on them)."""
        epoch_loop = trainer.fit_loop.epoch_loop
        if not self._saving_at_train_end or epoch_loop.batch_progress.is_last_batch:
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
        if not progress:
            return
        for counter in ("current", "total"):
            if progress[counter]["completed"] == progress[counter]["started"]:
                progress[counter]["processed"] -= 1
                progress[counter]["completed"] -= 1
        checkpoint["epoch"] = progress["current"]["completed"]

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Save the state on the way out of a fit: ``<cause>-epoch=E-step=S.ckpt`` (`exception_prefix`) and
        ``last.ckpt`` (the same state, so ``--ckpt_path last`` resumes from it). Not under DDP when the
        exception is rank-local (`fskd.callbacks.failures`): saving enters a barrier the other processes would
        never join; the checkpoints written before the failure stay as they are."""
        if trainer.state.fn != TrainerFn.FITTING or not self._should_save_on_exception(trainer):
            return
        if trainer.world_size > 1 and not raised_on_every_process(exception):
            log.error("%s on process %d only: no checkpoint is saved for it (the other processes cannot join a "
                      "save); --ckpt_path last resumes from the last checkpoint written before it",
                      type(exception).__name__, trainer.global_rank)
            return
        if isinstance(exception, NonFiniteLossError):
            self._save_state_of_last_check(trainer, exception)
            return
        monitor_candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(monitor_candidates, prefix=exception_prefix(exception))
        self._save_checkpoint(trainer, filepath)
        self._save_last_checkpoint(trainer, monitor_candidates)
        rank_zero_info(f"{describe_exception(exception)}: saved the state to {filepath} and to "
                       f"{self.last_model_path} (--ckpt_path last resumes from it)")

    def _save_state_of_last_check(self, trainer: L.Trainer, exception: NonFiniteLossError) -> None:
        """After a non-finite loss: the training state of the last check passed, as ``exception-...ckpt`` (named
        after that state's epoch and step) and ``last.ckpt``; nothing when no check had passed."""
        state = exception.state
        if state is None:
            rank_zero_info("NonFiniteLossError before the first check of this fit: nothing is saved for it")
            return
        monitor_candidates = self._monitor_candidates(trainer)
        monitor_candidates.update(epoch=torch.tensor(int(state["epoch"])),
                                  step=torch.tensor(int(state["global_step"])))
        filepath = self.format_checkpoint_name(monitor_candidates, prefix=exception_prefix(exception))
        with dumping(trainer, state):
            self._save_checkpoint(trainer, filepath)
            self._save_last_checkpoint(trainer, monitor_candidates)
        rank_zero_info(f"{describe_exception(exception)}: saved the state of step {int(state['global_step'])}, "
                       f"the last check passed, to {filepath} and to {self.last_model_path}")


class GracefulSigterm(L.Callback):
    """SIGTERM during ``fit``: stop every process at the same batch boundary, then save (see the module doc).

    ``requested`` is set by the signal handler of this process. The decision to stop is taken together at the
    checks of `TrainingChecks` when the module brings them (every ``sync_every`` steps under DDP; at once in a
    single process), else at every ``on_train_batch_end``. When validation is due after that batch, the stop
    waits for its end, so that no checkpoint is taken in the middle of a validation.
    """

    def __init__(self) -> None:
        self.requested = False
        self._after_validation = False
        self._delegated = False

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.requested:
            log.warning("received SIGTERM: stopping after the current training batch, then saving")
        self.requested = True

    def _install(self, trainer: L.Trainer) -> None:
        # Lightning registers its handlers just before the sanity check; replace them for this fit (Lightning
        # restores the original handlers when the fit ends).
        if trainer.state.fn == TrainerFn.FITTING and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            if trainer.received_sigterm:
                # Caught by Lightning's handler before this one was installed: agree on it like any other.
                trainer._signal_connector.received_sigterm = False
                self.requested = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        checks = [c for c in trainer.callbacks if isinstance(c, TrainingChecks)]
        self._delegated = stage == "fit" and bool(checks)
        if not self._delegated:
            return
        for callback in checks:
            callback.add_host_flag(self._read_requested, self._agreed)
        # Lightning broadcasts its SIGTERM flag before every training batch under DDP (a host synchronisation per
        # step); here the flag is set only by the agreement above, on every process at once, so it has nothing
        # to broadcast.
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = _no_broadcast

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._delegated:
            trainer.fit_loop.epoch_loop.__dict__.pop("_broadcast_sigterm_tensor", None)
            self._delegated = False

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def _read_requested(self) -> bool:
        return self.requested

    def _agreed(self, trainer: L.Trainer) -> None:
        """Every process learnt that some process got SIGTERM: stop after this batch (or its validation)."""
        self.requested = True
        if validation_due(trainer):
            self._after_validation = True
        else:
            self._stop(trainer)

    @staticmethod
    def _stop(trainer: L.Trainer) -> None:
        # Lightning raises SIGTERMException at the end of this batch (after validation) on every process.
        trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._after_validation:
            # The validation we waited for did not run (no validation data): stop after this batch.
            self._after_validation = False
            self._stop(trainer)
            return
        if self._delegated:
            return  # TrainingChecks agrees on the request (`_agreed`)
        stop = self.requested
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._agreed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            self._stop(trainer)


def _no_broadcast() -> None:
    """Stands in for Lightning's per-step SIGTERM broadcast in fits whose stop `GracefulSigterm` agrees on."""

"""Failures of one process in a multi-process (DDP) run: every process ends within seconds, none hangs.

Two kinds of exceptions reach Lightning's exception path under DDP:

* **raised on every process together**: SIGTERM (`GracefulSigterm` makes every process stop at the same batch
  boundary) and a non-finite loss (`fskd.systems.base.NonFiniteLossError`: the processes agree on it with an
  all-reduce first). All processes are at the same point, so they may still save a checkpoint together (it
  enters a barrier) - `raised_on_every_process` says which;
* **rank-local**: anything else (a corrupt record drawn by one process's loader, a CUDA out-of-memory, a bug
  hit by one process). The other processes are in a collective (the gradient all-reduce, a barrier) that the
  failing one will never join: a checkpoint save (its barrier) would mismatch them and the job would hang
  until the process-group timeout.

For a rank-local failure, `PeerFailureWatch` publishes "process R of W failed: <cause>" in the process group's
key-value store (a point-to-point message to the store, not a collective) and the failing process goes on
through its exception, saving nothing (`FskdCheckpoint` skips the save). Every other process has a thread
watching the store: it prints who failed and why, and ends its own process at once with status 1
(`os._exit`: its main thread is blocked inside a collective that will never complete). The process that
hosts the store (global rank 0) first waits, at most `ACK_TIMEOUT` seconds, until every other process has
read the message, so that they can name the cause too.

A process that dies without an exception (killed, segmentation fault) publishes nothing: Lightning's own
launcher, torchrun and SLURM stop the others, and the process-group timeout (``--ddp_timeout``, see
`fskd.commands.lightning`) bounds the wait in every case.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: Status of a process stopped because another process failed.
PEER_FAILURE_EXIT_STATUS = 1

#: Seconds between two looks at the store.
POLL_INTERVAL = 0.5

#: Seconds the store's host waits for every process to read a failure before it exits.
ACK_TIMEOUT = 15.0

KEY_PREFIX = "fskd/failure"


def raised_on_every_process(exception: BaseException) -> bool:
    """Whether ``exception`` is raised by every process of a DDP run at the same point (SIGTERM, a non-finite
    loss): only then may the processes still run collectives, such as a checkpoint save, on their way out."""
    return isinstance(exception, SIGTERMException) or bool(getattr(exception, "raised_on_every_process", False))


def describe_exception(exception: BaseException) -> str:
    """``Type: first line of the message`` (the type alone for an empty message)."""
    text = str(exception).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exception).__name__}: {first}" if first else type(exception).__name__


def _where(trainer: L.Trainer) -> str:
    if trainer.training:
        return f"at optimizer step {trainer.global_step + 1} (epoch {trainer.current_epoch})"
    stage = trainer.state.stage.value if trainer.state.stage is not None else "setup"
    return f"in {stage} after optimizer step {trainer.global_step}"


def _default_store() -> Any | None:
    """The key-value store of the default process group, or None (no process group, or another torch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # torch without it, or a process group without a store: fall back to the timeout
        return None


#: Numbers the watches of a process. Every process of a run builds the same trainers in the same order, so the
#: n-th watch has the same store key everywhere, and a failure published during an earlier trainer of the same
#: process group is never mistaken for one of this trainer.
_WATCHES = itertools.count(1)


class PeerFailureWatch(L.Callback):
    """Publishes a rank-local failure and stops every other process when one is published (module doc).

    Does nothing in a single-process run. ``poll_interval`` and ``ack_timeout``: seconds (`POLL_INTERVAL`,
    `ACK_TIMEOUT`).
    """

    def __init__(self, poll_interval: float = POLL_INTERVAL, ack_timeout: float = ACK_TIMEOUT) -> None:
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self._key = f"{KEY_PREFIX}/{next(_WATCHES)}"
        self._store: Any | None = None
        self._rank = 0
        self._world_size = 1
        self._command = "fit"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exiting = threading.Lock()

    def _connect(self, trainer: L.Trainer) -> bool:
        if self._store is None and trainer.world_size > 1:
            self._store = _default_store()
            self._rank, self._world_size = trainer.global_rank, trainer.world_size
            if trainer.state.fn is not None:
                self._command = trainer.state.fn.value
        return self._store is not None

    # -- lifetime ----------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._connect(trainer) or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="fskd-peer-failure-watch", daemon=True)
        self._thread.start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5 * self.poll_interval + 1)
        self._thread = None

    # -- the failing process -----------------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if raised_on_every_process(exception) or not self._connect(trainer):
            self._stop.set()
            return
        published = self._read()
        if published is not None:
            # This exception follows another process's failure (e.g. gloo: "connection closed by peer").
            self._stop_for(published)
            return
        self._stop.set()  # this process's own watch must not read its own message as another's failure
        message = (f"process {self._rank} of {self._world_size} (host {socket.gethostname()}, pid {os.getpid()}) "
                   f"failed {_where(trainer)}: {describe_exception(exception)}")
        try:
            self._store.add(f"{self._key}/reported", 1)
            self._store.set(f"{self._key}/message", message)
        except Exception:  # the store is gone: the others end by their launcher or the process-group timeout
            return
        sys.stderr.write(f"fskd: {message}; nothing is saved for this failure, and the other processes stop\n")
        sys.stderr.flush()
        if self._rank == 0:
            self._wait_for_readers()

    # -- every other process -----------------------------------------------------------------------------------
    def _read(self) -> str | None:
        try:
            if self._store.check([f"{self._key}/message"]):
                return self._store.get(f"{self._key}/message").decode()
        except Exception:
            return None  # the store is gone (its host ended): nothing more to learn from it
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            message = self._read()
            if message is not None and not self._stop.is_set():
                self._stop_for(message)
                return

    def _wait_for_readers(self) -> None:
        """On the store's host: give the other processes time to read the message (at most ``ack_timeout``)."""
        deadline = time.monotonic() + self.ack_timeout
        while time.monotonic() < deadline:
            try:
                done = self._store.add(f"{self._key}/reported", 0) + self._store.add(f"{self._key}/read", 0)
            except Exception:
                return
            if done >= self._world_size:
                return
            time.sleep(self.poll_interval / 5)

    def _stop_for(self, message: str) -> None:
        """Report another process's failure and end this process (its main thread may be stuck in a collective)."""
        if not self._exiting.acquire(blocking=False):
            # The watch and the main thread both got here: the other one reports and ends the process.
            time.sleep(self.ack_timeout + 10 * self.poll_interval)
            return
        try:
            self._store.add(f"{self._key}/read", 1)
        except Exception:
            pass
        sys.stderr.write(f"fskd: stopping process {self._rank} of {self._world_size} because {message}\n"
                         f"fskd {self._command}: error: {message}\n")
        sys.stderr.flush()
        if self._rank == 0:
            self._wait_for_readers()
        os._exit(PEER_FAILURE_EXIT_STATUS)

"""Helpers for the reliability tests (resume, faults, DDP): a tiny dataset, recording callbacks, comparisons.

The callbacks are importable by class path, so subprocesses get them with ``--trainer.callbacks+=...``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tests.conftest import CONFIGS, REPO

TEACHER_CONFIG = str(CONFIGS / "synthetic.yaml")
#: The F-SKD student at 14 px: overlays stacked on the synthetic recipe (tests always give its teacher_ckpt).
STUDENT_CONFIG = (TEACHER_CONFIG, str(CONFIGS / "method/fskd.yaml"), str(CONFIGS / "resolution/14.yaml"))

#: A CPU-second-sized run that still exercises everything a resume must restore: 40 images in global
#: batches of 16 (3 batches per epoch, the last one completed by wrapping around), random resolution and
#: interpolation (the DataModule generator), flips, dropout in the FC neck (the global torch RNG), a
#: learning-rate milestone, a validation every 3 steps and the sanity check.
TINY = ["--data.num_workers", "0", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.enable_model_summary", "false", "--model.width", "0.125", "--model.embedding_size", "32",
        "--model.neck", "fc", "--model.dropout", "0.2", "--data.batch_size", "16", "--trainer.precision",
        "32-true", "--data.val_sets", "[lfw]", "--data.val_resolutions", "[14]",
        "--data.val_batch_size", "40", "--trainer.val_check_interval", "3", "--data.train_resolution",
        "multi", "--data.train_interpolation", "random", "--model.milestones", "[5]"]


def config_args(config: str | Sequence[str]) -> list[str]:
    """``--config`` arguments for one config file or a stack of them (later ones override earlier ones)."""
    return [arg for path in ([config] if isinstance(config, str) else config) for arg in ("--config", path)]


def checkpoint_path(workdir: Path, config: str | Sequence[str] = TEACHER_CONFIG, name: str = "last.ckpt") -> Path:
    """Where the run of ``config`` writes its checkpoints: ``runs/<run>/checkpoints``, the run named after the
    config files (``synthetic``, ``synthetic_fskd_14``)."""
    from fskd.commands.lightning import run_name

    return workdir / "runs" / run_name([config] if isinstance(config, str) else config) / "checkpoints" / name


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine this is several times faster for these tiny models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def fit(workdir: Path, *args: str, config: str | Sequence[str] = TEACHER_CONFIG) -> Any:
    """``fskd fit`` in-process, in ``workdir`` (the configs write ``runs/...`` relative to it)."""
    from fskd.commands.lightning import lightning_main

    with working_directory(workdir):
        return lightning_main(["fit", *config_args(config), *TINY, *args])


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("PL_GLOBAL_SEED", None)
    return env


# -- callbacks -----------------------------------------------------------------------------------------------
class RecordBatches(L.Callback):
    """Records what each training step sees: labels and the exact sum of the (flipped, degraded) input.

    ``path``: also append one JSON line per step there (for subprocesses).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_rank != 0:
            return
        record = {"step": trainer.global_step + 1, "labels": batch["label"].tolist(),
                  "lr_sum": float(batch["lr"].double().sum()), "hr_sum": float(batch["hr"].double().sum())}
        self.steps.append(record)
        if self.path:
            with open(self.path, "a") as stream:
                stream.write(json.dumps(record) + "\n")


def recorded_steps(cli: Any) -> list[dict[str, Any]]:
    return next(c for c in cli.trainer.callbacks if isinstance(c, RecordBatches)).steps


class PauseAtStep(L.Callback):
    """After optimizer step ``step``, on rank 0: write ``marker``, wait (at most ``timeout`` s) for SIGTERM.

    Makes "SIGTERM sent from outside after k steps" deterministic: the test waits for the marker, sends the
    signal, and the run stops after this very batch (other ranks wait for rank 0 in the stop decision).
    """

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step = step
        self.marker = marker
        self.timeout = timeout

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step != self.step or trainer.global_rank != 0:
            return
        Path(self.marker).write_text(str(os.getpid()))
        requested = [c for c in trainer.callbacks if hasattr(c, "requested")]  # GracefulSigterm
        deadline = time.monotonic() + self.timeout
        while not (trainer.received_sigterm or any(c.requested for c in requested)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SIGTERM within {self.timeout} s of step {self.step}")
            time.sleep(0.02)


class NaNAtStep(L.Callback):
    """Makes the training loss NaN at optimizer step ``step`` (1-based) on process ``rank`` (``None``: all),
    by poisoning the batch's input; also keeps a copy of the weights after every step."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step + 1 == self.step and self.rank in (None, trainer.global_rank):
            batch["lr"][0].fill_(float("nan"))
            batch["hr"][0].fill_(float("nan"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class RaiseAtStep(L.Callback):
    """Raises ``RuntimeError("injected failure at optimizer step S on process R")`` at the start of optimizer step
    ``step`` (1-based) on process ``rank`` only: a rank-local failure, as a corrupt record drawn by one
    process's loader or a CUDA out-of-memory error on one GPU."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step + 1 == self.step and trainer.global_rank == self.rank:
            raise RuntimeError(f"injected failure at optimizer step {self.step} on process {self.rank}")


# -- comparisons ---------------------------------------------------------------------------------------------
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists of a checkpoint as ``{"a/b/0": leaf}``."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}{key}/"))
    return out


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    return type(a) is type(b) and a == b


#: Parts of a checkpoint a resumed run must reproduce bit for bit.
REQUIRED = ("state_dict/", "optimizer_states/", "lr_schedulers/", "loops/", "FaceDataModule/generator",
            "FaceDataModule/position/", "callbacks/GlobalRNGState/", "global_step", "epoch")


def training_state_differences(reference: Path, candidate: Path) -> list[str]:
    """Keys whose values differ between two checkpoints (everything but the checkpoint callback's own paths
    and the hyper-parameters); fails if a required part is missing from the reference."""
    a = flatten(torch.load(reference, weights_only=True))
    b = flatten(torch.load(candidate, weights_only=True))
    for part in REQUIRED:
        assert any(key.startswith(part) for key in a), f"{reference} has no {part}"
    skip = ("callbacks/FskdCheckpoint", "hyper_parameters/")
    keys = sorted(k for k in set(a) | set(b) if not k.startswith(skip))
    return [k for k in keys if k not in a or k not in b or not _equal(a[k], b[k])]

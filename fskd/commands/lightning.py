"""``fskd fit|validate|test|predict``: LightningCLI over `FaceDataModule` and any `FaceRecognitionModule`.

The number of classes flows from the data into the model; checkpoints keep ``last.ckpt``.

Reliability defaults (see docs/reliability.md): the checkpoint callback (`fskd.callbacks.FskdCheckpoint`, a
``ModelCheckpoint``) rewrites ``last.ckpt`` when training ends and also saves on an exception or SIGTERM
(``checkpoint.save_on_exception``), so ``fit --ckpt_path last`` resumes a stopped or preempted run; the global
RNG states travel in checkpoints (`fskd.callbacks.GlobalRNGState`); SIGTERM stops all processes together at a batch
boundary (`fskd.callbacks.GracefulSigterm`); checkpoints are written atomically and
loaded weights-only (`fskd.checkpoint_io.SafeCheckpointIO`). A run stopped by SIGTERM exits with status 143
after its checkpoint is written, so that job scripts can tell it from a finished one.
"""

from __future__ import annotations

import logging
import pickle
import signal
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fskd.callbacks import FskdCheckpoint, GlobalRNGState, GracefulSigterm
from fskd.callbacks.console import quiet_console
from fskd.checkpoint_io import SafeCheckpointIO
from fskd.data.datamodule import FaceDataModule
from fskd.models.loading import load_error
from fskd.systems.base import FaceRecognitionModule

log = logging.getLogger(__name__)

#: Exit status of a run stopped by SIGTERM (128 + SIGTERM, as a shell reports a process killed by it).
SIGTERM_EXIT_STATUS = 128 + int(signal.SIGTERM)

TRAINER_DEFAULTS = {
    "logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "fskd"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": "runs", "name": "fskd/tensorboard"}},
    ],
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
        {"class_path": "fskd.callbacks.console.ProgressBar"},
        {"class_path": "fskd.callbacks.console.ParameterSummary"},
    ],
}


#: The run name without a ``--config`` file, and the folder that holds the runs. The default loggers
#: (`TRAINER_DEFAULTS`) write to ``runs/fskd``: `place_run` moves them to the run's folder.
DEFAULT_RUN = "fskd"
RUNS_ROOT = "runs"


def run_name(config_files: Sequence[Any] | None) -> str:
    """The default ``--run``: the stems of the ``--config`` files joined by ``_`` (``casia_ir50_fskd_14`` for
    ``casia_ir50.yaml``, ``method/fskd.yaml``, ``resolution/14.yaml``), `DEFAULT_RUN` without a file."""
    stems = [Path(str(path)).stem for path in config_files or () if path is not None]  # None: a YAML string
    return "_".join(stems) or DEFAULT_RUN


def place_run(config: Any) -> None:
    """Name the run (``config.run``, default `run_name`) and put it in ``<root>/<run>/``, root being
    ``trainer.default_root_dir`` or else ``runs``: the default loggers (those writing to ``runs/fskd...``) to
    ``<root>/<run>...``, the checkpoints to ``<root>/<run>/checkpoints`` when ``checkpoint.dirpath`` is null.
    Any other logger and an explicit ``dirpath``, from a config or the command line, stay as they are."""
    run = config.get("run") or run_name(config.get("config"))
    config["run"] = run
    trainer = config.get("trainer")
    root = str((trainer.get("default_root_dir") if trainer is not None else None) or RUNS_ROOT)
    loggers = trainer.get("logger") if trainer is not None else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        name = init_args.get("name") if init_args is not None else None
        if isinstance(name, str) and init_args.get("save_dir") == RUNS_ROOT and \
                (name == DEFAULT_RUN or name.startswith(f"{DEFAULT_RUN}/")):
            init_args["save_dir"], init_args["name"] = root, run + name[len(DEFAULT_RUN):]
    checkpoint = config.get("checkpoint")
    if checkpoint is not None and checkpoint.get("dirpath") is None:
        checkpoint["dirpath"] = str(Path(root) / run / "checkpoints")


class FskdCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with YAML configs, `FaceDataModule` and any system subclass."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", FaceRecognitionModule)
        kwargs.setdefault("datamodule_class", FaceDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        try:
            super().__init__(*args, **kwargs)
        except SIGTERMException:
            log.warning("stopped by SIGTERM; the checkpoint callback saved the state: resume with "
                        "--ckpt_path last")
            raise SystemExit(SIGTERM_EXIT_STATUS) from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=lambda data: data.num_classes,
                              apply_on="instantiate")
        parser.add_lightning_class_args(FskdCheckpoint, "checkpoint")
        # Defaults as config values (not instances) so that a config file can still replace them.
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_on_exception": True,
                             **{f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()}})
        parser.add_argument("--matmul_precision", default="highest", choices=["highest", "high", "medium"],
                            help="torch.set_float32_matmul_precision (TF32 on Ampere+ with 'high')")
        parser.add_argument("--run", type=str | None, default=None,
                            help="run name: logs in runs/RUN/, checkpoints in runs/RUN/checkpoints (under "
                                 "trainer.default_root_dir instead of runs/ when set); default: the --config "
                                 "file names without .yaml joined by '_', e.g. casia_ir50_fskd_14")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a ``--ckpt_path`` file itself (weights-only) to take the model's hyper-parameters
        # from it; turn its refusals into the same clear errors as `SafeCheckpointIO` gives.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise load_error(path, error) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer plus `GlobalRNGState`, `GracefulSigterm` and, unless a CheckpointIO plugin
        is configured, `SafeCheckpointIO` (added here, so configs that replace callbacks or plugins keep them)."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            # Lightning would compute every embedding, keep none and exit 0.
            raise ValueError("predict writes nothing without a prediction writer: add "
                             "--trainer.callbacks+=fskd.callbacks.EmbeddingWriter --trainer.callbacks.output OUT "
                             "(writes OUT.npy and OUT.txt)")
        for callback_class in (GlobalRNGState, GracefulSigterm):
            if not any(isinstance(c, callback_class) for c in trainer.callbacks):
                trainer.callbacks.append(callback_class())
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        torch.set_float32_matmul_precision(config.get("matmul_precision", "highest"))
        place_run(config)
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("callbacks"):
            # `--trainer.enable_progress_bar false` / `--trainer.logger false` should just work, not clash with the
            # default rich bar and learning-rate monitor.
            drop = []
            if trainer.get("enable_progress_bar") is False:
                drop.append("ProgressBar")
            if trainer.get("logger") is False:
                drop.append("LearningRateMonitor")
            if trainer.get("enable_model_summary") is False:
                drop.append("ParameterSummary")
            trainer["callbacks"] = [c for c in trainer["callbacks"]
                                    if not any(str(getattr(c, "class_path", "")).endswith(d) for d in drop)]


def lightning_main(argv: Sequence[str] | None = None, run: bool = True) -> FskdCLI:
    """Run LightningCLI with ``argv`` (``["fit", "--config", ...]``); ``None`` reads ``sys.argv`` (the shell)."""
    quiet_console()
    if argv is None:
        return FskdCLI(args=None, run=run)
    with warnings.catch_warnings():
        # Commands that run fits (demo, realfaces) pass their argument lists on purpose.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        return FskdCLI(args=list(argv), run=run)


def main(argv: Sequence[str] | None = None) -> int:
    lightning_main(argv)
    release_process_group()
    return 0


def release_process_group() -> None:
    """Close a DDP run's process group after success: left to interpreter exit, gloo's threads can abort the
    process ("terminate called without an active exception", exit -6) after every result was written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

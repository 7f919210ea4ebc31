"""LightningCLI wiring: the number of classes flows from the data into the model, checkpoints keep ``last.ckpt``."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fskd.datamodule import FaceDataModule
from fskd.systems.base import FaceRecognitionModule

TRAINER_DEFAULTS = {
    "logger": [
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "fskd"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": "runs", "name": "fskd/tensorboard"}},
    ],
    "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
        {"class_path": "lightning.pytorch.callbacks.RichProgressBar"},
    ],
}


class FskdCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with YAML configs, `FaceDataModule` and any system subclass."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", FaceRecognitionModule)
        kwargs.setdefault("datamodule_class", FaceDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=lambda data: data.num_classes,
                              apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Defaults as config values (not instances) so that a config file can still replace them.
        parser.set_defaults({"checkpoint.save_last": True, **{f"trainer.{k}": v for k, v in TRAINER_DEFAULTS.items()}})
        parser.add_argument("--matmul_precision", default="highest", choices=["highest", "high", "medium"],
                            help="torch.set_float32_matmul_precision (TF32 on Ampere+ with 'high')")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        torch.set_float32_matmul_precision(config.get("matmul_precision", "highest"))
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("callbacks"):
            # `--trainer.enable_progress_bar false` / `--trainer.logger false` should just work, not clash with the
            # default rich bar and learning-rate monitor.
            drop = []
            if trainer.get("enable_progress_bar") is False:
                drop.append("ProgressBar")
            if trainer.get("logger") is False:
                drop.append("LearningRateMonitor")
            trainer["callbacks"] = [c for c in trainer["callbacks"]
                                    if not any(str(getattr(c, "class_path", "")).endswith(d) for d in drop)]

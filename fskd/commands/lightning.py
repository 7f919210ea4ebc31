"""``fskd fit|validate|test|predict``: LightningCLI over `FaceDataModule` and any `FaceRecognitionModule`.

The number of classes flows from the data into the model; checkpoints keep ``last.ckpt``.

Reliability defaults (see docs/reliability.md): the checkpoint callback (`fskd.callbacks.FskdCheckpoint`, a
``ModelCheckpoint``) rewrites ``last.ckpt`` when training ends and also saves on an exception or SIGTERM
(``checkpoint.save_on_exception``), so ``fit --ckpt_path last`` resumes a stopped or preempted run; the global
RNG states travel in checkpoints (`fskd.callbacks.GlobalRNGState`); SIGTERM stops all processes together at a batch
boundary (`fskd.callbacks.GracefulSigterm`); checkpoints are written atomically and
loaded weights-only (`fskd.checkpoint_io.SafeCheckpointIO`). A run stopped by SIGTERM exits with status 143
after its checkpoint is written, so that job scripts can tell it from a finished one. Under DDP, a failure of
one process ends every process within seconds (`fskd.callbacks.PeerFailureWatch`; ``--ddp_timeout`` bounds
the rest). A resume refuses model hyper-parameters that the checkpoint's state would override (`resume_conflicts`)
instead of recording them falsely. A failing command prints the traceback of the error itself, then its reason
on one last line naming the file or option (`report_failure`, `FskdArgumentParser`).
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import pickle
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fskd.callbacks import FskdCheckpoint, GlobalRNGState, GracefulSigterm, PeerFailureWatch
from fskd.callbacks.console import quiet_console
from fskd.callbacks.failures import describe_exception
from fskd.checkpoint_io import SafeCheckpointIO
from fskd.data.datamodule import FaceDataModule
from fskd.models.loading import load_error, safe_torch_load
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


# -- failures as one last line -------------------------------------------------------------------------------
#: Lines of jsonargparse's error messages that carry structure, not the reason.
_STRUCTURE = re.compile(r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|"
                        r"Given value type: .*|Given value: .*|Problem with given class_path .*:|"
                        r"Expected a <class 'NoneType'>.*)$")
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')


def condense_parser_message(message: str) -> str:
    """One line out of a (nested, multi-line) jsonargparse error: the option, as ``--a.b``, and the first line
    that gives a reason; e.g. ``--model.lr: Expected a <class 'float'>. Got value: abc``."""
    keys: list[tuple[int, str]] = []
    for raw in message.splitlines():
        indent = len(raw) - len(raw.lstrip())
        line = raw.strip().removeprefix("- ").strip()
        if not line:
            continue
        keys = [(level, key) for level, key in keys if level < indent]
        match = _PARSER_KEY.match(line)
        if match:
            keys.append((indent, match.group(1)))
            line = match.group(2).strip()
            if not line:
                continue
        if _STRUCTURE.match(line):
            continue
        option = ".".join(key for _, key in keys)
        return f"--{option}: {line}" if option else line
    return " ".join(message.split())


def wrapped_cause(error: BaseException) -> BaseException | None:
    """The exception behind jsonargparse's wrappers of an error raised while building a class ("Does not
    validate against any of the Union subtypes", "Call to compute_fn of link ... failed"), or None."""
    found = None
    while (isinstance(error, ValueError) and error.__cause__ is not None and
           str(error).startswith(("Does not validate against any of the Union subtypes", "Call to compute_fn"))):
        cause = error.__cause__
        if str(cause).startswith("Expected a <class 'NoneType'>"):
            break
        found = error = cause
    return found


_BUILT_CLASS = re.compile(r"Given value: Namespace\(class_path='([\w.]+)'")


def _process() -> str:
    """``process R of W: `` inside a multi-process run, else nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return f"process {dist.get_rank()} of {dist.get_world_size()}: "
    return ""


def report_failure(command: str, error: BaseException) -> None:
    """Print ``error``'s traceback (the one behind jsonargparse's wrappers), then, as the last line,
    ``fskd COMMAND: error: [process R of W: ]Type: reason (notes)``; the reasons name their file, the notes
    the option being built."""
    error = wrapped_cause(error) or error
    traceback.print_exception(error)
    notes = "; ".join(getattr(error, "__notes__", ()))
    sys.stderr.write(f"fskd {command}: error: {_process()}{describe_exception(error)}"
                     f"{f' ({notes})' if notes else ''}\n")
    sys.stderr.flush()


class FskdArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose usage errors end with one line naming the option and the reason."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        try:
            super().error(message, ex)
        except SystemExit:
            if self.exit_on_error:
                sys.stderr.write(f"fskd: error: {condense_parser_message(message)}\n")
                sys.stderr.flush()
            raise


# -- truthful resumes -------------------------------------------------------------------------------------------
#: Model hyper-parameters that a resumed fit takes from the command (it applies them and records them): checks,
#: validation protocols and precision, speed options and where the teacher and the positives are read from. Every other
#: one is fixed by what the checkpoint restores (weights, optimizer and schedule state, loss modules).
APPLIED_ON_RESUME = frozenset({"protocols", "check_finite_loss", "sync_every", "check_labels", "channels_last",
                               "compile", "teacher_ckpt", "positives_path", "save_teacher",
                               "allow_student_teacher", "eval_fp32"})


def _comparable(value: Any) -> Any:
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def resume_conflicts(saved: dict[str, Any], class_path: str | None, requested: dict[str, Any]) -> list[str]:
    """What a fit resumed from a checkpoint (its hyper-parameters ``saved``) cannot do of what the command asks
    (``requested``, the model's arguments, of class ``class_path``): one sentence per option, naming it, the
    checkpoint's value and the new one. Keys one side lacks (hyper-parameters added to a class since the
    checkpoint), `APPLIED_ON_RESUME` and a ``num_classes`` not linked from the data yet are not conflicts."""
    conflicts = []
    saved_class = str(saved.get("_class_path", ""))
    if class_path and saved_class and saved_class.rsplit(".", 1)[-1] != str(class_path).rsplit(".", 1)[-1]:
        conflicts.append(f"--model: the checkpoint holds a {saved_class}, this command builds {class_path}")
    for key, value in requested.items():
        unknown = key.startswith("_") or key not in saved or (key == "num_classes" and value is None)
        if unknown or key in APPLIED_ON_RESUME:
            continue
        if _comparable(value) != _comparable(saved[key]):
            conflicts.append(f"--model.{key}: the checkpoint was trained with {saved[key]!r}, this command asks "
                             f"for {value!r}")
    return conflicts


def refuse_conflicts(checkpoint: str | os.PathLike, conflicts: list[str]) -> None:
    """Raise the error of a resume that cannot do what it is asked (`resume_conflicts`), if there is any."""
    if conflicts:
        raise ValueError(f"{checkpoint}: cannot resume as asked: {'; '.join(conflicts)}. Resuming restores the "
                         "weights, the optimizer and its schedule from the checkpoint, so these options would not "
                         "apply and would be recorded falsely: drop them to resume, or start a new run (another "
                         "--run, without --ckpt_path) to train with them")


def newest_last_checkpoint(trainer: Trainer) -> Path | None:
    """The checkpoint ``--ckpt_path last`` resumes: the newest ``last*.ckpt`` of the trainer's checkpoint
    callbacks (as Lightning resolves it), or None when there is none yet."""
    candidates: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        find = getattr(callback, "_find_last_checkpoints", None)
        if callable(find):
            candidates |= set(find(trainer))
    files = [Path(c) for c in candidates if Path(c).is_file()]
    return max(files, key=lambda path: path.stat().st_mtime) if files else None


class FskdCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` with YAML configs, `FaceDataModule` and any system subclass."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", FaceRecognitionModule)
        kwargs.setdefault("datamodule_class", FaceDataModule)
        kwargs.setdefault("parser_class", FskdArgumentParser)
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
        parser.add_argument("--ddp_timeout", type=float | None, default=None,
                            help="seconds a DDP collective may wait for a process before the run fails (the "
                                 "process-group timeout); default: the strategy's (30 minutes). Bounds the wait "
                                 "when a process dies without an exception (killed, crashed)")
        parser.add_argument("--run", type=str | None, default=None,
                            help="run name: logs in runs/RUN/, checkpoints in runs/RUN/checkpoints (under "
                                 "trainer.default_root_dir instead of runs/ when set); default: the --config "
                                 "file names without .yaml joined by '_', e.g. casia_ir50_fskd_14")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a ``--ckpt_path`` file itself (weights-only) to take the model's hyper-parameters
        # from it; turn its refusals into the same clear errors as `SafeCheckpointIO` gives.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        requested = copy.deepcopy(self.config[subcommand].get("model")) if subcommand == "fit" else None
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise load_error(path, error) from None
        if requested is None or not path or not Path(path).is_file() or requested.get("init_args") is None:
            return
        # LightningCLI replaced the model's arguments by the checkpoint's, dropping those of the command: refuse
        # those a resume cannot apply, put back those it applies on purpose (`APPLIED_ON_RESUME`).
        saved = safe_torch_load(path, map_location="cpu").get("hyper_parameters") or {}
        wanted = requested["init_args"].as_dict()
        refuse_conflicts(path, resume_conflicts(saved, requested.get("class_path"), wanted))
        merged = self.config[subcommand]["model"]["init_args"]
        for key in APPLIED_ON_RESUME & set(wanted):
            merged[key] = wanted[key]

    def before_fit(self) -> None:
        """Refuse a ``--ckpt_path last`` resume whose model arguments the checkpoint would override (see
        `resume_conflicts`; ``--ckpt_path FILE`` is checked while parsing). Runs before any checkpoint is
        written."""
        if self.config[self.subcommand].get("ckpt_path") != "last":
            return
        checkpoint = newest_last_checkpoint(self.trainer)
        if checkpoint is None:
            return
        saved = safe_torch_load(checkpoint, map_location="cpu").get("hyper_parameters") or {}
        class_path = f"{type(self.model).__module__}.{type(self.model).__name__}"
        refuse_conflicts(checkpoint, resume_conflicts(saved, class_path, dict(self.model.hparams)))

    def instantiate_classes(self) -> None:
        """As LightningCLI, but an error raised while building the model or the data comes out as itself, not
        inside jsonargparse's "Does not validate against any of the Union subtypes" and a dump of the config."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = wrapped_cause(error)
            if cause is None:
                raise
            built = _BUILT_CLASS.search(str(error))
            if built:
                cause.add_note(f"while building --model {built.group(1)}")
            raise cause from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer plus `GlobalRNGState`, `GracefulSigterm`, `PeerFailureWatch` and, unless a
        CheckpointIO plugin is configured, `SafeCheckpointIO` (added here, so configs that replace callbacks or
        plugins keep them); ``--ddp_timeout`` sets the DDP process-group timeout."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            # Lightning would compute every embedding, keep none and exit 0.
            raise ValueError("predict writes nothing without a prediction writer: add "
                             "--trainer.callbacks+=fskd.callbacks.EmbeddingWriter --trainer.callbacks.output OUT "
                             "(writes OUT.npy and OUT.txt)")
        for callback_class in (GlobalRNGState, GracefulSigterm):
            if not any(isinstance(c, callback_class) for c in trainer.callbacks):
                trainer.callbacks.append(callback_class())
        if not any(isinstance(c, PeerFailureWatch) for c in trainer.callbacks):
            # First, so that a process failing alone tells the others before any other exception handling runs.
            trainer.callbacks.insert(0, PeerFailureWatch())
        timeout = self._get(self.config, "ddp_timeout")
        if timeout is not None:
            if not hasattr(trainer.strategy, "_timeout"):
                raise ValueError(f"--ddp_timeout: the strategy {type(trainer.strategy).__name__} has no "
                                 "process-group timeout")
            trainer.strategy._timeout = datetime.timedelta(seconds=timeout)
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
    """``fskd fit|validate|test|predict``: 0 on success; on failure the traceback, then the reason on one last
    line (`report_failure`), status 1 (143 after SIGTERM, 2 for usage errors)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        lightning_main(argv)
    except Exception as error:
        report_failure(args[0] if args else "fit", error)
        return 1
    release_process_group()
    return 0


def release_process_group() -> None:
    """Close a DDP run's process group after success: left to interpreter exit, gloo's threads can abort the
    process ("terminate called without an active exception", exit -6) after every result was written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""The experiment configs: every experiment of the paper grid is one command, and it means what the paper says.

Each command is parsed by the real CLI (`FskdCLI`, run name and folders included, nothing instantiated) and the
result is checked, never the YAML text: a hand edit that keeps the meaning passes. The YAML files hold only what
differs from the code's defaults; a key may repeat a default when a comment on its line says why.
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fskd.commands.lightning import FskdCLI, lightning_main
from fskd.models.heads import create_head
from tests.conftest import CONFIGS, FAST, REPO

RESOLUTIONS = ("14", "28", "56", "multi")
#: The paper's students, plus the other methods the code has (F-SKD with hint adapters, Hinton KD, and the authors'
#: final cross-sample F-SKD).
METHODS = ("fskd", "askd", "fitnet", "at", "rkd", "fskd_hint", "hkd", "fskd_cross")


def stack(*names: str) -> list[str]:
    """``--config configs/<name>.yaml`` for each name, in order (later files override earlier ones)."""
    return [arg for name in names for arg in ("--config", f"configs/{name}.yaml")]


@dataclass(frozen=True)
class Experiment:
    args: list[str]  # after ``fskd fit``, as README.md lists them
    method: str | None = None  # DistillModule's ``distill``; None: TeacherModule
    resolution: str = "112"
    teacher: str | None = None  # the run whose last.ckpt the student reads
    cbam: bool = False


def _casia(*overlays: str, method: str | None = None, resolution: str = "112", cbam: bool = False) -> Experiment:
    teacher = None if method is None else ("casia_ir50_cbam" if method == "askd" else "casia_ir50")
    return Experiment(stack("casia_ir50", *overlays), method, resolution, teacher, cbam or method == "askd")


#: Every experiment, by run name.
EXPERIMENTS: dict[str, Experiment] = {
    "casia_ir50": _casia(),
    "casia_ir50_cbam": _casia("cbam", cbam=True),
    **{f"casia_ir50_{r}": _casia(f"resolution/{r}", resolution=r) for r in RESOLUTIONS},
    **{f"casia_ir50_{m}_{r}": _casia(f"method/{m}", f"resolution/{r}", method=m, resolution=r)
       for m in METHODS for r in RESOLUTIONS},
    # CPU-sized, on `fskd synth --out data/synth`: the tiny teacher, the 14 px baseline and F-SKD student.
    "synthetic": Experiment(stack("synthetic")),
    "synthetic_14": Experiment(stack("synthetic", "resolution/14"), resolution="14"),
    "synthetic_fskd_14": Experiment([*stack("synthetic", "method/fskd", "resolution/14"), "--model.teacher_ckpt",
                                     "runs/synthetic/checkpoints/last.ckpt"], "fskd", "14", "synthetic"),
}


class ParseOnly(FskdCLI):
    """`FskdCLI` that parses a command and names its run, then stops: no data, model or trainer is built."""

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse(args: list[str], subcommand: str = "fit") -> Any:
    """The configuration ``fskd <subcommand> <args>`` runs with (a jsonargparse Namespace)."""
    cli = ParseOnly(args=[subcommand, *args])
    return cli.config[subcommand]


@pytest.fixture(autouse=True)
def _repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the commands name configs/... relative to the repository root


def plain(value: Any) -> Any:
    """Namespaces, tuples and paths as plain JSON values, to compare parsed values with YAML ones."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def head_of(init_args: Any) -> Any:
    return create_head(init_args.head, init_args.embedding_size, 2, **(init_args.head_kwargs or {}))


def loggers(config: Any) -> list[tuple[str, str, str]]:
    return [(logger.class_path.rsplit(".", 1)[-1], logger.init_args.save_dir, logger.init_args.name)
            for logger in config.trainer.logger]


# -- every experiment ----------------------------------------------------------------------------------------
def test_the_grid_is_complete() -> None:
    """2 teachers, 4 baselines, 5 paper students x 4 resolutions (plus fskd_hint, hkd and fskd_cross), 3 synthetic
    runs; every YAML file under configs/ takes part in one of them."""
    assert len(EXPERIMENTS) == 2 + 4 + len(METHODS) * 4 + 3
    used = {arg for e in EXPERIMENTS.values() for arg in e.args if arg.startswith("configs/")}
    assert {str(p.relative_to(REPO)) for p in CONFIGS.rglob("*.yaml")} == used


@pytest.mark.parametrize("run", EXPERIMENTS)
def test_experiment_command(run: str) -> None:
    experiment = EXPERIMENTS[run]
    config = parse(experiment.args)
    model, data = config.model.init_args, config.data
    synthetic = run.startswith("synthetic")
    # The class, the distillation method and its teacher's checkpoint, the architecture, the training resolution.
    if experiment.method is None:
        assert config.model.class_path == "fskd.systems.TeacherModule"
    else:
        assert config.model.class_path == "fskd.systems.DistillModule"
        assert model.distill == experiment.method
        teacher = parse(EXPERIMENTS[experiment.teacher].args)
        assert model.teacher_ckpt == str(Path(teacher.checkpoint.dirpath) / "last.ckpt")
        assert teacher.model.init_args.mode == model.mode
        assert model.distill_weight is None and not model.init_from_teacher  # each loss's weight, from scratch
    assert model.mode == ("cbam" if experiment.cbam else "ir")
    assert str(data.train_resolution) == experiment.resolution
    # The run's folders: logs in runs/<run>/ (CSV and TensorBoard), checkpoints in runs/<run>/checkpoints.
    assert config.run == run
    assert loggers(config) == [("CSVLogger", "runs", run), ("TensorBoardLogger", "runs", f"{run}/tensorboard")]
    assert config.checkpoint.dirpath == f"runs/{run}/checkpoints"
    assert config.checkpoint.save_last is True and config.checkpoint.save_on_exception is True
    # The recipe shared by every run of a grid.
    head = head_of(model)
    margin = 0.2 if experiment.method == "fskd_cross" else 0.25  # the final scripts' student margin
    assert (model.neck, model.head, type(head).__name__, head.s, head.m) == ("gap", "cosface", "CosFace", 30.0, margin)
    assert (model.lr, model.momentum, model.nesterov, model.weight_decay, model.gamma) == (0.1, 0.9, True, 5e-4, 0.1)
    assert (data.train_interpolation, data.val_interpolation, data.flip) == ("nearest", "nearest", True)
    assert (data.photometric_p, data.crop_p, model.dropout) == (0.0, 0.0, 0.0)
    assert config.seed_everything == 0 and config.trainer.precision == "bf16-mixed"
    assert config.trainer.check_val_every_n_epoch is None  # validation every val_check_interval steps
    assert config.trainer.max_epochs in (None, -1)  # max_steps ends the run
    if synthetic:
        assert (model.backbone, model.width, model.embedding_size) == ("iresnet18", 0.25, 128)
        assert (config.trainer.max_steps, list(model.milestones), config.trainer.val_check_interval) == \
            (300, [180, 255], 150)
        assert (data.root, data.batch_size, data.num_workers, data.val_batch_size) == ("data/synth", 64, 2, 100)
        assert list(data.val_resolutions) == [112, 14] and config.trainer.accelerator == "cpu"
        assert config.trainer.benchmark is None  # no cuDNN on a CPU
    else:
        assert (model.backbone, model.width, model.embedding_size) == ("iresnet50", 1.0, 512)
        assert (config.trainer.max_steps, list(model.milestones), config.trainer.val_check_interval) == \
            (47000, [18000, 28000, 36000, 44000], 4700)
        assert (data.root, data.batch_size, data.num_workers) == ("data/faces_webface_112x112", 256, 8)
        assert list(data.val_resolutions) == [112, 56, 28, 14]
        assert list(data.val_sets) == ["agedb_30", "lfw", "cfp_fp"]
        assert (config.trainer.devices, config.checkpoint.every_n_train_steps) == (1, 2000)
        # GPU configs: cuDNN autotuning for the fixed 112x112 shapes; BatchNorm statistics per process, as the
        # authors' single GPU computed them over its batch (docs/reliability.md, "Several GPUs").
        assert config.trainer.benchmark is True and config.trainer.sync_batchnorm is False


def test_print_config_shows_the_stacked_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        lightning_main(["fit", *EXPERIMENTS["casia_ir50_askd_14"].args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "fskd.systems.DistillModule"
    assert printed["model"]["init_args"]["mode"] == "cbam" and printed["data"]["train_resolution"] == 14
    assert printed["trainer"]["max_steps"] == 47000


# -- run name and folders --------------------------------------------------------------------------------------
def test_run_name_can_be_given_and_defaults_to_fskd_without_a_config() -> None:
    config = parse([*EXPERIMENTS["casia_ir50_fskd_14"].args, "--run", "ablation/fskd_seed1"])
    assert config.checkpoint.dirpath == "runs/ablation/fskd_seed1/checkpoints"
    assert loggers(config)[1] == ("TensorBoardLogger", "runs", "ablation/fskd_seed1/tensorboard")
    config = parse(["--model", "fskd.systems.TeacherModule", "--data.root", "data/synth"])
    assert config.run == "fskd" and config.checkpoint.dirpath == "runs/fskd/checkpoints"
    assert loggers(config)[0] == ("CSVLogger", "runs", "fskd")


def test_explicit_folders_win_over_the_run_folder() -> None:
    logger = json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                          "init_args": {"save_dir": "out/model", "name": "logs"}}])
    # What `fskd demo` passes: its own logger, checkpoint folder and root folder.
    config = parse([*EXPERIMENTS["synthetic_14"].args, "--trainer.default_root_dir", "out/model", "--trainer.logger",
                    logger, "--checkpoint.dirpath", "out/model/checkpoints"])
    assert loggers(config) == [("CSVLogger", "out/model", "logs")]
    assert config.checkpoint.dirpath == "out/model/checkpoints"
    # A root folder alone replaces runs/; a config's dirpath is kept.
    config = parse([*EXPERIMENTS["synthetic_14"].args, "--trainer.default_root_dir", "/scratch/runs"])
    assert loggers(config)[0] == ("CSVLogger", "/scratch/runs", "synthetic_14")
    assert config.checkpoint.dirpath == "/scratch/runs/synthetic_14/checkpoints"
    config = parse([*EXPERIMENTS["synthetic_14"].args, "--config", '{"checkpoint": {"dirpath": "elsewhere"}}'])
    assert config.checkpoint.dirpath == "elsewhere" and config.run == "synthetic_14"  # a YAML string: no name
    assert parse([*EXPERIMENTS["synthetic"].args, "--trainer.logger", "false"]).trainer.logger is False


def test_every_subcommand_uses_the_run_folder() -> None:
    for subcommand in ("validate", "test", "predict"):
        config = parse(EXPERIMENTS["casia_ir50_fskd_14"].args, subcommand)
        assert config.checkpoint.dirpath == "runs/casia_ir50_fskd_14/checkpoints", subcommand


def test_a_fit_writes_to_the_run_folder_and_resumes_from_it(synth_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*(str(REPO / a) if a.startswith("configs/") else a for a in EXPERIMENTS["synthetic"].args),
            "--data.root", str(synth_root), "--trainer.limit_val_batches", "0", *FAST]
    lightning_main(["fit", *args, "--trainer.max_steps", "2"])
    run = tmp_path / "runs/synthetic"
    assert (run / "version_0/hparams.yaml").is_file() and (run / "tensorboard/version_0/hparams.yaml").is_file()
    assert yaml.safe_load((run / "version_0/config.yaml").read_text())["run"] == "synthetic"  # what ran
    cli = lightning_main(["fit", *args, "--trainer.max_steps", "3", "--ckpt_path", "last"])
    assert cli.trainer.ckpt_path == str((run / "checkpoints/last.ckpt").resolve())
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    assert (run / "version_1/hparams.yaml").is_file() and (run / "tensorboard/version_1/hparams.yaml").is_file()


# -- the YAML files hold only what differs from the code -------------------------------------------------------
def _leaves(node: yaml.Node, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    """(key path, line) of every leaf of a YAML mapping; lists and scalars are leaves."""
    if not isinstance(node, yaml.MappingNode):
        return [(path, node.start_mark.line)]
    leaves = []
    for key, value in node.value:
        line = key.start_mark.line
        leaves += [(path + (key.value,), line)] if not isinstance(value, yaml.MappingNode) else \
            _leaves(value, path + (key.value,))
    return leaves


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _code_defaults(model_class: str) -> dict:
    """What ``fskd fit`` runs with when no config sets a key: the CLI's and the classes' defaults."""
    config = ParseOnly(args=["--model", model_class, "--data.root", "x"], run=False).config
    defaults = plain(config)
    defaults["checkpoint"]["dirpath"] = None  # derived from the run name, not a default to repeat
    return defaults


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")))
def test_no_key_repeats_a_code_default(path: str) -> None:
    text = (CONFIGS / path).read_text()
    lines, data = text.splitlines(), yaml.safe_load(text)
    model_class = (data.get("model") or {}).get("class_path", "fskd.systems.FaceRecognitionModule")
    defaults = _code_defaults(model_class)
    init_args = (data.get("model") or {}).get("init_args") or {}
    head = inspect.signature(type(create_head(init_args.get("head", defaults["model"]["init_args"]["head"]), 8, 2)))
    repeated = []
    for key, line in _leaves(yaml.compose(text)):
        if key[-1] == "class_path" or re.search(r"\s#", lines[line]):
            continue
        if key[:3] == ("model", "init_args", "head_kwargs") and len(key) == 4:
            default = head.parameters[key[3]].default
        else:
            default = _lookup(defaults, key)
        if plain(_lookup(data, key)) == plain(default):
            repeated.append(f"{'.'.join(key)} (line {line + 1})")
    assert not repeated, f"configs/{path} repeats code defaults without a comment saying why: {repeated}"


def test_the_default_check_sees_a_repeated_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above flags a repeated default, including the head's, and accepts it with a comment."""
    (tmp_path / "extra.yaml").write_text("model:\n  class_path: fskd.systems.DistillModule\n  init_args:\n"
                                         "    lr: 0.1\n    head_kwargs: {s: 30.0}\n    distill: fskd  # why\n"
                                         "data:\n  batch_size: 256\n  num_workers: 3\n")
    monkeypatch.setattr("tests.test_configs.CONFIGS", tmp_path)
    with pytest.raises(AssertionError, match=r"\['model.init_args.lr \(line 4\)', "
                                             r"'model.init_args.head_kwargs.s \(line 5\)', "
                                             r"'data.batch_size \(line 8\)'\]"):
        test_no_key_repeats_a_code_default("extra.yaml")


# -- the documentation names existing configs ------------------------------------------------------------------
def test_documented_config_paths_exist() -> None:
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named = {(doc.name, match) for doc in documents
             for match in re.findall(r"(?<![\w/])configs/[\w/{},.*-]*\.yaml", doc.read_text())}
    missing = [(doc, name) for doc, name in named if "{" not in name  # brace lists: the grid, tested above
               and not ((REPO / name).is_file() or "*" in name and any(REPO.glob(name)))]
    assert named and not missing, missing


def _documented_fits(document: Path) -> list[list[str]]:
    """The arguments of every ``.venv/bin/fskd fit`` command in a document's code blocks."""
    text = re.sub(r"\\\n\s*", " ", document.read_text())  # continuation lines
    return [shlex.split(line, comments=True)[2:] for line in text.splitlines()
            if line.startswith(".venv/bin/fskd fit ")]


@pytest.mark.slow
def test_the_readme_lists_every_experiment() -> None:
    """Each documented ``fskd fit`` parses; README.md has one for every experiment of the paper grid and the
    synthetic runs and fskd_cross (fskd_hint and hkd are only mentioned)."""
    runs = {}
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for args in _documented_fits(document):
            config = parse(args)
            if document.name == "README.md":
                runs.setdefault(config.run, config)  # the Training section comes first
    expected = {run for run in EXPERIMENTS if not re.search(r"_(fskd_hint|hkd)_", run)}
    assert expected <= set(runs), sorted(expected - set(runs))
    for run in expected:  # the README's command is the experiment's
        assert plain(runs[run]) == plain(parse(EXPERIMENTS[run].args)), run

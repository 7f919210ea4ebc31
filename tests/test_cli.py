"""The command line as a user drives it: fit then validate, metrics named per set and resolution (the configs
themselves: tests/test_configs.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fskd.commands.lightning import condense_parser_message, lightning_main
from fskd.systems import TeacherModule
from tests.conftest import CONFIGS, FAST, REPO, run_cli
from tests.helpers.reliability import STUDENT_CONFIG, TINY, config_args


@pytest.mark.slow
def test_fit_then_validate_logs_every_set_and_resolution(tiny_teacher_ckpt: Path, synth_root: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = lightning_main(["validate", "--config", str(CONFIGS / "synthetic.yaml"),
                          "--data.root", str(synth_root), "--ckpt_path", str(tiny_teacher_ckpt), *FAST])
    metrics = cli.trainer.callback_metrics
    for name in ("agedb_30", "lfw", "cfp_fp"):
        for resolution in ("112", "14"):
            for key in ("acc", "acc_std", "insightface_acc", "insightface_acc_std"):
                value = float(metrics[f"val/{name}/{resolution}/{key}"])
                assert 0.0 <= value <= 1.0
    assert 0.0 <= float(metrics["val/mean_acc"]) <= 1.0
    # The checkpoint holds what a resume needs, loadable without executing pickled code.
    checkpoint = torch.load(tiny_teacher_ckpt, weights_only=True)
    assert checkpoint["global_step"] == 6 and checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    assert checkpoint["hyper_parameters"]["num_classes"] == 50  # linked from the data, never typed in a config


def test_console_script_and_cli_py_are_the_same_entry_point() -> None:
    from fskd.cli import COMMANDS

    outputs = []
    for command in ([sys.executable, str(REPO / "cli.py"), "--help"], [sys.executable, "-m", "fskd", "--help"],
                    [str(Path(sys.executable).parent / "fskd"), "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    listed = [line.split()[0] for line in outputs[0].splitlines() if line.startswith("  ") and line.split()
              and not line.strip().startswith("fskd ")]
    assert listed == list(COMMANDS)


def test_an_unknown_command_is_named(capsys: pytest.CaptureFixture) -> None:
    from fskd.cli import main

    assert main(["fitt"]) == 2
    assert "fskd: unknown command 'fitt'" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_teacher_learns_synthetic_identities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarter-width iResNet-18 trained for ~1.5 CPU minutes verifies unseen synthetic identities well above
    chance at HR (the generator carries identity, the pipeline learns it end to end)."""
    from fskd.data.synthetic import generate_dataset

    root = tmp_path / "synth200"
    generate_dataset(root, identities=200, images_per_identity=8, pairs=200, seed=1)
    monkeypatch.chdir(tmp_path)
    cli = lightning_main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(root),
                          "--trainer.max_steps", "200", "--trainer.val_check_interval", "200",
                          "--model.milestones", "[140, 180]", "--data.val_resolutions", "[112]", *FAST])
    metrics = cli.trainer.callback_metrics
    accuracies = [float(metrics[f"val/{name}/112/acc"]) for name in ("agedb_30", "lfw", "cfp_fp")]
    assert min(accuracies) > 0.75 and sum(accuracies) / 3 > 0.80, accuracies


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_fit_without_data_root_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    from fskd.cli import main

    monkeypatch.chdir(tmp_path)
    # The error raised while linking num_classes comes out as itself, not inside jsonargparse's wrapper.
    with pytest.raises(FileNotFoundError, match="no training set"):
        lightning_main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(tmp_path), *FAST])
    capsys.readouterr()
    assert main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(tmp_path), *FAST]) == 1
    assert last_line(capsys.readouterr().err) == (
        f"fskd fit: error: FileNotFoundError: {tmp_path}: no training set (expected train.rec + train.idx, or "
        "train.list + image/)")


def _tiny_teacher(path: Path) -> Path:
    teacher = TeacherModule(num_classes=10, backbone="iresnet18", width=0.125, embedding_size=32)
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}, path)
    return path


@pytest.mark.parametrize("case", ["truncated teacher", "unknown distillation", "askd without cbam"])
def test_a_failing_fit_ends_with_its_reason_on_one_line(case: str, tiny_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Before, the reason sat inside jsonargparse's "Does not validate against any of the Union subtypes" and the
    last line was a dump of the whole model configuration."""
    from fskd.cli import main

    monkeypatch.chdir(tmp_path)
    teacher = _tiny_teacher(tmp_path / "teacher.ckpt")
    built = " (while building --model fskd.systems.DistillModule)"
    if case == "truncated teacher":
        truncated = tmp_path / "truncated.ckpt"
        truncated.write_bytes(teacher.read_bytes()[:5000])
        options = ["--model.teacher_ckpt", str(truncated)]
        expected = (re.escape(f"fskd fit: error: ValueError: {truncated}: not a readable checkpoint (") + r"[^\n]+\)"
                    + re.escape(built))
    elif case == "unknown distillation":
        options = ["--model.teacher_ckpt", str(teacher), "--model.distill", "nope"]
        expected = (re.escape("fskd fit: error: ValueError: unknown distillation loss 'nope'; expected one of: ")
                    + r"fskd, [\w, ]+" + re.escape(built))
    else:
        options = ["--model.teacher_ckpt", str(teacher), "--model.distill", "askd"]
        expected = re.escape(f"fskd fit: error: ValueError: {teacher}: 'askd' needs CBAM teacher and student with "
                             f"the same blocks; teacher ir [2, 2, 2, 2], student ir [2, 2, 2, 2]{built}")
    assert main(["fit", *config_args(STUDENT_CONFIG), *TINY, "--data.root", str(tiny_root), *options]) == 1
    error = capsys.readouterr().err
    assert re.fullmatch(expected, last_line(error)), last_line(error)
    assert "Namespace(" not in error and "Does not validate against any of the Union subtypes" not in error
    assert not (tmp_path / "runs").exists()


def test_a_usage_error_ends_with_the_option_and_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    from fskd.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--model.lr", "abc"])
    assert stopped.value.code == 2
    assert last_line(capsys.readouterr().err) == "fskd: error: --model.lr: Expected a <class 'float'>. Got value: abc"


def test_parser_messages_condense_to_the_option_and_the_reason() -> None:
    nested = ("Parser key \"model\":\n  Does not validate against any of the Union subtypes\n  Subtypes: [A, B]\n"
              "  Errors:\n    - Problem with given class_path 'fskd.systems.TeacherModule':\n"
              "        Parser key \"lr\":\n          Expected a <class 'float'>. Got value: abc\n"
              "    - Expected a <class 'NoneType'>\n  Given value type: <class 'NestedArg'>\n"
              "  Given value: NestedArg(key='lr', val='abc')")
    assert condense_parser_message(nested) == "--model.lr: Expected a <class 'float'>. Got value: abc"
    assert condense_parser_message("Unrecognized arguments: --nope 1") == "Unrecognized arguments: --nope 1"
    assert condense_parser_message('Parser key "data.root": Expected a <class \'str\'>') == (
        "--data.root: Expected a <class 'str'>")


def test_predict_writes_embeddings_of_a_rec_file(tiny_teacher_ckpt: Path, synth_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from fskd.data.datasets import RecordFaceDataset
    from fskd.data.degrade import degrade_fixed
    from fskd.data.images import normalize
    from fskd.models.loading import load_backbone

    monkeypatch.chdir(tmp_path)
    output = tmp_path / "embeddings"
    run_cli("predict", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(synth_root),
            "--data.predict_source", str(synth_root / "train.rec"), "--data.predict_resolution", "14",
            "--ckpt_path", str(tiny_teacher_ckpt), "--trainer.callbacks+=fskd.callbacks.EmbeddingWriter",
            "--trainer.callbacks.output", str(output), *FAST)
    embeddings = np.load(f"{output}.npy")
    names = (tmp_path / "embeddings.txt").read_text().splitlines()
    assert embeddings.shape == (400, 128) and names[:2] == ["rec:1", "rec:2"] and len(names) == 400
    backbone = load_backbone(tiny_teacher_ckpt)
    records = RecordFaceDataset(synth_root / "train.rec", synth_root / "train.idx")
    images = torch.stack([records[i]["image"] for i in (0, 399)])
    with torch.no_grad():  # float32, although the config trains in bf16-mixed (eval_fp32)
        expected = backbone(degrade_fixed(normalize(images), 14)).embedding
    np.testing.assert_allclose(embeddings[[0, 399]], expected.numpy(), rtol=1e-4, atol=1e-3)


def test_validation_holds_the_features_of_one_set_and_resolution_at_a_time(tiny_root: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 sets x 2 resolutions = 6 loaders read one after another: when loader k sends its first batch, the
    # accuracies of loaders < k are computed and their features freed, so a validation never holds more than
    # the current loader's features (on a GPU: 12-15 loaders x 12,000-14,000 images x 2 x 512 floats otherwise).
    from tests.helpers import callbacks

    monkeypatch.chdir(tmp_path)
    callbacks.HELD.clear()
    cli = lightning_main(["validate", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(tiny_root),
                          *TINY, "--data.val_sets", "[agedb_30,lfw,cfp_fp]", "--data.val_resolutions", "[112,14]",
                          "--data.val_batch_size", "16",
                          "--trainer.callbacks+=tests.helpers.callbacks.HeldFeaturesProbe"])
    assert [loader for loader, _, _ in callbacks.HELD] == [k for k in range(6) for _ in range(3)]  # 40 images / 16
    for loader, finished, holding in callbacks.HELD:
        assert finished == list(range(loader)) and holding == [loader]
    for name in ("agedb_30", "lfw", "cfp_fp"):
        for resolution in ("112", "14"):
            assert 0.0 <= float(cli.trainer.callback_metrics[f"val/{name}/{resolution}/acc"]) <= 1.0

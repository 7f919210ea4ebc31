"""The command line as a user drives it: fit then validate, metrics named per set and resolution (the configs
themselves: tests/test_configs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fskd.commands.lightning import lightning_main
from tests.conftest import CONFIGS, FAST, REPO, run_cli


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


def test_fit_without_data_root_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # jsonargparse wraps errors raised while linking num_classes into a ValueError; the message is kept.
    with pytest.raises((FileNotFoundError, ValueError), match="no training set"):
        run_cli("fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(tmp_path), *FAST)


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
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = backbone(degrade_fixed(normalize(images), 14)).embedding.float()
    np.testing.assert_allclose(embeddings[[0, 399]], expected.numpy(), rtol=0.05, atol=0.05)

"""Shared fixtures: one small synthetic dataset per session, written by the project's own generator and writers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

#: Overrides that make a config CPU-test sized: no loader workers, no progress bar.
FAST = ["--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 identities x 8 images, 200 pairs per verification set (the CI size)."""
    from fskd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, identities=50, images_per_identity=8, pairs=200, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 identities x 4 images, 20 pairs per verification set (reliability, DDP and fault tests). Tests
    that change files work on a copy (``data_copy`` in test_faults)."""
    from fskd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny")
    generate_dataset(root, identities=10, images_per_identity=4, pairs=20, seed=0)
    return root


def run_cli(*args: str) -> None:
    from fskd.cli import main

    assert main(list(args)) == 0


@pytest.fixture(scope="session")
def tiny_teacher_ckpt(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher trained for a few steps through the real CLI (used by distillation tests)."""
    workdir = tmp_path_factory.mktemp("teacher")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        run_cli("fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.root", str(synth_root),
                "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0", *FAST)
    finally:
        os.chdir(cwd)
    ckpt = workdir / "runs/synthetic/checkpoints/last.ckpt"
    assert ckpt.is_file()
    return ckpt

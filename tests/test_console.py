"""The console stays quiet and truthful: no advertising, no made-up epoch totals, no FLOPs nobody counted."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest
from lightning.pytorch.utilities import rank_zero_info

from fskd.callbacks.console import QUIET_WARNINGS, ParameterSummary, ProgressBar, quiet_console


def test_lightning_advertising_and_self_inflicted_info_lines_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_console()
    quiet_console()  # idempotent
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero_info("Trainer already configured with model summary callbacks: [ParameterSummary].")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


@pytest.mark.parametrize("message", [
    "Found 80 module(s) in eval mode at the start of training. This may lead to unexpected behavior",
    "The dirpath has changed from 'a' to 'b', therefore `best_model_score` ... won't be reloaded.",
])
def test_warnings_fskd_decided_about_are_ignored(message: str) -> None:
    quiet_console()
    matching = [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None and f[1].match(message)]
    assert matching and len(warnings.filters) == len(set(map(str, warnings.filters)))
    assert len(QUIET_WARNINGS) == sum(1 for f in warnings.filters if f[0] == "ignore" and f[1] is not None
                                      and any(f[1].pattern == m for m, _ in QUIET_WARNINGS))


def _bar(max_epochs: int | None, max_steps: int) -> ProgressBar:
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=max_epochs, max_steps=max_steps)
    return bar


def test_progress_bar_describes_step_based_runs_truthfully() -> None:
    assert _bar(-1, 47000)._get_train_description(6) == "Epoch 6 of a 47000-step run"
    assert _bar(-1, -1)._get_train_description(6) == "Epoch 6"
    assert _bar(10, -1)._get_train_description(6).strip() == "Epoch 6/9"  # epoch-based: Lightning's own text


def test_progress_bar_total_counts_batches_of_accumulated_steps() -> None:
    # 4 optimizer steps left of 8 accumulated batches each: 32 batches, not Lightning's "4"
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=47000, global_step=46996, accumulate_grad_batches=8,
                                   num_training_batches=15450)
    assert bar.total_train_batches == 32
    bar._trainer.accumulate_grad_batches = 1
    assert bar.total_train_batches == 4
    bar._trainer.global_step = 0
    assert bar.total_train_batches == 15450  # the epoch ends first


def test_parameter_summary_has_no_flops_line(caplog: pytest.LogCaptureFixture) -> None:
    data = [(" ", ["0", "1"]), ("Name", ["backbone", "head"]), ("Type", ["IResNet", "CosFace"]),
            ("Params", ["184 K", "2.0 K"]), ("Mode", ["train", "train"]), ("FLOPs", ["0", "0"])]
    with caplog.at_level(logging.INFO):
        ParameterSummary.summarize(data, 186_944, 186_944, 0.75, {"train": 2, "eval": 0}, total_flops=0)
    text = caplog.text
    assert "FLOPs" not in text and "backbone | IResNet" in text
    assert "186,944 trainable and 0 frozen parameters (0.8 MB in float32)" in text

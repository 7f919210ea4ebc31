"""DDP on CPU (2 gloo processes through Lightning's ``ddp`` strategy): checkpoints that do not depend on the
number of processes, identical verification metrics, uneven validation, NaN handling without deadlock, and a
failure of one process only, which ends every process.

All DDP work runs in one subprocess script (tests/helpers/ddp_reliability_script.py) with a timeout, in its own
process group, so that a hang fails the test and no process outlives it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fskd.commands.lightning import lightning_main
from tests.conftest import REPO
from tests.helpers.reliability import (
    TEACHER_CONFIG,
    TINY,
    checkpoint_path,
    fit,
    recorded_steps,
    single_thread,
    subprocess_env,
    working_directory,
)

#: End-to-end runs of whole commands; `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

STOP, TOTAL_STEPS = 4, 8
RECORD = ["--trainer.callbacks+=tests.helpers.reliability.RecordBatches"]
EVALUATION = ["--data.val_resolutions", "[112, 14]", "--data.val_batch_size", "20"]
SCRIPT_TIMEOUT = 420


@pytest.fixture(scope="module")
def runs(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """1-process reference runs, then every 2-process phase of the script."""
    root = tiny_root
    work = tmp_path_factory.mktemp("ddp")
    with single_thread():
        reference = fit(work / "reference", "--data.root", str(root), "--trainer.max_steps", str(TOTAL_STEPS),
                        *RECORD)
        fit(work / "stopped", "--data.root", str(root), "--trainer.max_steps", str(STOP))
    out = work / "out"
    out.mkdir()
    spec = {"root": str(root), "out": str(out), "one_process_ckpt": str(checkpoint_path(work / "stopped")),
            "stop": STOP, "steps": TOTAL_STEPS}
    (work / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, str(REPO / "tests/helpers/ddp_reliability_script.py"), str(work / "spec.json")]
    log = work / "ddp.log"
    with open(log, "w") as stream:
        process = subprocess.Popen(command, cwd=work, env=subprocess_env(), stdout=stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline, signalled = time.monotonic() + SCRIPT_TIMEOUT, False
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if not signalled and (out / "paused").exists():
                os.killpg(process.pid, signal.SIGTERM)  # every process of the run, as SLURM does
                signalled = True
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"the DDP script hung (>{SCRIPT_TIMEOUT} s):\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert process.returncode == 0 and signalled, output[-4000:]
    results = {}
    for path in out.glob("*-rank*.json"):
        phase, rank = path.stem.rsplit("-rank", 1)
        results.setdefault(phase, {})[int(rank)] = json.loads(path.read_text())
    return {"root": root, "work": work, "out": out, "results": results, "log": output,
            "reference": checkpoint_path(work / "reference"), "reference_steps": recorded_steps(reference),
            "stopped": checkpoint_path(work / "stopped")}


def _gone(pid: int) -> bool:
    """Exited (a zombie awaiting its reaper counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _same_position(a: dict, b: dict) -> None:
    """Training order position, flip/degradation generator, step counters and learning rate: exactly equal."""
    assert a["FaceDataModule"]["position"] == b["FaceDataModule"]["position"]
    assert torch.equal(a["FaceDataModule"]["generator"], b["FaceDataModule"]["generator"])
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["lr_schedulers"] == b["lr_schedulers"]
    progress = "epoch_loop.batch_progress"
    assert a["loops"]["fit_loop"][progress] == b["loops"]["fit_loop"][progress]


def test_every_phase_ran_on_both_processes_and_none_is_left(runs: dict) -> None:
    results = runs["results"]
    assert set(results) == {"resume_1to2", "train_2", "validate_2", "validate_uneven", "nan_rank1", "sigterm"}
    pids = set()
    for phase, by_rank in results.items():
        assert set(by_rank) == {0, 1}, phase
        pids |= {record["pid"] for record in by_rank.values()}
    assert len(pids) == 2
    for pid in pids:
        assert _gone(pid), f"process {pid} outlived the DDP script"


def test_two_process_checkpoint_holds_the_same_position_and_resumes_in_one_process(runs: dict,
                                                                                  tmp_path: Path) -> None:
    two = runs["out"] / "train_2/runs/synthetic/checkpoints/last.ckpt"
    _same_position(_load(two), _load(runs["stopped"]))
    target = checkpoint_path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(two.read_bytes())
    with single_thread():
        resumed = fit(tmp_path, "--data.root", str(runs["root"]), "--trainer.max_steps", str(TOTAL_STEPS),
                      "--ckpt_path", "last", *RECORD)
    # The same global batches, flips and degradations as the 1-process run from step STOP + 1 on.
    assert recorded_steps(resumed) == runs["reference_steps"][STOP:]
    # A checkpoint resumed in another folder writes last-v1.ckpt next to the copied last.ckpt.
    final = _load(Path(resumed.trainer.checkpoint_callback.last_model_path))
    reference = _load(runs["reference"])
    _same_position(final, reference)
    assert final["optimizer_states"][0]["state"].keys() == reference["optimizer_states"][0]["state"].keys()
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())


def test_one_process_checkpoint_resumes_in_two_processes(runs: dict) -> None:
    ranks = runs["results"]["resume_1to2"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == TOTAL_STEPS
    # Rank 0 trains on the even slots of each global batch of the 1-process run, exactly.
    for seen, reference in zip(ranks[0]["steps"], runs["reference_steps"][STOP:], strict=True):
        assert seen["step"] == reference["step"] and seen["labels"] == reference["labels"][0::2]
    final = _load(Path(ranks[0]["last"]))
    _same_position(final, _load(runs["reference"]))


def test_verification_metric_of_a_fixed_model_is_identical_with_one_and_two_processes(runs: dict,
                                                                                      tmp_path: Path) -> None:
    with working_directory(tmp_path), single_thread():
        cli = lightning_main(["validate", "--config", TEACHER_CONFIG, *TINY, *EVALUATION, "--data.root",
                              str(runs["root"]), "--ckpt_path", str(runs["stopped"])])
    single = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert {"val/lfw/112/acc", "val/lfw/14/acc", "val/lfw/14/insightface_acc", "val/mean_acc"} <= set(single)
    for phase in ("validate_2", "validate_uneven"):
        for rank, record in runs["results"][phase].items():
            assert record["metrics"] == single, (phase, rank)  # exact, every key, on every process
    assert [record["batches"] for _, record in sorted(runs["results"]["validate_uneven"].items())] == [
        [3, 3], [1, 1]]  # rank 1 ran fewer batches than rank 0 and nothing deadlocked


def test_nan_on_one_process_stops_every_process(runs: dict) -> None:
    errors = {rank: record["error"] for rank, record in runs["results"]["nan_rank1"].items()}
    for rank, error in errors.items():
        assert error.startswith("non-finite loss at optimizer step 2 (epoch 0, batch 1 of the epoch, process "
                                f"{rank}): ce="), error
    assert "ce=nan" in errors[1] and "ce=nan" not in errors[0]  # rank 0's own loss was finite


def test_sigterm_to_every_process_saves_once_and_all_exit_143(runs: dict) -> None:
    """Lightning 2.6's own handler crashes here (collectives inside the signal handler); fskd's stops every
    process at the same batch boundary."""
    assert {rank: record["status"] for rank, record in runs["results"]["sigterm"].items()} == {0: 143, 1: 143}
    saved = _load(runs["out"] / "sigterm/runs/synthetic/checkpoints/last.ckpt")
    assert saved["global_step"] == 2 and saved["FaceDataModule"]["position"]["consumed"] == 32
    assert "resume with --ckpt_path last" in runs["log"]


RANK_LOCAL_TIMEOUT = 120


def test_a_failure_of_one_process_ends_every_process_naming_it(tiny_root: Path, tmp_path: Path) -> None:
    """Only process 1 raises, at step 5 (after the validation and checkpoint of step 3), while process 0 waits in
    the gradient all-reduce. Before, process 1's save-on-exception entered a barrier, the collectives no longer
    matched and the run hung until the 30-minute process-group timeout; now every process ends at once."""
    command = [sys.executable, "-m", "fskd", "fit", "--config", TEACHER_CONFIG, *TINY, "--data.root",
               str(tiny_root), "--trainer.max_steps", "8", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
               "--trainer.strategy", "ddp", "--trainer.callbacks+=tests.helpers.reliability.RaiseAtStep",
               "--trainer.callbacks.step", "5", "--trainer.callbacks.rank", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, error = process.communicate(timeout=RANK_LOCAL_TIMEOUT)  # until both processes closed the pipes
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, error = process.communicate()
        pytest.fail(f"a failure of one process hung the run (>{RANK_LOCAL_TIMEOUT} s):\n{error[-4000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # nothing should be left; never leave anything behind
    assert process.returncode != 0, error[-4000:]
    cause = "RuntimeError: injected failure at optimizer step 5 on process 1"
    failed = re.escape("process 1 of 2 (host ") + r"[^,]+, pid \d+\) failed at optimizer step 5 \(epoch 1\): " \
        + re.escape(cause)
    lines = error.splitlines()
    # Process 0 (the one the user started) says who failed and why, and stops.
    assert any(re.fullmatch("fskd: stopping process 0 of 2 because " + failed, line) for line in lines), error[-4000:]
    # Process 1 announces its failure, then ends with it as its last line.
    assert any(re.fullmatch("fskd: " + failed + "; nothing is saved for this failure, and the other processes "
                            "stop", line) for line in lines), error[-4000:]
    assert f"fskd fit: error: process 1 of 2: {cause}" in lines
    # What is saved: nothing for the failure; the checkpoints of the validation at step 3 stay as they were.
    checkpoints = checkpoint_path(tmp_path).parent
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert _load(checkpoints / "last.ckpt")["global_step"] == 3

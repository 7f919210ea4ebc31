"""Two-process CPU DDP (gloo) runs of the real CLI for tests/test_ddp.py; each phase writes one JSON per rank.

Usage: ``python tests/helpers/ddp_reliability_script.py SPEC.json``, where the spec names ``root`` (tiny dataset),
``out`` (a folder), ``one_process_ckpt`` (a 1-process checkpoint after ``stop`` steps), ``steps`` (the total).
Lightning's ``ddp`` strategy re-runs this script for rank 1, so both processes go through the same phases, in
the same order, in one process group:

1. ``resume_1to2``: resume ``one_process_ckpt`` with 2 processes up to ``steps``;
2. ``train_2``: train ``stop`` steps from scratch with 2 processes (its checkpoint is resumed with 1 process
   by the test);
3. ``validate_2``: validate ``one_process_ckpt`` (a fixed model) with 2 processes;
4. ``validate_uneven``: the same with validation loaders split 3:1 between the ranks, so rank 1 runs fewer
   batches (3 against 1) than rank 0;
5. ``nan_rank1``: a NaN loss on rank 1 only, at step 2: both processes must stop with the error;
6. ``sigterm``: rank 0 writes ``out/paused`` after step 2 and waits; the test then sends SIGTERM to the whole
   process group (as SLURM signals every task): both processes must save and exit with status 143.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fskd.commands.lightning import lightning_main, release_process_group  # noqa: E402
from fskd.data.datamodule import FaceDataModule  # noqa: E402
from tests.helpers.reliability import TEACHER_CONFIG, TINY  # noqa: E402

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
RECORD = "--trainer.callbacks+=tests.helpers.reliability.RecordBatches"


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _write(out: Path, phase: str, record: dict) -> None:
    record = {"rank": _rank(), "pid": os.getpid(), **record}
    (out / f"{phase}-rank{_rank()}.json").write_text(json.dumps(record))


def _metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}


def _run(workdir: Path, *args: str):
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    return lightning_main(list(args))


class _UnevenSampler(DistributedSampler):
    """Contiguous, unpadded split: rank 0 gets the first three quarters, rank 1 the rest."""

    def __init__(self, size: int, rank: int) -> None:
        super().__init__(range(size), num_replicas=2, rank=rank, shuffle=False)
        cut = 3 * size // 4
        self.indices = list(range(cut)) if rank == 0 else list(range(cut, size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _uneven_val_dataloader(self: FaceDataModule) -> list[DataLoader]:
    return [DataLoader(d, batch_size=self.val_batch_size, sampler=_UnevenSampler(len(d), self._rank()))
            for d in self.val_datasets]


def main(spec_path: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    out, root, steps = Path(spec["out"]), spec["root"], str(spec["steps"])
    common = ["--config", TEACHER_CONFIG, *TINY, *DDP, "--data.root", root]
    evaluation = ["--data.val_resolutions", "[112, 14]", "--data.val_batch_size", "20"]

    # 1. A 1-process checkpoint continued by 2 processes.
    workdir = out / "resume_1to2"
    target = workdir / "runs/synthetic/checkpoints"
    if _rank() == 0:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(spec["one_process_ckpt"], target / "last.ckpt")
    cli = _run(workdir, "fit", *common, "--trainer.max_steps", steps, "--ckpt_path", "last", RECORD)
    children = list(getattr(cli.trainer.strategy.launcher, "procs", []))  # rank 1, started by rank 0
    steps_seen = next(c for c in cli.trainer.callbacks if type(c).__name__ == "RecordBatches").steps
    _write(out, "resume_1to2", {"global_step": cli.trainer.global_step, "steps": steps_seen,
                                "last": cli.trainer.checkpoint_callback.last_model_path})

    # 2. 2 processes from scratch.
    cli = _run(out / "train_2", "fit", *common, "--trainer.max_steps", str(spec["stop"]))
    _write(out, "train_2", {"global_step": cli.trainer.global_step})

    # 3. Verification of a fixed model.
    cli = _run(out / "validate_2", "validate", *common, *evaluation, "--ckpt_path", spec["one_process_ckpt"])
    _write(out, "validate_2", {"metrics": _metrics(cli)})

    # 4. Ranks with different numbers of validation batches.
    FaceDataModule.val_dataloader = _uneven_val_dataloader
    cli = _run(out / "validate_uneven", "validate", *common, *evaluation, "--data.val_batch_size", "10",
               "--ckpt_path", spec["one_process_ckpt"])
    batches = [int(n) for n in cli.trainer.num_val_batches]
    _write(out, "validate_uneven", {"metrics": _metrics(cli), "batches": batches})

    # 5. NaN on rank 1 only.
    try:
        _run(out / "nan_rank1", "fit", *common, "--trainer.max_steps", steps,
             "--trainer.callbacks+=tests.helpers.reliability.NaNAtStep", "--trainer.callbacks.step", "2",
             "--trainer.callbacks.rank", "1")
        error = ""
    except FloatingPointError as caught:
        error = str(caught)
    except Exception:  # anything else is a failure the test reports
        error = "unexpected: " + traceback.format_exc()
    _write(out, "nan_rank1", {"error": error})

    # 6. SIGTERM to every process.
    try:
        _run(out / "sigterm", "fit", *common, "--trainer.max_steps", steps,
             "--trainer.callbacks+=tests.helpers.reliability.PauseAtStep", "--trainer.callbacks.step", "2",
             "--trainer.callbacks.marker", str(out / "paused"))
        status = 0
    except SystemExit as stopped:
        status = stopped.code
    _write(out, "sigterm", {"status": status})
    release_process_group()
    for child in children:
        child.wait(timeout=120)  # no process outlives the script


if __name__ == "__main__":
    main(sys.argv[1])

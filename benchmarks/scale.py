"""Real-size dry run: the CASIA-WebFace recipes, unchanged but for a few steps, on CASIA-shaped data.

Runs the commands a user runs, as subprocesses (``python -m fskd fit|validate --config configs/casia_ir50.yaml``),
on a folder written by ``fskd synth --shape casia`` (10,572 identities, 494,414 images, 6,000/6,000/7,000
pairs), and measures what the first hour of a real run depends on:

* ``teacher``: the HR teacher recipe for ``--steps`` optimizer steps: time from the command to the first
  training batch and to the end of the first optimizer step, steady img/s (the steps after the first), peak
  RSS and private memory (USS) of the main process and of each loader worker, process count, peak ``/dev/shm``
  use, the checkpoint's size and the time one write of it takes (``trainer.save_checkpoint`` through the
  project's atomic checkpoint IO);
* ``resume``: the same recipe stopped after ``--steps - 1`` steps and resumed (``--ckpt_path last``) for the
  last one must give the teacher run's final weights and optimizer state, bit for bit;
* ``student``: the F-SKD student recipe (``method/fskd.yaml`` + ``resolution/14.yaml``) from that teacher;
* ``positives``: the ``fskd_cross`` positives table built for the training labels from random embeddings
  (its time, size and memory at this scale, without the teacher's embedding pass);
* ``validation``: one full validation, 3 sets x (112, 56, 28, 14, cross14) px, both protocols, wall time and
  peak memory. On a CPU the forward passes of an iResNet-50 over 380,000 images would take hours, so unless
  ``--val-backbone recipe`` the backbone is swapped for a small one (the data, loaders, metric gathering and
  both 10-fold protocols are the real ones), and the iResNet-50 forward share is estimated from its measured
  inference rate (the ``forward`` row).

The global batch stays 256: ``--batch`` images per step, ``--accumulate`` steps per optimizer step (on a GPU:
``--batch 256 --accumulate 1``, the recipe as written). Each row is printed as soon as it is measured.

    python benchmarks/scale.py --data data/casia_synth --out runs/scale            # this CPU (~25 minutes)
    python benchmarks/scale.py --data DIR --out OUT --device cuda --batch 256 --accumulate 1 --val-backbone recipe
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    StreamingTable,
    autocast,
    base_parser,
    fmt,
    machine_info,
    report,
    synchronize,
)

EVENTS_ENV = "FSKD_SCALE_EVENTS"
START_ENV = "FSKD_SCALE_T0"
RECIPE = "configs/casia_ir50.yaml"
STUDENT_OVERLAYS = ("configs/method/fskd.yaml", "configs/resolution/14.yaml")
FULL_VALIDATION = "[112,56,28,14,cross14]"
RECIPE_STEPS = 47_000
RECIPE_BATCH = 256


class Probe(L.Callback):
    """Appends timestamped events (seconds since the command started, `START_ENV`) to the JSON-lines file named
    by `EVENTS_ENV`: the first training batch, every optimizer step, validation start/end, and at the end of
    training one timed checkpoint write (its size and seconds)."""

    def __init__(self) -> None:
        self.path = os.environ.get(EVENTS_ENV)
        self.t0 = float(os.environ.get(START_ENV, time.time()))
        self.first_batch = True
        self.last_step = -1

    def _event(self, name: str, **values: Any) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as stream:
            stream.write(json.dumps({"event": name, "t": time.time() - self.t0, **values}) + "\n")

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._event("train_start")

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        if self.first_batch:
            self.first_batch = False
            self._event("first_batch", batch_images=int(next(iter(batch.values())).shape[0]),
                        step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           index: int) -> None:
        if trainer.global_step != self.last_step:
            synchronize(module.device)
            self.last_step = trainer.global_step
            self._event("step", step=trainer.global_step)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._event("validation_start", sanity=trainer.sanity_checking)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        synchronize(module.device)
        self._event("validation_end", sanity=trainer.sanity_checking)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        target = Path(trainer.default_root_dir) / "scale-probe.ckpt"
        start = time.perf_counter()
        trainer.save_checkpoint(target, weights_only=False)
        seconds = time.perf_counter() - start
        self._event("checkpoint_write", seconds=seconds, bytes=target.stat().st_size)
        target.unlink()


def _read_kib(path: Path, keys: tuple[str, ...]) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            total += int(value.split()[0])
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


class TreeMonitor(threading.Thread):
    """Samples every ``interval`` seconds the RSS and private memory (USS) of a process and of all its
    descendants (Linux /proc), and the used bytes of /dev/shm; keeps the peaks per process. (Reading
    ``smaps_rollup`` walks a process's page tables: at 0.5 s this thread took ~20 % of a core on 2 cores.)"""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss: dict[int, int] = {}
        self.peak_uss: dict[int, int] = {}
        self.peak_processes = 0
        self.peak_shm = 0
        self.stopped = threading.Event()

    def _tree(self) -> list[int]:
        pids, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            queue += _children(pid)
        return pids

    def run(self) -> None:
        while not self.stopped.is_set():
            pids = self._tree()
            self.peak_processes = max(self.peak_processes, len(pids))
            for pid in pids:
                rss = _read_kib(Path(f"/proc/{pid}/status"), ("VmRSS",))
                uss = _read_kib(Path(f"/proc/{pid}/smaps_rollup"), ("Private_Clean", "Private_Dirty"))
                if rss is not None:
                    self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss * 1024)
                if uss is not None:
                    self.peak_uss[pid] = max(self.peak_uss.get(pid, 0), uss * 1024)
            try:
                shm = os.statvfs("/dev/shm")
                self.peak_shm = max(self.peak_shm, (shm.f_blocks - shm.f_bfree) * shm.f_frsize)
            except OSError:
                pass
            self.stopped.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        workers = [pid for pid in self.peak_rss if pid != self.pid]
        return {
            "main_rss": self.peak_rss.get(self.pid, 0), "main_uss": self.peak_uss.get(self.pid, 0),
            "workers": len(workers),
            "worker_rss_max": max((self.peak_rss[p] for p in workers), default=0),
            "worker_uss_max": max((self.peak_uss.get(p, 0) for p in workers), default=0),
            "processes_at_once": self.peak_processes, "shm_used_peak": self.peak_shm,
        }


def run_fskd(label: str, arguments: list[str], out: Path) -> dict[str, Any]:
    """``python -m fskd ARGUMENTS`` with the probe attached; its log in ``out/label.log``."""
    events = out / f"{label}.events.jsonl"
    events.unlink(missing_ok=True)
    start = time.time()
    env = {**os.environ, EVENTS_ENV: str(events), START_ENV: repr(start), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fskd", *arguments, "--trainer.callbacks+=benchmarks.scale.Probe"]
    with open(out / f"{label}.log", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        monitor = TreeMonitor(process.pid)
        monitor.start()
        code = process.wait()
        monitor.stopped.set()
        monitor.join()
    seconds = time.time() - start
    if code != 0:
        tail = (out / f"{label}.log").read_text().splitlines()[-15:]
        raise SystemExit(f"{label}: exit {code} after {seconds:.0f} s; last lines of {out / label}.log:\n"
                         + "\n".join(tail))
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return {"seconds": seconds, "events": lines, **monitor.summary()}


def _first(events: list[dict], name: str, **match: Any) -> dict | None:
    return next((e for e in events if e["event"] == name and all(e.get(k) == v for k, v in match.items())), None)


def training_figures(result: dict[str, Any], images_per_step: int) -> dict[str, Any]:
    """Time to the first batch and step, steady img/s over the steps after the first, checkpoint write."""
    events = result["events"]
    # Optimizer steps taken by this run: those past the step it started from (0, or the resumed step).
    first_batch = _first(events, "first_batch")
    start = first_batch.get("step", 0) if first_batch else 0
    steps = [e for e in events if e["event"] == "step" and e["step"] > start]
    figures: dict[str, Any] = {
        "first_batch_s": first_batch["t"] if first_batch else None,
        "first_step_s": steps[0]["t"] if steps else None,
        "steady_img_s": (images_per_step * (len(steps) - 1) / (steps[-1]["t"] - steps[0]["t"])
                         if len(steps) > 1 else None),
    }
    write = _first(events, "checkpoint_write")
    if write:
        figures.update(checkpoint_bytes=write["bytes"], checkpoint_write_s=write["seconds"])
    return figures


def same_training_state(first: Path, second: Path) -> tuple[bool, str]:
    """Two checkpoints hold bit-identical weights, optimizer state and step."""
    a = torch.load(first, map_location="cpu", weights_only=False)
    b = torch.load(second, map_location="cpu", weights_only=False)
    if a["global_step"] != b["global_step"]:
        return False, f"global_step {a['global_step']} != {b['global_step']}"
    for name, tensor in a["state_dict"].items():
        if not torch.equal(tensor, b["state_dict"][name]):
            return False, f"weights differ: {name}"
    for index, (left, right) in enumerate(zip(a["optimizer_states"], b["optimizer_states"], strict=True)):
        for key, state in left["state"].items():
            for field, value in state.items():
                if torch.is_tensor(value) and not torch.equal(value, right["state"][key][field]):
                    return False, f"optimizer {index} state {key}.{field} differs"
    return True, f"weights, optimizer state and step {a['global_step']} identical"


def forward_rate(device: str, batch: int, precision: str, rounds: int = 3) -> float:
    """Inference img/s of the recipe's iResNet-50 (eval, autocast) at 112x112: the validation's forward cost."""
    from fskd.models import create_backbone

    target = torch.device(device)
    model = create_backbone("iresnet50").to(target).eval()
    images = torch.randn(batch, 3, 112, 112, device=target)
    with torch.inference_mode(), autocast(target, precision):
        model(images)
        synchronize(target)
        start = time.perf_counter()
        for _ in range(rounds):
            model(images)
        synchronize(target)
    return rounds * batch / (time.perf_counter() - start)


def positives_cost(data: Path) -> dict[str, Any]:
    """Build the ``fskd_cross`` positives table for the training set's labels from random 512-d embeddings
    (identity centre + noise: every same-identity pair is accepted, the worst case for its size): seconds,
    candidates and their bytes, and this process's peak RSS (Linux ru_maxrss) after it."""
    import resource

    import numpy as np

    from fskd.data.datasets import RecordFaceDataset
    from fskd.data.positives import build_positive_table, dataset_labels

    labels = dataset_labels(RecordFaceDataset(data / "train.rec", data / "train.idx"))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((int(labels.max()) + 1, 512)).astype(np.float32)
    embeddings = centres[labels] + 0.8 * rng.standard_normal((labels.size, 512)).astype(np.float32)
    start = time.perf_counter()
    table = build_positive_table(embeddings, labels, cross_margin=0.2)
    seconds = time.perf_counter() - start
    return {"images": int(labels.size), "seconds": seconds, "candidates": int(table.candidates.size),
            "candidate_bytes": int(table.candidates.nbytes),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def mib(value: int) -> str:
    return fmt(value / 2**20)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="CASIA-shaped folder (fskd synth --shape casia)")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"), help="runs and logs")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps of each training run (>= 2)")
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass")
    parser.add_argument("--accumulate", type=int, default=8, help="forward passes per optimizer step")
    parser.add_argument("--workers", type=int, default=None, help="training loader workers (default: the recipe's)")
    parser.add_argument("--sanity-steps", type=int, default=None,
                        help="Lightning's sanity check batches per validation loader before training (default: the "
                             "recipe's 2 on a GPU, 0 on a CPU, where 2 x 12 batches of iResNet-50 forwards take "
                             "~12 minutes)")
    parser.add_argument("--val-backbone", default="iresnet18:0.0625",
                        help="NAME:WIDTH of the backbone for the full validation, or 'recipe' (iResNet-50)")
    stages = ["teacher", "resume", "student", "validation", "forward", "positives"]
    parser.add_argument("--stages", nargs="+", default=stages, choices=stages)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (one step to start, the others to measure)")
    if args.batch * args.accumulate != RECIPE_BATCH:
        print(f"note: global batch {args.batch * args.accumulate}, not the recipe's {RECIPE_BATCH}", file=sys.stderr)
    if not (args.data / "train.idx").is_file():
        parser.error(f"--data {args.data}: no train.idx (write one with: fskd synth --out {args.data} --shape casia)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str(args.data.resolve())
    accelerator = ["--trainer.accelerator", "gpu"] if args.device.startswith("cuda") else \
        ["--trainer.accelerator", "cpu"]
    common = [*accelerator, "--data.root", data, "--trainer.default_root_dir", str(out),
              "--data.batch_size", str(args.batch), "--trainer.accumulate_grad_batches", str(args.accumulate)]
    if args.workers is not None:
        common += ["--data.num_workers", str(args.workers)]
    sanity = args.sanity_steps if args.sanity_steps is not None else (2 if args.device.startswith("cuda") else 0)
    common += ["--trainer.num_sanity_val_steps", str(sanity)]
    images_per_step = args.batch * args.accumulate
    table = StreamingTable("Real-size dry run (CASIA-shaped data, the real configs)",
                           ["stage", "command to 1st batch (s)", "to 1st step done (s)", "steady img/s",
                            "main RSS / USS (MiB)", "per worker RSS / USS (MiB)", "processes", "/dev/shm peak (MiB)",
                            "checkpoint (MiB, write s)", "wall (s)", "notes"])
    results: dict[str, Any] = {}

    def training_row(label: str, result: dict[str, Any], note: str) -> None:
        figures = training_figures(result, images_per_step)
        results[label] = {**{k: v for k, v in result.items() if k != "events"}, **figures}
        checkpoint = (f"{mib(figures['checkpoint_bytes'])}, {fmt(figures['checkpoint_write_s'])}"
                      if "checkpoint_bytes" in figures else "")
        table.row([label, fmt(figures["first_batch_s"] or 0), fmt(figures["first_step_s"] or 0),
                   fmt(figures["steady_img_s"] or 0), f"{mib(result['main_rss'])} / {mib(result['main_uss'])}",
                   f"{mib(result['worker_rss_max'])} / {mib(result['worker_uss_max'])} (x{result['workers']})",
                   result["processes_at_once"], mib(result["shm_used_peak"]), checkpoint, fmt(result["seconds"]),
                   note])

    teacher_ckpt = out / "teacher" / "checkpoints" / "last.ckpt"
    if "teacher" in args.stages:
        result = run_fskd("teacher", ["fit", "--config", RECIPE, "--run", "teacher", *common,
                                      "--trainer.max_steps", str(args.steps)], out)
        training_row("teacher", result, f"{args.steps} steps of {images_per_step} images")
    if "resume" in args.stages:
        run_fskd("resume-part1", ["fit", "--config", RECIPE, "--run", "resumed", *common,
                                  "--trainer.max_steps", str(args.steps - 1)], out)
        result = run_fskd("resume-part2", ["fit", "--config", RECIPE, "--run", "resumed", *common,
                                           "--trainer.max_steps", str(args.steps), "--ckpt_path", "last"], out)
        same, why = same_training_state(teacher_ckpt, out / "resumed" / "checkpoints" / "last.ckpt")
        results["resume"] = {"identical": same, "detail": why, "seconds": result["seconds"]}
        training_row("resume (last step)", result, ("same state as uninterrupted: " if same else "DIFFERS: ") + why)
    if "student" in args.stages:
        overlays = [part for config in STUDENT_OVERLAYS for part in ("--config", config)]
        result = run_fskd("student", ["fit", "--config", RECIPE, *overlays, "--run", "student", *common,
                                      "--model.init_args.teacher_ckpt", str(teacher_ckpt),
                                      "--trainer.max_steps", str(args.steps)], out)
        training_row("F-SKD student (14 px)", result, f"{args.steps} steps; frozen iResNet-50 teacher")
    if "validation" in args.stages:
        backbone = [] if args.val_backbone == "recipe" else [
            "--model.init_args.backbone", args.val_backbone.split(":")[0],
            "--model.init_args.width", args.val_backbone.split(":")[1]]
        result = run_fskd("validation", ["validate", "--config", RECIPE, "--run", "validation", *accelerator,
                                         "--data.root", data, "--trainer.default_root_dir", str(out),
                                         "--data.val_resolutions", FULL_VALIDATION, *backbone], out)
        start, end = _first(result["events"], "validation_start"), _first(result["events"], "validation_end")
        loop = end["t"] - start["t"] if start and end else float("nan")
        results["validation"] = {**{k: v for k, v in result.items() if k != "events"}, "loop_seconds": loop}
        table.row(["full validation", fmt(start["t"] if start else 0), "", "",
                   f"{mib(result['main_rss'])} / {mib(result['main_uss'])}",
                   f"{mib(result['worker_rss_max'])} / {mib(result['worker_uss_max'])} (x{result['workers']})",
                   result["processes_at_once"], mib(result["shm_used_peak"]), "", fmt(result["seconds"]),
                   f"3 sets x {FULL_VALIDATION}, both protocols; validation loop {fmt(loop)} s; backbone "
                   f"{args.val_backbone}"])
    if "forward" in args.stages:
        rate = forward_rate(args.device, 256 if args.device.startswith("cuda") else 64, "bf16")
        images = 2 * 5 * (6000 + 6000 + 7000) * 2  # pairs -> images, x flip, x 5 evaluation resolutions
        results["forward"] = {"img_s": rate, "validation_forward_seconds": images / rate}
        table.row(["iResNet-50 inference", "", "", fmt(rate), "", "", "", "", "", "",
                   f"full validation's {images:,} forward images: {fmt(images / rate)} s"])
    if "positives" in args.stages:
        cost = positives_cost(args.data)
        results["positives"] = cost
        table.row(["fskd_cross positives table", "", "", "", f"{mib(cost['peak_rss'])} (this script, peak)", "", "",
                   "", "", fmt(cost["seconds"]), f"{cost['images']:,} random embeddings, {cost['candidates']:,} "
                   f"candidates = {mib(cost['candidate_bytes'])} MiB (worst case: all same-identity pairs)"])
    notes = [f"Global batch {images_per_step} = {args.batch} x {args.accumulate} accumulated; data {data}; "
             f"sanity check batches per validation loader: {sanity}.",
             "img/s counts training images through the optimizer step (the F-SKD student also runs the frozen "
             "teacher on them). RSS counts shared pages in each process; USS only its private pages.",
             f"Recipe estimate: {RECIPE_STEPS:,} steps x {RECIPE_BATCH} images / (steady img/s)."]
    if "teacher" in results and results["teacher"].get("steady_img_s"):
        hours = RECIPE_STEPS * RECIPE_BATCH / results["teacher"]["steady_img_s"] / 3600
        notes.append(f"At this teacher rate the 47,000-step recipe takes {fmt(hours)} h of training steps.")
    report("Real-size dry run", table, machine_info(torch.device(args.device)), args, results, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

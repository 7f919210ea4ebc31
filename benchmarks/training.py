"""Training-step throughput: teacher vs F-SKD student, frozen-teacher cost, Lightning overhead, and options.

For one backbone and batch (default iResNet-18 width 0.25, batch 32, bf16 autocast, on the CPU) it times, in
interleaved rounds:

* a `TeacherModule` training step and a `DistillModule` (``distill="fskd"``) step in a plain PyTorch loop
  (zero_grad, autocast forward through the module's own ``training_step``, backward, SGD and scheduler step);
* the frozen teacher's forward alone (``no_grad``), as a fraction of each step;
* the same two steps run by ``lightning.Trainer.fit`` (``max_steps``, in-memory batch already on the device,
  no logger, checkpointing or validation), steady-state time per step from a callback clock;
* optional variants of the plain loop: ``--channels-last``, ``--fused-sgd``, ``--compile`` (``torch.compile``
  of the backbones; on a CPU this compiles for minutes, so it is off by default), ``--fp32`` (no autocast),
  ``--no-finite-check`` (the modules' ``check_finite_loss`` off), ``--cudnn-benchmark`` (GPU).

The distillation teacher is a freshly initialised `TeacherModule` saved as the checkpoint a `DistillModule`
loads (the numbers do not depend on the weights). GPU: ``--device cuda --backbone iresnet50 --width 1 --batch
256 --precision bf16`` (see benchmarks/gpu.sh).

Run: ``python benchmarks/training.py [--size smoke|small|default] [--json out.json] [--channels-last]``.
"""

from __future__ import annotations

import copy
import logging
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    StreamingTable,
    autocast,
    base_parser,
    fmt,
    interleaved,
    machine_info,
    report,
    resolve_device,
    synchronize,
)
from fskd.data.degrade import degrade_fixed  # noqa: E402
from fskd.systems.base import FaceRecognitionModule  # noqa: E402
from fskd.systems.distill import DistillModule  # noqa: E402
from fskd.systems.teacher import TeacherModule  # noqa: E402

RECIPE_ITERATIONS = 47_000  # the authors' paper-era schedule (batch 256)
CASIA_CLASSES = 10_572
SIZES = {  # backbone, width, batch, classes, timed steps per candidate, untimed warm-up steps
    "smoke": ("iresnet18", 0.0625, 4, 100, 1, 0),
    "small": ("iresnet18", 0.25, 16, CASIA_CLASSES, 4, 1),
    "default": ("iresnet18", 0.25, 32, CASIA_CLASSES, 8, 1),
}
LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


def quiet() -> None:
    """Silence Lightning's start-up chatter and expected warnings so that the output is one table."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    for text in ("You are trying to `self.log()`", "The number of training batches",
                 "does not have many workers", "GPU available but not used", "LeafSpec", "treespec",
                 "in eval mode at the start of training",
                 "You defined a `validation_step` but have no `val_dataloader`",
                 # fp16: the GradScaler skips the optimizer step whose gradients overflowed at its first scale
                 "Detected call of `lr_scheduler.step()` before `optimizer.step()`"):
        warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")


@dataclass
class PlainLoop:
    """A module with its own optimizer and schedule, stepped without Lightning; fp16 steps go through a
    ``GradScaler`` (made at the first fp16 step), as Lightning's ``16-mixed`` does."""

    module: FaceRecognitionModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def of(cls, module: FaceRecognitionModule, fused: bool = False) -> PlainLoop:
        config = module.configure_optimizers()
        optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        if fused:
            group = optimizer.param_groups[0]
            optimizer = torch.optim.SGD(group["params"], lr=group["lr"], momentum=group["momentum"],
                                        nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                                        fused=True)
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=scheduler.milestones,
                                                             gamma=scheduler.gamma)
        module.train()
        return cls(module, optimizer, scheduler)

    def steps(self, batch: dict[str, torch.Tensor], count: int, device: torch.device, precision: str) -> None:
        if precision == "fp16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(device.type)
        for _ in range(count):
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = self.module.training_step(batch, 0)
            if precision == "fp16":
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()


def with_cudnn_benchmark(loop: PlainLoop, batch: dict[str, torch.Tensor], count: int, device: torch.device,
                         precision: str) -> None:
    """``loop.steps`` with cuDNN autotuning on (restored afterwards, so the other candidates run without)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        loop.steps(batch, count, device, precision)
    finally:
        torch.backends.cudnn.benchmark = previous


class _RepeatedBatch(torch.utils.data.Dataset):
    """The same (device-resident) batch ``length`` times: an in-memory dataset with no loading cost."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


@dataclass
class LightningComparison:
    """Seconds of each Lightning step and of the plain-loop step run right after it; the fit's seconds."""

    lightning: list[float]
    plain: list[float]
    fit_seconds: float
    precision: str = ""
    """The precision the Trainer ran with (on a CPU Lightning runs ``16-mixed`` as ``bf16-mixed``)."""

    def time_ratio(self) -> float:
        """Median over steps of lightning / plain: the Lightning overhead factor (1 = none)."""
        return statistics.median(a / b for a, b in zip(self.lightning, self.plain, strict=True))


def lightning_versus_plain(module: FaceRecognitionModule, plain: PlainLoop, batch: dict[str, torch.Tensor],
                           steps: int, warmup: int, device: torch.device,
                           precision: str) -> LightningComparison:
    """``Trainer.fit`` of ``module`` for ``warmup + steps`` steps; after each step a callback runs one step of
    ``plain`` (the same model, another copy) so that every Lightning step is paired with a plain step taken
    seconds apart, which keeps the ratio steady on a shared machine.

    A Lightning step is timed from the end of the previous paired plain step to the end of this training
    batch: fetching the in-memory batch, the hooks, the autocast forward, backward, optimizer and scheduler
    steps and ``self.log`` bookkeeping.
    """
    import lightning as L

    lightning_seconds: list[float] = []
    plain_seconds: list[float] = []
    last_end: list[float] = []

    class Alternate(L.Callback):
        def on_train_start(self, *args: object) -> None:
            synchronize(device)
            last_end.append(time.perf_counter())

        def on_train_batch_end(self, *args: object) -> None:
            synchronize(device)
            now = time.perf_counter()
            lightning_seconds.append(now - last_end[-1])
            plain.steps(batch, 1, device, precision)
            synchronize(device)
            last_end.append(time.perf_counter())
            plain_seconds.append(last_end[-1] - now)

    total_steps = warmup + steps
    trainer = L.Trainer(accelerator=device.type, devices=1, precision=LIGHTNING_PRECISION[precision],
                        max_steps=total_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[Alternate()])
    loader = torch.utils.data.DataLoader(_RepeatedBatch(batch, total_steps), batch_size=None)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    fit_seconds = time.perf_counter() - start
    if len(lightning_seconds) != total_steps:
        raise RuntimeError(f"Lightning ran {len(lightning_seconds)} steps instead of {total_steps}")
    return LightningComparison(lightning_seconds[warmup:], plain_seconds[warmup:], fit_seconds,
                               str(trainer.precision))


def build_modules(args: object, checkpoint: Path) -> tuple[TeacherModule, DistillModule]:
    """A teacher module and an F-SKD student of the same architecture (teacher saved to ``checkpoint``)."""
    architecture = {"num_classes": args.classes, "backbone": args.backbone, "width": args.width}
    torch.manual_seed(0)
    teacher = TeacherModule(**architecture)
    if not checkpoint.exists():
        state = {"state_dict": teacher.state_dict(), "hyper_parameters": dict(teacher.hparams)}
        torch.save(state, checkpoint)
    student = DistillModule(teacher_ckpt=str(checkpoint), distill="fskd", **architecture)
    return teacher, student


def make_batch(batch: int, classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(batch, 3, 112, 112, generator=generator).mul(2).sub(1)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return {"hr": hr.to(device), "lr": degrade_fixed(hr, 14).to(device), "label": labels.to(device)}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None, help="iresnet18/34/50/100 (default: from --size)")
    parser.add_argument("--width", type=float, default=None, help="width multiplier (default: from --size)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: from --size)")
    parser.add_argument("--classes", type=int, default=None, help="identities of the margin head")
    parser.add_argument("--precision", choices=sorted(LIGHTNING_PRECISION), default="bf16")
    parser.add_argument("--rounds", type=int, default=None, help="timed steps of every candidate")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps of every candidate first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 gives per-core figures that stay comparable on a shared "
                             "machine, 0 keeps torch's default")
    parser.add_argument("--no-lightning", action="store_true", help="skip the lightning.Trainer rows")
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last modules/inputs")
    parser.add_argument("--fused-sgd", action="store_true", help="also time SGD(fused=True)")
    parser.add_argument("--compile", action="store_true", help="also time compiled backbones")
    parser.add_argument("--fp32", action="store_true", help="also time the plain loop without autocast")
    parser.add_argument("--no-finite-check", action="store_true",
                        help="also time the plain loop with the modules' check_finite_loss off (its per-step "
                             "part: a record kept on the device)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="also time the plain loop with torch.backends.cudnn.benchmark on (CUDA only)")
    args = parser.parse_args(argv)
    keys = ("backbone", "width", "batch", "classes", "rounds", "warmup")
    for key, value in zip(keys, SIZES[args.size], strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = resolve_device(args.device)
    if args.cudnn_benchmark and device.type != "cuda":
        parser.error("--cudnn-benchmark needs --device cuda")
    if args.channels_last and device.type == "cpu" and args.width < 0.25:
        # Not a measurement but a crash: heap corruption ("free(): invalid next size") in the CPU backward.
        parser.error(f"--channels-last on the CPU needs --width >= 0.25: torch {torch.__version__}'s CPU "
                     f"convolutions corrupt memory for channels_last iResNets narrower than that (width "
                     f"{args.width:g})")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    quiet()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # Rows are printed as they are measured (benchmarks/gpu.sh keeps them if a time limit stops the run).
    table = StreamingTable("Training step throughput", ["measurement", "ms/step", "img/s", "ratio", "ratio means"])
    results: dict[str, object] = {}

    def add(name: str, label: str, seconds: float, ratio: float, meaning: str, **extra: object) -> None:
        results[name] = {"seconds_per_step": seconds, "images_per_second": args.batch / seconds,
                         "ratio": ratio, "ratio_meaning": meaning, **extra}
        table.row([label, fmt(seconds * 1e3), fmt(args.batch / seconds), fmt(ratio), meaning])

    with tempfile.TemporaryDirectory(prefix="fskd-bench-train-") as tmp:
        checkpoint = Path(tmp) / "teacher.ckpt"
        teacher, student = (m.to(device) for m in build_modules(args, checkpoint))
        batch = make_batch(args.batch, args.classes, device)
        loops = {"teacher": PlainLoop.of(teacher), "student": PlainLoop.of(student)}
        batches = {"teacher": batch, "student": batch}
        compile_seconds: dict[str, float] = {}
        for role, module in (("teacher", teacher), ("student", student)):
            if args.channels_last:
                loops[f"{role} channels_last"] = PlainLoop.of(
                    copy.deepcopy(module).to(memory_format=torch.channels_last))
                batches[f"{role} channels_last"] = {
                    k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
                    for k, v in batch.items()}
            if args.fused_sgd:
                loops[f"{role} fused SGD"] = PlainLoop.of(copy.deepcopy(module), fused=True)
                batches[f"{role} fused SGD"] = batch
            if args.compile:
                compiled = copy.deepcopy(module)
                compiled.backbone = torch.compile(compiled.backbone)
                if role == "student":
                    compiled.teacher = torch.compile(compiled.teacher)
                loop = PlainLoop.of(compiled)
                start = time.perf_counter()
                loop.steps(batch, 1, device, args.precision)
                synchronize(device)
                compile_seconds[role] = time.perf_counter() - start
                loops[f"{role} torch.compile"] = loop
                batches[f"{role} torch.compile"] = batch

        def teacher_forward() -> None:
            with torch.no_grad(), autocast(device, args.precision):
                student.teacher(batch["hr"])

        candidates: dict[str, Callable[[], object]] = {
            name: (lambda loop=loop, b=batches[name]: loop.steps(b, 1, device, args.precision))
            for name, loop in loops.items()}
        candidates["frozen teacher forward"] = teacher_forward
        if args.no_finite_check:
            for role in ("teacher", "student"):
                unchecked = copy.deepcopy(loops[role].module)
                if "check_finite_loss" not in unchecked.hparams:
                    parser.error("--no-finite-check: these fskd modules have no check_finite_loss option")
                unchecked.hparams["check_finite_loss"] = False
                loop = PlainLoop.of(unchecked)
                candidates[f"{role} finite check off"] = lambda loop=loop: loop.steps(batch, 1, device,
                                                                                     args.precision)
        if args.fp32 and args.precision != "fp32":
            for role in ("teacher", "student"):
                loop = PlainLoop.of(copy.deepcopy(loops[role].module))
                candidates[f"{role} fp32"] = lambda loop=loop: loop.steps(batch, 1, device, "fp32")
        if args.cudnn_benchmark:
            for role in ("teacher", "student"):
                candidates[f"{role} cudnn.benchmark"] = (lambda loop=loops[role]: with_cudnn_benchmark(
                    loop, batch, 1, device, args.precision))
        timings = interleaved(candidates, rounds=args.rounds, warmup=max(args.warmup, 1), device=device)

        def plain(name: str, label: str, ratio: float, meaning: str, **extra: object) -> None:
            add(name, label, timings.median(name), ratio, meaning, step_seconds=timings.seconds[name], **extra)

        plain("teacher", "teacher step, plain loop", 1.0, "reference")
        plain("student", "F-SKD student step, plain loop", timings.time_ratio("student", "teacher"),
              "step time / teacher step")
        plain("frozen teacher forward", "frozen teacher forward (no_grad)",
              timings.time_ratio("frozen teacher forward", "student"), "fraction of the F-SKD step",
              fraction_of_teacher_step=timings.time_ratio("frozen teacher forward", "teacher"))
        variants = ("channels_last", "fused SGD", "torch.compile", "cudnn.benchmark", "fp32", "finite check off")
        for variant in variants:
            for role, label in (("teacher", "teacher"), ("student", "F-SKD student")):
                name = f"{role} {variant}"
                if name in timings.seconds:
                    extra = {"first_step_seconds": compile_seconds[role]} if variant == "torch.compile" else {}
                    plain(name, f"{label} step, {variant}", timings.time_ratio(name, role),
                          "step time / plain loop", **extra)

        comparisons: dict[str, LightningComparison] = {}
        if not args.no_lightning:
            lightning_modules = build_modules(args, checkpoint)
            for role, module, label in zip(("teacher", "student"), lightning_modules, ("teacher", "F-SKD student"),
                                           strict=True):
                comparison = lightning_versus_plain(module.to(device), loops[role], batch, args.rounds,
                                                    args.warmup, device, args.precision)
                comparisons[role] = comparison
                add(f"{role} Lightning", f"{label} step, lightning.Trainer",
                    statistics.median(comparison.lightning), comparison.time_ratio(),
                    "step time / plain step run next to it",
                    step_seconds=comparison.lightning, paired_plain_seconds=comparison.plain,
                    fit_seconds=comparison.fit_seconds)
        del candidates, loops, batches

    for role, label in (("teacher", "teacher"), ("student", "F-SKD student")):
        source = f"{role} Lightning" if role in comparisons else role
        hours = RECIPE_ITERATIONS * results[source]["seconds_per_step"] / 3600
        results[f"{role} recipe hours"] = hours
        table.row([f"{label}: {RECIPE_ITERATIONS:,} iterations x batch {args.batch}", "", "", fmt(hours),
                   f"hours at the {source} rate"])

    fit_note = ""
    if comparisons:
        fit_note = (f"; one fit() of {args.warmup + args.rounds} steps took "
                    f"{fmt(comparisons['teacher'].fit_seconds)} s (teacher) with the paired plain steps")
    scaler_note = " with a GradScaler" if args.precision == "fp16" else ""
    lightning_precision = comparisons["teacher"].precision if comparisons else LIGHTNING_PRECISION[args.precision]
    notes = [f"{args.backbone} width {args.width}, batch {args.batch}, {args.classes} classes, "
             f"{args.precision} autocast{scaler_note} on {device} (Lightning: precision "
             f"{lightning_precision}); medians of {args.rounds} steps per candidate after "
             f"{args.warmup} warm-up, candidates alternating step by step (plain loop) or paired with a "
             f"plain step inside the fit (Lightning){fit_note}."]
    if compile_seconds:
        notes.append("torch.compile first step (compilation): "
                     + ", ".join(f"{role} {fmt(s)} s" for role, s in compile_seconds.items()) + ".")
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        notes.append(f"Peak GPU memory (all candidates): {fmt(results['peak_memory_gib'])} GiB.")
    report("Training step throughput", table, machine_info(device), args, results, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

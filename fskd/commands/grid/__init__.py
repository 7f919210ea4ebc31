"""``fskd grid``: the paper's comparison on synthetic faces, with seeds and paired statistics.

One synthetic dataset (seed 0) and one HR teacher (plus a CBAM teacher for A-SKD) are trained once; then, per
seed, one round of students: the base student (labels only) and every distillation method at 14 px with the
authors' weights, and the base and F-SKD students at 28, 56 and ``multi``. The first ``other_seeds`` rounds hold
every student, later rounds only the 14 px base and F-SKD students. Every model is one ``fskd fit`` and one
``fskd validate`` (112/56/28/14 px, both protocols) through the real CLI; its rows go to ``results.csv`` at
once, and a rerun skips the models already there (``--out`` is resumable per model). ``results.md``,
``accuracy_vs_resolution.png`` and ``differences.png`` are rewritten at the end from the whole CSV.

Modules: `plan` (presets, models, fitting and scoring), `report` (statistics, tables, pictures).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fskd.commands.fits import add_run_options, apply_run_options
from fskd.commands.grid.plan import METHODS, PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fskd grid", description="Every distillation method against the base student on synthetic faces, "
        "paired by seed. Presets: " + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--out", default=None, help="run folder, resumable per model (default runs/grid/<preset>)")
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="methods to train (calibration: teacher base); the students' teachers are always "
                        "trained first")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="student seeds (default: the preset's)")
    add_run_options(parser)
    parser.add_argument("--report-only", action="store_true", help="train nothing: rewrite the report from the CSV")
    parser.add_argument("--progress-bar", action="store_true", help="Lightning progress bars")
    return parser


def main(argv: Sequence[str]) -> int:
    """``fskd grid``: run the missing models of the grid, then write the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from fskd.commands.grid.plan import Grid, load_rows, models
    from fskd.commands.grid.report import markdown, pictures

    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    synth = apply_run_options(parser, args)
    preset = PRESETS[args.preset]
    grid = Grid(out=Path(args.out or f"runs/grid/{preset.name}"), preset=preset, synth=synth,
                workers=args.workers, progress_bar=args.progress_bar)
    started = time.perf_counter()

    def say(text: str) -> None:
        elapsed = int(time.perf_counter() - started)
        print(f"[fskd grid {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    if not args.report_only:
        grid.run(models(preset, args.methods, args.seeds), say)
    rows = load_rows(grid.results, grid.stamp)
    if not rows:
        print(f"fskd grid: error: {grid.results} holds no rows of this preset and generator", file=sys.stderr)
        return 2
    command = "fskd grid " + " ".join(argv)
    header = [f"# fskd grid: preset `{preset.name}`", "", f"{preset.description}.", "",
              f"* command: `{command}`",
              f"* data: {preset.identities} training identities x {preset.images_per_identity} images (generator "
              f"seed 0{', ' + str(synth) if synth else ', SynthConfig defaults'}); {preset.pairs} pairs per "
              "verification set (10 folds)",
              f"* budgets: teachers {preset.teacher_steps} steps, students {preset.student_steps} steps (recipe: "
              "the demo's recipe.yaml, iResNet-18 at 1/8 width, batch 64, bf16 training and float32 evaluation, "
              "CosFace s 30 m 0.25, lr 0.1 /10 "
              "at 60 % and 85 %)",
              f"* rows: {grid.results} (stamp {grid.stamp})"]
    (grid.out / "results.md").write_text(markdown(rows, header))
    drawn = pictures(grid.out, rows)
    say(f"done: {grid.out / 'results.md'}" + "".join(f", {p.name}" for p in drawn))
    return 0

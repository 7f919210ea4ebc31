"""``fskd demo``: from nothing to a result table and pictures, through the real CLI and configs.

For each seed: write the synthetic identity faces (`fskd.data.synthetic.generate_dataset`), then train and
evaluate three models through `fskd.commands.lightning` with the configs in ``configs/`` beside this file
(``recipe.yaml``, the preset's overlays, then the model's overlay):

* ``teacher``: `TeacherModule` on HR (112 px) faces;
* ``baseline_14``: the same module on the 14 px policy (no distillation: the student from labels alone);
* ``fskd_14``: `DistillModule`, the 14 px student with the F-SKD loss from that seed's teacher.

Every model is scored by a ``validate`` run on the three verification sets at 112/56/28/14 px with both
protocols (its ``callback_metrics``). Its backbone is then loaded with `load_backbone` and run on the validate
run's own evaluation views (the DataModule's `evaluation_views`, the same degradation) to get per-pair cosine
scores for the ROC curves and the sample picture; their insightface accuracy is recomputed from those
embeddings as a check.

Modules: `running` (presets, settings, the fits, ``--resume``), `evaluation` (scoring one model and caching
it), `results` (rows, means over seeds, gains), `report` (CSV, Markdown, the pictures), `pictures` (plots).

Outputs in ``--out``: ``results.md``, ``results.csv``, ``results.json``, ``accuracy_vs_resolution.png``,
``roc_<set>_<res>.png``, ``samples.png``, and per seed ``seed<S>/`` (data, checkpoints, logs, pair scores).
Calibration runs use ``--models teacher baseline_14``: the generator is calibrated without ever training the
F-SKD student, whose gain is the measurement.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fskd.commands.demo.presets import DEFAULT_CONFIGS, PRESETS
from fskd.commands.demo.results import MODELS
from fskd.commands.fits import add_run_options, apply_run_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fskd demo", description="Synthetic faces -> teacher, base 14 px student and F-SKD 14 px "
        "student through the real CLI -> results.md/.csv and pictures. Presets: " +
        "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--out", default=None, help="run folder (default runs/demo/<preset>)")
    parser.add_argument("--preset", default="quick", choices=list(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of data and training (default: quick 0; full 0 1 2)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to train (calibration: teacher baseline_14, without the F-SKD student)")
    parser.add_argument("--configs", default=None, help="folder of the demo configs (recipe.yaml and its overlays; "
                        "default: the ones installed with fskd)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the datasets, fits and evaluations of an earlier run into the same --out "
                        "that had the same arguments (also: run seeds as separate processes, then combine)")
    parser.add_argument("--no-progress-bar", action="store_true", help="no Lightning progress bars")
    add_run_options(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """``fskd demo``: parse the arguments and run `run_demo`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from fskd.commands.demo.running import DemoSettings, check_settings, run_demo

    synth = apply_run_options(parser, args)
    preset = PRESETS[args.preset]
    settings = DemoSettings(out=Path(args.out or f"runs/demo/{preset.name}"), preset=preset,
                            seeds=tuple(args.seeds if args.seeds is not None else preset.seeds),
                            workers=args.workers, models=tuple(args.models),
                            configs=Path(args.configs) if args.configs else DEFAULT_CONFIGS,
                            resume=args.resume, progress_bar=not args.no_progress_bar, synth=synth)
    try:
        check_settings(settings)
    except (ValueError, FileNotFoundError) as error:
        print(f"fskd demo: error: {error}", file=sys.stderr)
        return 2
    run_demo(settings)
    return 0

"""``fskd realfaces``: does distilling an HR network's features help a network that sees 14 px real faces?

AT&T/ORL and Extended Yale B (moderate light) people are split into 5 folds; per fold and seed the frozen
imported teacher, a base student (MobileFaceNet initialised from the teacher, fine-tuned on the training
people's 14 px faces with a margin head) and an F-SKD student (the same plus the F-SKD loss towards the teacher's
HR stage maps) are scored on the test people at every resolution. Protocol and results: docs/real-faces.md.

Modules: `presets` (sizes), `protocol` (data, folds, recipe choice, fits, resumable results), `scoring`
(verification and identification of one model), `report` (tables, paired differences, the picture).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fskd.commands.realfaces.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd realfaces", description="F-SKD on real faces at low resolution "
                                     "(AT&T/ORL + Extended Yale B, a real pretrained MobileFaceNet teacher). "
                                     "Presets: " + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--data", required=True, help="folder with orl_faces/, extended_yale_b_cropped/ and "
                        "mobilefacenet_insightface_mxnet/ (e.g. ../shared/data/real-faces)")
    parser.add_argument("--out", required=True, help="run folder (results.csv, results.md, the picture, runs/)")
    parser.add_argument("--preset", default="smoke", choices=list(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the preset's)")
    parser.add_argument("--teacher", default=None, help="an fskd checkpoint of the teacher (default: import the "
                        "MobileFaceNet in --data once, into OUT/teacher.ckpt)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from fskd.commands.realfaces.protocol import Experiment, load_results
    from fskd.commands.realfaces.report import markdown, picture

    if args.threads:
        torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        print(f"fskd realfaces: error: {data}: data folder not found", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def progress(text: str) -> None:
        minutes, seconds = divmod(int(time.perf_counter() - start), 60)
        print(f"[fskd realfaces {minutes:d}:{seconds:02d}] {text}", flush=True)

    teacher = Path(args.teacher) if args.teacher else out / "teacher.ckpt"
    if not teacher.is_file():
        from fskd.commands import import_teacher

        progress(f"import the teacher -> {teacher}")
        prefix = data / "mobilefacenet_insightface_mxnet" / "model"
        if import_teacher.main([str(prefix), "--format", "mxnet", "--out", str(teacher)]) != 0:
            print(f"fskd realfaces: error: {teacher}: the imported teacher does not reload exactly", file=sys.stderr)
            return 1
    preset = PRESETS[args.preset]
    progress("faces and folds")
    experiment = Experiment(data, out, preset, teacher, tuple(args.seeds or preset.seeds))
    recipe, trials = experiment.run(progress)
    rows = load_results(experiment.results, experiment.stamp)
    minutes = (time.perf_counter() - start) / 60
    header = ["# fskd realfaces", "",
              f"* command: `fskd realfaces {' '.join(argv)}`; preset {preset.name} ({preset.description})",
              f"* data: {experiment.settings['images']} images of {experiment.settings['people']} people "
              "(AT&T/ORL, credit: Olivetti Research Laboratory; Extended Yale B cropped, Georghiades et al. "
              "2001, Lee et al. 2005, |azimuth| <= 35, |elevation| <= 25)",
              f"* this run (or its last resumption): {minutes:.1f} min"]
    (out / "results.md").write_text(markdown(rows, recipe, trials, header))
    picture(out / "accuracy_vs_resolution.png", rows)
    progress(f"done: {out / 'results.md'}")
    return 0

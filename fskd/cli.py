"""Command-line entry point: ``fskd`` (console script), ``python cli.py`` and ``python -m fskd`` are the same.

* ``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI with YAML configs (``--config configs/...``).
* ``synth``: write the synthetic identity-face dataset in the insightface formats.
* ``prepare``: convert a .rec/.idx + .bin folder to the authors' extracted layout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

TOOLS_HELP = """
fskd tools (besides the LightningCLI subcommands fit/validate/test/predict):
  fskd synth    --out DIR [--identities N --images-per-identity M --pairs P --seed S]
  fskd prepare  --source DIR --out DIR [--sets agedb_30 lfw cfp_fp]
  fskd identify --ckpt CKPT --root DIR [--layout tinyface|folder] [--resolution R]   (CMC rank-1/5/10/20)
  fskd export   --ckpt CKPT --onnx OUT.onnx [--torchscript OUT.pt]
  fskd synth-tinyface --out DIR [--identities N --probes P --gallery G --distractors D]
  fskd demo     [--out DIR] [--preset quick|full|smoke] [--seeds 0 1 2] [--workers N]   (data to tables)
"""


def _synth(argv: Sequence[str]) -> int:
    from fskd.data.synthetic import generate_dataset

    parser = argparse.ArgumentParser(prog="fskd synth", description="Write synthetic identity faces in the "
                                     "insightface layout (train.rec/.idx, property, agedb_30/lfw/cfp_fp.bin).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--identities", type=int, default=50, help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=200, help="pairs per verification set (multiple of 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    args = parser.parse_args(argv)
    summary = generate_dataset(args.out, identities=args.identities, images_per_identity=args.images_per_identity,
                               pairs=args.pairs, seed=args.seed, size=args.size, workers=args.workers,
                               progress=True)
    print(summary)
    return 0


def _prepare(argv: Sequence[str]) -> int:
    from fskd.data.folder import prepare

    parser = argparse.ArgumentParser(prog="fskd prepare", description="Convert train.rec/train.idx and <set>.bin "
                                     "files to image/<class>/<key>.jpg + train.list and evaluation/<set>/ + <set>.txt.")
    parser.add_argument("--source", required=True, help="folder with train.rec, train.idx, property, *.bin")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--sets", nargs="*", default=None, help="verification sets (default: every .bin found)")
    args = parser.parse_args(argv)
    counts = prepare(args.source, args.out, args.sets)
    print(", ".join(f"{name}: {count}" for name, count in counts.items()))
    return 0


TOOLS: dict[str, Callable[[Sequence[str]], int]] = {
    "synth": _synth,
    "prepare": _prepare,
    # Imported on use (fskd.tools): identification, deployment export, a synthetic TinyFace-layout folder.
    "identify": lambda argv: __import__("fskd.tools", fromlist=["x"]).identify_main(argv),
    "export": lambda argv: __import__("fskd.tools", fromlist=["x"]).export_main(argv),
    "synth-tinyface": lambda argv: __import__("fskd.tools", fromlist=["x"]).synth_tinyface_main(argv),
    # The whole synthetic pipeline: faces, teacher, base and F-SKD students, tables and pictures (fskd.demo).
    "demo": lambda argv: __import__("fskd.demo", fromlist=["x"]).demo_main(argv),
}


def lightning_main(argv: Sequence[str] | None = None, run: bool = True):
    """LightningCLI over `FaceDataModule` and any `FaceRecognitionModule` (``TeacherModule``, ``DistillModule``)."""
    from fskd.lightning_cli import FskdCLI

    return FskdCLI(args=list(argv) if argv is not None else None, run=run)


def main(argv: Sequence[str] | None = None) -> int:
    given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(TOOLS_HELP)
    # LightningCLI reads sys.argv itself when called from the shell (it warns when given both).
    lightning_main(given)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``fskd synth``: synthetic identity faces in the insightface layout (train.rec/.idx, property, *.bin)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd synth", description="Write synthetic identity faces in the "
                                     "insightface layout (train.rec/.idx, property, agedb_30/lfw/cfp_fp.bin).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--identities", type=int, default=50, help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=200, help="pairs per verification set (multiple of 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from fskd.data.synthetic import generate_dataset

    summary = generate_dataset(args.out, identities=args.identities, images_per_identity=args.images_per_identity,
                               pairs=args.pairs, seed=args.seed, size=args.size, workers=args.workers,
                               progress=True)
    print(summary)
    return 0

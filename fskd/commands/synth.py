"""``fskd synth``: synthetic identity faces in the insightface layout (train.rec/.idx, property, *.bin)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

SHAPES = ("uniform", "casia")
"""``uniform``: every identity has --images-per-identity images; ``casia``: CASIA-WebFace's size and skew."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fskd synth",
        description="Write synthetic identity faces in the insightface layout (train.rec/.idx, property, "
                    "agedb_30/lfw/cfp_fp.bin). --shape casia writes CASIA-WebFace's size: 10,572 identities, "
                    "494,414 images (2 to 804 per identity, skewed like CASIA's), 6,000/6,000/7,000 pairs "
                    "(about 2 GB, minutes with --workers 2).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shape", choices=SHAPES, default="uniform",
                        help="uniform (the default) or casia; --identities/--images/--pairs override its sizes")
    parser.add_argument("--identities", type=int, default=None,
                        help="training identities (default 50; casia: 10572)")
    parser.add_argument("--images-per-identity", type=int, default=8, help="uniform shape only")
    parser.add_argument("--images", type=int, default=None,
                        help="casia shape only: training images in all (default 494414), spread with CASIA's skew")
    parser.add_argument("--pairs", type=int, default=None,
                        help="pairs per verification set, a multiple of 20 (default 200; casia: AgeDB-30 6000, "
                             "LFW 6000, CFP-FP 7000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=1,
                        help=f"rendering processes (this machine has {os.cpu_count()} cores)")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fskd.data.synthetic import CASIA_IDENTITIES, CASIA_IMAGES, CASIA_PAIRS, casia_image_counts, generate_dataset

    if args.shape == "casia":
        identities = CASIA_IDENTITIES if args.identities is None else args.identities
        images = round(CASIA_IMAGES * identities / CASIA_IDENTITIES) if args.images is None else args.images
        try:
            per_identity: int | list[int] = casia_image_counts(identities, images, seed=args.seed).tolist()
        except ValueError as error:
            parser.error(f"--shape casia: {error}")
        pairs: int | dict[str, int] = dict(CASIA_PAIRS) if args.pairs is None else args.pairs
    else:
        if args.images is not None:
            parser.error("--images needs --shape casia (the uniform shape takes --images-per-identity)")
        identities = 50 if args.identities is None else args.identities
        per_identity = args.images_per_identity
        pairs = 200 if args.pairs is None else args.pairs
    try:
        summary = generate_dataset(args.out, identities=identities, images_per_identity=per_identity, pairs=pairs,
                                   seed=args.seed, size=args.size, workers=args.workers, progress=True)
    except ValueError as error:
        parser.error(str(error))
    size = sum(entry.stat().st_size for entry in os.scandir(args.out) if entry.is_file())
    summary["bytes_on_disk"] = size
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0

"""``fskd prepare``: insightface .rec/.idx + .bin files to the authors' extracted folder layout."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd prepare", description="Convert train.rec/train.idx and <set>.bin "
                                     "files to image/<class>/<key>.jpg + train.list and evaluation/<set>/ + <set>.txt.")
    parser.add_argument("--source", required=True, help="folder with train.rec, train.idx, property, *.bin")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--sets", nargs="*", default=None, help="verification sets (default: every .bin found)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from fskd.data.folder import prepare

    counts = prepare(args.source, args.out, args.sets)
    print(", ".join(f"{name}: {count}" for name, count in counts.items()))
    return 0

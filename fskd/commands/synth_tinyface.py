"""``fskd synth-tinyface``: synthetic faces in TinyFace's layout (``Probe/``, ``Gallery_Match/``,
``Gallery_Distractor/``), for trying ``fskd identify`` without the real data."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _optional_resolution(text: str) -> int | None:
    value = int(text)
    return None if value <= 0 else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd synth-tinyface", description="Write synthetic faces in "
                                     "TinyFace's layout: Probe/, Gallery_Match/, Gallery_Distractor/.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--identities", type=int, default=50, help="identities in probes and gallery")
    parser.add_argument("--probes", type=int, default=2, help="probe images per identity")
    parser.add_argument("--gallery", type=int, default=1, help="gallery images per identity")
    parser.add_argument("--distractors", type=int, default=200, help="distractor images (one per identity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-resolution", type=_optional_resolution, default=24,
                        help="probes are shrunk to this many pixels and scaled back (0: full resolution)")
    parser.add_argument("--gallery-resolution", type=_optional_resolution, default=None,
                        help="the same for gallery and distractor images (default: full resolution)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from fskd.data.synthetic import write_tinyface_layout

    summary = write_tinyface_layout(args.out, args.identities, args.probes, args.gallery, args.distractors,
                                    args.seed, probe_resolution=args.probe_resolution,
                                    gallery_resolution=args.gallery_resolution)
    print(f"{args.out}: {summary['probes']} probes, {summary['gallery_match']} gallery matches, "
          f"{summary['distractors']} distractors")
    return 0

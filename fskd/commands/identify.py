"""``fskd identify``: closed-set identification (TinyFace protocol) of a checkpoint's backbone.

Works on a TinyFace folder or on any ``root/<identity>/*.jpg`` folder; prints CMC rank-1/5/10/20 and writes
them to a CSV. A rank above the number of gallery items is reported as ``n/a``, with a note. Plain PyTorch
(the backbone is loaded with `fskd.models.load_backbone`).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Sequence
from pathlib import Path

from fskd.data.degrade import MODES
from fskd.evaluation.identification import DEFAULT_RANKS

LAYOUTS = ("auto", "tinyface", "folder")


#: How a rank above the gallery size (no CMC value, `cmc_scores` gives None) is printed and written.
NOT_APPLICABLE = "n/a"


def write_cmc_csv(path: str | os.PathLike, results: dict[int, float | None]) -> Path:
    """``rank,accuracy`` rows (accuracy as a fraction in [0, 1]; `NOT_APPLICABLE` for a rank above the gallery
    size, which pandas reads as missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "accuracy"])
        for rank, accuracy in results.items():
            writer.writerow([rank, NOT_APPLICABLE if accuracy is None else f"{accuracy:.6f}"])
    return path


def report_lines(results: dict[int, float | None], gallery_size: int) -> list[str]:
    """``rank-R: xx.xx%`` per rank (``n/a`` above the gallery size) and, if any is, a one-line note."""
    from fskd.evaluation.identification import ranks_beyond_gallery

    lines = [f"rank-{rank}: {NOT_APPLICABLE if accuracy is None else f'{100 * accuracy:.2f}%'}"
             for rank, accuracy in results.items()]
    beyond = ranks_beyond_gallery(results, gallery_size)
    if beyond:
        listed = ", ".join(str(rank) for rank in beyond)
        lines.append(f"note: rank {listed} not applicable: the gallery has only {gallery_size} items "
                     "(a top-k longer than the gallery would count every probe as found)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fskd identify", description="Closed-set identification (TinyFace "
                                     "protocol: flip-mean features, cosine similarity, CMC over gallery "
                                     "items).")
    parser.add_argument("--ckpt", required=True, help="TeacherModule/DistillModule checkpoint")
    parser.add_argument("--root", required=True, help="TinyFace folder (Probe/, Gallery_Match/, "
                        "Gallery_Distractor/) or an identity folder (root/<identity>/*.jpg)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto",
                        help="auto: tinyface when root/Probe exists, else folder")
    parser.add_argument("--resolution", type=int, default=112,
                        help="degrade every image to this resolution first (112: as stored, the TinyFace "
                        "protocol)")
    parser.add_argument("--interpolation", choices=MODES, default="nearest", help="degradation interpolation")
    parser.add_argument("--gallery-per-identity", type=int, default=1,
                        help="folder layout: gallery images per identity (the rest are probes)")
    parser.add_argument("--split-seed", type=int, default=None, help="folder layout: choose the gallery "
                        "images at random with this seed (default: the first ones in sorted order)")
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--ranks", type=int, nargs="+", default=list(DEFAULT_RANKS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--chunk-size", type=int, default=4096, help="block size of the ranking")
    parser.add_argument("--out", default=None, help="CSV of rank,accuracy (default: print only)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from fskd.data.layouts import TINYFACE_PROBE, load_tinyface_layout, split_identity_folder
    from fskd.evaluation.identification import cmc_scores, embed_images
    from fskd.models.loading import load_backbone

    layout = args.layout
    if layout == "auto":
        layout = "tinyface" if (Path(args.root) / TINYFACE_PROBE).is_dir() else "folder"
    if layout == "tinyface":
        probes, probe_labels, gallery, gallery_labels = load_tinyface_layout(args.root)
    else:
        probes, probe_labels, gallery, gallery_labels = split_identity_folder(
            args.root, args.gallery_per_identity, args.split_seed)
    print(f"{args.root} ({layout}): {len(probes)} probes, {len(gallery)} gallery items "
          f"({int((gallery_labels < 0).sum())} distractors)")
    backbone = load_backbone(args.ckpt, allow_student=True)
    start = time.perf_counter()
    options = {"batch_size": args.batch_size, "resolution": args.resolution, "flip": not args.no_flip,
               "interpolation": args.interpolation, "device": args.device, "num_workers": args.workers}
    probe_features = embed_images(backbone, probes, **options)
    gallery_features = embed_images(backbone, gallery, **options)
    # Ranked on the CPU in float64 whatever --device embedded the images (see fskd.evaluation.identification).
    results = cmc_scores(probe_features, probe_labels, gallery_features, gallery_labels, args.ranks,
                         args.chunk_size)
    print(f"embedded and ranked in {time.perf_counter() - start:.1f} s")
    for line in report_lines(results, len(gallery)):
        print(line)
    if args.out:
        print(f"wrote {write_cmc_csv(args.out, results)}")
    return 0

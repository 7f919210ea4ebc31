"""Verification cost: embedding (forward with flip TTA) and the 10-fold protocols, at four resolutions.

For an AgeDB-30-sized set (12,000 images = 6,000 pairs) it reports, per evaluation resolution:

* embedding: what `FaceRecognitionModule` does per validation batch after the transfer: normalise, degrade
  (`degrade_fixed`, nearest), and one forward of the images concatenated with their flips, in eval mode under
  autocast. On a CPU only ``--images`` images are embedded and the per-image rate is extrapolated to
  ``--target-images`` (JPEG decoding happens in loader workers and is measured by benchmarks/data.py);
* protocol: `evaluate_pairs` on the real 6,000-pair size with random 512-d features, each protocol alone
  (``fskd``: concatenated flips, per-fold mean subtraction, 20,001-point threshold grid; ``insightface``),
  and their time ratio (median of the per-round ``fskd / insightface`` ratios).

Run: ``python benchmarks/evaluation.py [--size smoke|small|default] [--device cuda --backbone iresnet50
--width 1 --images 12000] [--json out.json]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
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
)
from fskd.data.degrade import degrade_fixed  # noqa: E402
from fskd.data.images import normalize  # noqa: E402
from fskd.evaluation.verification import evaluate_pairs  # noqa: E402
from fskd.models import create_backbone  # noqa: E402

AGEDB_IMAGES = 12_000
SMOKE_TARGET_IMAGES = 1_200
ALL_SETS_IMAGES = 12_000 + 12_000 + 14_000  # AgeDB-30, LFW, CFP-FP
# backbone, width, images embedded per resolution, batch, protocol rounds, warm-up batches, warm-up rounds
SIZES = {
    "smoke": ("iresnet18", 0.0625, 8, 8, 1, 1, 0),
    "small": ("iresnet18", 0.25, 64, 64, 2, 3, 1),
    "default": ("iresnet18", 0.25, 128, 128, 3, 2, 1),
}


def embed(backbone: torch.nn.Module, images: torch.Tensor, resolution: int, batch: int,
          device: torch.device, precision: str) -> torch.Tensor:
    """Embeddings of ``images`` (uint8, on the device) and of their flips, batch by batch, like validation."""
    out = []
    with torch.no_grad(), autocast(device, precision):
        for start in range(0, images.shape[0], batch):
            degraded = degrade_fixed(normalize(images[start:start + batch]), resolution, "nearest")
            out.append(backbone(torch.cat([degraded, degraded.flip(-1)])).embedding.float())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None, help="iresnet18/34/50/100 (default: from --size)")
    parser.add_argument("--width", type=float, default=None, help="width multiplier (default: from --size)")
    parser.add_argument("--images", type=int, default=None, help="images embedded per resolution")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (x2 with flips)")
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[112, 56, 28, 14])
    parser.add_argument("--target-images", type=int, default=None,
                        help=f"images to extrapolate to (default {AGEDB_IMAGES:,}; 1,200 at --size smoke)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 gives per-core figures that stay comparable on a shared "
                             "machine, 0 keeps torch's default")
    args = parser.parse_args(argv)
    backbone_name, width, images_count, batch, rounds, warmup_batches, warmup_rounds = SIZES[args.size]
    args.backbone = args.backbone or backbone_name
    args.width = args.width or width
    args.images = args.images or images_count
    args.batch = args.batch or batch
    if args.target_images is None:
        args.target_images = SMOKE_TARGET_IMAGES if args.size == "smoke" else AGEDB_IMAGES
    if args.target_images % 20:
        parser.error("--target-images must be a multiple of 20 (two images per pair, 10 folds of pairs)")
    if len(set(args.resolutions)) != len(args.resolutions):
        parser.error(f"--resolutions must not repeat a value: {args.resolutions}")
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    backbone = create_backbone(args.backbone, width=args.width).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    shape = (args.images, 3, 112, 112)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device)
    for _ in range(warmup_batches):  # allocator, oneDNN/cuDNN algorithm choice
        embed(backbone, images[: min(args.batch, args.images)], 112, args.batch, device, args.precision)
    pairs = args.target_images // 2
    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.target_images, 512)).astype(np.float32)
    flipped = features + 0.1 * rng.standard_normal(features.shape).astype(np.float32)
    issame = np.arange(pairs) % 2 == 0
    protocols = {protocol: (lambda p=protocol: evaluate_pairs(features, flipped, issame, (p,)))
                 for protocol in ("fskd", "insightface")}
    protocol_timings = interleaved(protocols, rounds=rounds, warmup=warmup_rounds)
    protocol_seconds = {p: protocol_timings.median(p) for p in ("fskd", "insightface")}
    protocol_ratio = protocol_timings.time_ratio("fskd", "insightface")
    both = sum(protocol_seconds.values())

    # One row per resolution, printed as soon as that resolution is embedded (benchmarks/gpu.sh keeps the rows
    # finished before a time limit). One round each, in the order given, as one interleaved round would.
    table = StreamingTable("Verification cost", [
        "resolution", "embed img/s (image + flip)", f"embed s, {args.target_images:,} images",
        f"fskd protocol s, {pairs:,} pairs", "insightface protocol s", "fskd / insightface", "total s"])
    embed_seconds: dict[int, float] = {}
    results: dict[str, object] = {"embedding_seconds_measured": embed_seconds, "protocol_seconds": protocol_seconds,
                                  "protocol_time_ratio_fskd_over_insightface": protocol_ratio}
    total = 0.0
    for resolution in args.resolutions:
        timing = interleaved({resolution: lambda r=resolution: embed(backbone, images, r, args.batch, device,
                                                                     args.precision)},
                             rounds=1, warmup=0, device=device)
        embed_seconds[resolution] = timing.median(resolution)
        rate = args.images / embed_seconds[resolution]
        estimate = args.target_images / rate
        total += estimate + both
        results[f"embedding {resolution}"] = {"images_per_second": rate, "seconds_for_target": estimate}
        table.row([resolution, fmt(rate), fmt(estimate), fmt(protocol_seconds["fskd"]),
                   fmt(protocol_seconds["insightface"]), fmt(protocol_ratio), fmt(estimate + both)])
    results["total_seconds_for_target"] = total
    per_resolution = total / len(args.resolutions)
    all_sets = total * ALL_SETS_IMAGES / args.target_images
    results["estimated_seconds_all_three_sets"] = all_sets
    table.row([f"all {len(args.resolutions)}", "", "", "", "", "", fmt(total)])
    extrapolated = "measured on all of them" if args.images >= args.target_images else (
        f"embedding measured on {args.images} images and extrapolated")
    notes = [f"{args.backbone} width {args.width}, batch {args.batch} (+ flips), {args.precision} autocast "
             f"on {device}; {extrapolated}; protocols on random features, median of {rounds} interleaved "
             "rounds.",
             f"Mean {fmt(per_resolution)} s per resolution; AgeDB-30 + LFW + CFP-FP "
             f"({ALL_SETS_IMAGES:,} images) at these resolutions: about {fmt(all_sets)} s (scaled by image "
             "count)."]
    report("Verification cost", table, machine_info(device), args, results, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

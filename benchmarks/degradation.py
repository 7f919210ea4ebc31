"""Low-resolution degradation: our batched `Degradation` on a float batch against per-sample cv2 resizing.

* ours: `fskd.data.degrade.Degradation` on a (B, 3, 112, 112) float32 batch already on ``--device`` (what
  `FaceDataModule.training_views` runs after the transfer), policy ``14`` + ``nearest`` (paper-era) and
  ``multi`` + ``random`` (the authors' later code: resolution in {14, 28, 56, 112}, random modes both ways).
* authors: per sample, ``cv2.resize`` of a uint8 HWC image down to d x d and back to 112 x 112 (INTER_NEAREST,
  or for ``multi``/``random`` one of cv2's five modes drawn per direction, as their later code), one thread.
* proposed (``14``/``nearest`` only): `nearest_integer_degrade`, an exact fast path for nearest with an
  integer factor (strided slice down, broadcast up, one write, no clone/scatter), bit-identical to
  ``Degradation``; see docs/benchmarks.md for why it is proposed.

Run: ``python benchmarks/degradation.py [--size smoke|small|default] [--device cuda] [--json out.json]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    base_parser,
    fmt,
    interleaved,
    machine_info,
    markdown_table,
    report,
    resolve_device,
)
from fskd.data.degrade import Degradation  # noqa: E402

SIZES = {"smoke": (32, 2), "small": (256, 4), "default": (256, 10)}  # batch, timed rounds
CV2_MODES = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)
MULTI_RESOLUTIONS = (14, 28, 56, 112)


def cv2_degrade_batch(images: list[np.ndarray], resolution: int | None, rng: np.random.Generator) -> list:
    """Per-sample cv2 down+up resizing as the authors' Dataset; ``resolution=None``: their multi/random."""
    out = []
    for image in images:
        size = resolution if resolution is not None else MULTI_RESOLUTIONS[rng.integers(4)]
        if size >= image.shape[0]:
            out.append(image)
            continue
        if resolution is not None:
            down = up = cv2.INTER_NEAREST
        else:
            down, up = CV2_MODES[rng.integers(5)], CV2_MODES[rng.integers(5)]
        small = cv2.resize(image, (size, size), interpolation=down)
        out.append(cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=up))
    return out


def nearest_integer_degrade(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Nearest down to ``resolution`` and back when it divides the size: keep every f-th pixel, repeat it.

    torch's (and cv2's) nearest picks source pixel floor(dst * in / out) = f * dst down and dst // f up, so
    this equals ``degrade_fixed(images, resolution, "nearest")`` exactly while touching far less memory.
    """
    factor, remainder = divmod(images.shape[-1], resolution)
    if remainder or images.shape[-2] != images.shape[-1]:
        raise ValueError(f"{tuple(images.shape[-2:])} is not a square multiple of {resolution}")
    small = images[..., ::factor, ::factor].contiguous()
    *lead, height, width = small.shape
    blocks = small[..., :, None, :, None].expand(*lead, height, factor, width, factor)
    return blocks.reshape(*lead, height * factor, width * factor)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = per-core figures)")
    parser.add_argument("--no-proposed", action="store_true", help="leave out the proposed fast path")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    batch, rounds = SIZES[args.size]
    generator = torch.Generator().manual_seed(0)
    uint8_images = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8, generator=generator)
    float_batch = uint8_images.to(device).float().div(127.5).sub(1.0)
    hwc_images = [image.permute(1, 2, 0).contiguous().numpy() for image in uint8_images]
    rng = np.random.default_rng(0)

    fixed = Degradation(14, "nearest")
    multi = Degradation("multi", "random")
    expected = fixed(float_batch, generator)
    if not torch.equal(nearest_integer_degrade(float_batch, 14), expected):
        raise AssertionError("nearest_integer_degrade differs from Degradation(14, 'nearest')")

    candidates = {
        "14/nearest cv2": lambda: cv2_degrade_batch(hwc_images, 14, rng),
        "14/nearest ours": lambda: fixed(float_batch, generator),
        "14/nearest proposed": lambda: nearest_integer_degrade(float_batch, 14),
        "multi/random cv2": lambda: cv2_degrade_batch(hwc_images, None, rng),
        "multi/random ours": lambda: multi(float_batch, generator),
    }
    if args.no_proposed:
        del candidates["14/nearest proposed"]
    timings = interleaved(candidates, rounds=rounds, device=device)
    rows, results = [], {}
    for name in candidates:
        policy, implementation = name.split(" ")
        reference = f"{policy} cv2"
        rate = batch / timings.median(name)
        ratio = timings.ratio(name, reference)
        where = "cpu (1 thread, uint8 HWC)" if implementation == "cv2" else f"{device} (float32 batch)"
        results[name] = {"images_per_second": rate, "ratio_vs_cv2": ratio, "seconds": timings.seconds[name]}
        rows.append([policy, implementation, where, fmt(rate), fmt(ratio)])
    headers = ["policy", "implementation", "runs on", "img/s", "vs cv2 per-sample (same run)"]
    table = markdown_table(headers, rows)
    notes = [f"batch {batch} x 3 x 112 x 112, median of {rounds} interleaved rounds; "
             f"torch threads {args.threads}.",
             "cv2 = the authors' per-sample resizing on uint8 in the loader worker; ours runs after the "
             "transfer on normalised float32 (4x the bytes of uint8)."]
    report("Low-resolution degradation", table, machine_info(device), args, results, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

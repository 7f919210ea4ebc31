"""The ``fskd identify``, ``fskd export`` and ``fskd synth-tinyface`` subcommands (plain PyTorch).

* ``identify``: closed-set identification (TinyFace protocol) of a checkpoint's backbone on a TinyFace folder
  or on any ``root/<identity>/*.jpg`` folder; prints CMC rank-1/5/10/20 and writes them to a CSV.
* ``export``: a checkpoint's backbone to ONNX and/or TorchScript (``image -> embedding``), parity-checked.
* ``synth-tinyface``: a synthetic folder in TinyFace's layout (``Probe/``, ``Gallery_Match/``,
  ``Gallery_Distractor/``), for trying ``identify`` without the real data.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fskd.data.degrade import MODES
from fskd.data.synthetic import SynthConfig, encode_jpeg, render_face, render_face_jpeg
from fskd.evaluation.identification import (
    DEFAULT_RANKS,
    TINYFACE_DISTRACTOR_NAMES,
    TINYFACE_GALLERY_MATCH,
    TINYFACE_PROBE,
    cmc_scores,
    embed_images,
    load_tinyface_layout,
    split_identity_folder,
)

TINYFACE_ID_BASE = 4_000_000_000
"""First synthetic identity of `write_tinyface_layout`: far from the training (0..N-1) and verification
(1e9, 2e9, 3e9 + ...) identities of `fskd.data.synthetic`."""

DEGRADED_JPEG_QUALITY = 90
"""JPEG quality of the images `write_tinyface_layout` degrades (the others keep their sample's quality)."""

LAYOUTS = ("auto", "tinyface", "folder")


# ---------------------------------------------------------------------------------------------------------
# Synthetic TinyFace layout
# ---------------------------------------------------------------------------------------------------------


def _low_resolution(image: np.ndarray, resolution: int) -> np.ndarray:
    """Shrink an (H, W, 3) uint8 face to ``resolution`` pixels (area averaging, like a distant camera) and
    scale it back up (bilinear): a natively low-resolution face stored at full size."""
    size = image.shape[0]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    small = F.interpolate(pixels, size=(resolution, resolution), mode="area")
    large = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return large[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _face_jpeg(seed: int, identity: int, sample: int, config: SynthConfig, resolution: int | None) -> bytes:
    if resolution is None or resolution >= config.image_size:
        return render_face_jpeg(seed, identity, sample, config)
    return encode_jpeg(_low_resolution(render_face(seed, identity, sample, config), resolution),
                       DEGRADED_JPEG_QUALITY)


def write_tinyface_layout(out_dir: str | os.PathLike, identities: int, probes_per_identity: int = 2,
                          gallery_per_identity: int = 1, distractors: int = 100, seed: int = 0,
                          config: SynthConfig | None = None, probe_resolution: int | None = 24,
                          gallery_resolution: int | None = None) -> dict:
    """Write synthetic faces in TinyFace's identification layout and return a summary (also in
    ``out_dir/synthetic_tinyface.json``).

    * ``Gallery_Match/<i>_<n>.jpg``: samples ``0..g-1`` of identity ``i`` (label ``i``, 0-based);
    * ``Probe/<i>_<n>.jpg``: samples ``g..g+p-1`` of identity ``i`` (``n`` counts from 0 in each folder);
    * ``Gallery_Distractor/<identities + k>_0.jpg``: one image of each of ``distractors`` further identities.

    Rendered identity ids start at `TINYFACE_ID_BASE`, disjoint from the synthetic training and verification
    sets. TinyFace's faces are natively low-resolution: probes (and the gallery when ``gallery_resolution`` is
    set) are shrunk to that many pixels by area averaging, scaled back to full size (bilinear) and stored as
    JPEG quality `DEGRADED_JPEG_QUALITY`; ``None`` keeps the full-resolution render at its own JPEG quality.
    """
    config = config or SynthConfig()
    for name, value in (("identities", identities), ("probes_per_identity", probes_per_identity),
                        ("gallery_per_identity", gallery_per_identity)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if distractors < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors}")
    for name, value in (("probe_resolution", probe_resolution), ("gallery_resolution", gallery_resolution)):
        if value is not None and not 1 <= value <= config.image_size:
            raise ValueError(f"{name} must be in 1..{config.image_size} or None, got {value}")
    out = Path(out_dir)
    folder_names = (TINYFACE_PROBE, TINYFACE_GALLERY_MATCH, TINYFACE_DISTRACTOR_NAMES[0])
    folders = {name: out / name for name in folder_names}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for identity in range(identities):
        synthetic_id = TINYFACE_ID_BASE + identity
        for n in range(gallery_per_identity):
            jpeg = _face_jpeg(seed, synthetic_id, n, config, gallery_resolution)
            (folders[TINYFACE_GALLERY_MATCH] / f"{identity}_{n}.jpg").write_bytes(jpeg)
        for n in range(probes_per_identity):
            jpeg = _face_jpeg(seed, synthetic_id, gallery_per_identity + n, config, probe_resolution)
            (folders[TINYFACE_PROBE] / f"{identity}_{n}.jpg").write_bytes(jpeg)
    for k in range(distractors):
        label = identities + k
        jpeg = _face_jpeg(seed, TINYFACE_ID_BASE + label, 0, config, gallery_resolution)
        (folders[TINYFACE_DISTRACTOR_NAMES[0]] / f"{label}_0.jpg").write_bytes(jpeg)
    summary = {
        "identities": identities, "probes": identities * probes_per_identity,
        "gallery_match": identities * gallery_per_identity, "distractors": distractors, "seed": seed,
        "first_identity_id": TINYFACE_ID_BASE, "probe_resolution": probe_resolution,
        "gallery_resolution": gallery_resolution, "degraded_jpeg_quality": DEGRADED_JPEG_QUALITY,
        "config": dataclasses.asdict(config),
    }
    (out / "synthetic_tinyface.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _optional_resolution(text: str) -> int | None:
    value = int(text)
    return None if value <= 0 else value


def synth_tinyface_main(argv: Sequence[str]) -> int:
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
    args = parser.parse_args(argv)
    summary = write_tinyface_layout(args.out, args.identities, args.probes, args.gallery, args.distractors,
                                    args.seed, probe_resolution=args.probe_resolution,
                                    gallery_resolution=args.gallery_resolution)
    print(f"{args.out}: {summary['probes']} probes, {summary['gallery_match']} gallery matches, "
          f"{summary['distractors']} distractors")
    return 0


# ---------------------------------------------------------------------------------------------------------
# identify
# ---------------------------------------------------------------------------------------------------------


def write_cmc_csv(path: str | os.PathLike, results: dict[int, float]) -> Path:
    """``rank,accuracy`` rows (accuracy as a fraction in [0, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "accuracy"])
        for rank, accuracy in results.items():
            writer.writerow([rank, f"{accuracy:.6f}"])
    return path


def identify_main(argv: Sequence[str]) -> int:
    from fskd.systems.checkpoint import load_backbone

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
    args = parser.parse_args(argv)

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
    backbone = load_backbone(args.ckpt)
    start = time.perf_counter()
    options = {"batch_size": args.batch_size, "resolution": args.resolution, "flip": not args.no_flip,
               "interpolation": args.interpolation, "device": args.device, "num_workers": args.workers}
    probe_features = embed_images(backbone, probes, **options)
    gallery_features = embed_images(backbone, gallery, **options)
    results = cmc_scores(probe_features, probe_labels, gallery_features, gallery_labels, args.ranks,
                         args.chunk_size, device=args.device)
    print(f"embedded and ranked in {time.perf_counter() - start:.1f} s")
    for rank, accuracy in results.items():
        print(f"rank-{rank}: {100 * accuracy:.2f}%")
    if args.out:
        print(f"wrote {write_cmc_csv(args.out, results)}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------


def export_main(argv: Sequence[str]) -> int:
    from fskd.export import DYNAMO_NATIVE_OPSET, EXPORTERS, export_onnx, export_torchscript, onnx_parity
    from fskd.systems.checkpoint import load_backbone

    parser = argparse.ArgumentParser(prog="fskd export", description="Export a checkpoint's backbone for "
                                     "deployment: input 'image' (B,3,112,112) in [-1,1], output 'embedding' "
                                     "(B,E).")
    parser.add_argument("--ckpt", required=True, help="TeacherModule/DistillModule checkpoint")
    parser.add_argument("--onnx", default=None, help="ONNX file to write")
    parser.add_argument("--torchscript", default=None, help="TorchScript file to write")
    parser.add_argument("--opset", type=int, default=DYNAMO_NATIVE_OPSET,
                        help=f"ONNX opset (>= {DYNAMO_NATIVE_OPSET}: torch.export-based exporter; below: "
                        "legacy)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto")
    parser.add_argument("--static-batch", action="store_true", help="fix the ONNX batch size to 2")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    args = parser.parse_args(argv)
    if not args.onnx and not args.torchscript:
        parser.error("give --onnx and/or --torchscript")
    backbone = load_backbone(args.ckpt)
    if args.onnx:
        path = export_onnx(backbone, args.onnx, opset=args.opset, dynamic_batch=not args.static_batch,
                           exporter=args.exporter)
        print(f"wrote {path} (opset {args.opset})")
        if not args.no_check:
            try:
                parity = onnx_parity(backbone, path, batch_sizes=(2,) if args.static_batch else (1, 7))
            except ImportError:
                print("onnxruntime is not installed: parity not checked")
            else:
                for batch, (difference, scale) in parity.items():
                    print(f"onnxruntime vs PyTorch, batch {batch}: max |diff| {difference:.3g} "
                          f"(max |embedding| {scale:.3g})")
    if args.torchscript:
        path = export_torchscript(backbone, args.torchscript)
        print(f"wrote {path}")
        if not args.no_check:
            images = torch.rand(7, 3, backbone.input_size, backbone.input_size) * 2 - 1
            traced = torch.jit.load(os.fspath(path))
            with torch.no_grad():
                difference = (traced(images) - backbone(images).embedding).abs().max()
            print(f"TorchScript vs PyTorch, batch 7: max |diff| {float(difference):.3g}")
    return 0


__all__ = [
    "TINYFACE_ID_BASE",
    "export_main",
    "identify_main",
    "synth_tinyface_main",
    "write_cmc_csv",
    "write_tinyface_layout",
]

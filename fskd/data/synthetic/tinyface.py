"""Synthetic faces in TinyFace's identification layout (``Probe/``, ``Gallery_Match/``,
``Gallery_Distractor/``), for trying closed-set identification without the real data."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fskd.data.layouts import TINYFACE_DISTRACTOR_NAMES, TINYFACE_GALLERY_MATCH, TINYFACE_PROBE
from fskd.data.synthetic.config import SynthConfig
from fskd.data.synthetic.faces import encode_jpeg, render_face, render_face_jpeg

TINYFACE_ID_BASE = 4_000_000_000
"""First synthetic identity of `write_tinyface_layout`: far from the training (0..N-1) and verification
(1e9, 2e9, 3e9 + ...) identities of `fskd.data.synthetic`."""

DEGRADED_JPEG_QUALITY = 90
"""JPEG quality of the images `write_tinyface_layout` degrades (the others keep their sample's quality)."""


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

"""Image folders on disk: listing images, TinyFace's identification layout, an identity-per-folder layout.

Readers only: they return paths and integer labels and check the layout, naming the folder or file that is
wrong (`DataFormatError`). Decoding is `fskd.data.sources`; ranking is `fskd.evaluation.identification`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fskd.data.errors import DataFormatError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".pgm", ".ppm")
"""File types read from image folders, compared case-insensitively (``1.PGM`` counts). PGM/PPM are Netpbm: grey
databases such as ORL and Extended Yale B ship PGM, colour FERET ships PPM; `fskd.data.images.decode_face`
reads them all and brings every size to the model input (docs/formats.md, section 5)."""

DISTRACTOR_LABEL = -100
"""Label of gallery distractors (as AdaFace's TinyFace helper); it never counts as a match."""

TINYFACE_PROBE = "Probe"
TINYFACE_GALLERY_MATCH = "Gallery_Match"
TINYFACE_DISTRACTOR_NAMES: tuple[str, ...] = ("Gallery_Distractor", "Gallery_Disctractor")
"""The distractor folder, and the misspelling used in TinyFace's README."""



def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by their relative path."""
    folder = Path(folder)
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _tinyface_label(path: Path) -> int:
    prefix = path.name.split("_", 1)[0]
    try:
        return int(prefix)
    except ValueError:
        raise DataFormatError(path, f"file name must start with an integer identity label and '_' "
                              f"(TinyFace naming), got prefix {prefix!r}") from None


def _tinyface_folder(root: Path, names: Sequence[str]) -> list[Path]:
    for name in names:
        folder = root / name
        if folder.is_dir():
            images = list_images(folder)
            if not images:
                raise DataFormatError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
            return images
    expected = f"{TINYFACE_PROBE}/, {TINYFACE_GALLERY_MATCH}/, {TINYFACE_DISTRACTOR_NAMES[0]}/"
    missing = " or ".join(names)
    raise DataFormatError(root, f"not a TinyFace layout: missing folder {missing} (expected {expected})")


def load_tinyface_layout(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Read a TinyFace identification folder: ``(probe_paths, probe_labels, gallery_paths, gallery_labels)``.

    ``root`` holds ``Probe/``, ``Gallery_Match/`` and ``Gallery_Distractor/`` (or TinyFace's misspelt
    ``Gallery_Disctractor/``). A probe or matching-gallery label is the integer before the first ``_`` of the
    file name (``17_3.jpg`` -> 17); the gallery is the matching images followed by the distractors, which are
    labelled `DISTRACTOR_LABEL` whatever their names.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: identification folder not found")
    probes = _tinyface_folder(root, (TINYFACE_PROBE,))
    matches = _tinyface_folder(root, (TINYFACE_GALLERY_MATCH,))
    distractors = _tinyface_folder(root, TINYFACE_DISTRACTOR_NAMES)
    probe_labels = np.array([_tinyface_label(p) for p in probes], dtype=np.int64)
    match_labels = np.array([_tinyface_label(p) for p in matches], dtype=np.int64)
    distractor_labels = np.full(len(distractors), DISTRACTOR_LABEL, dtype=np.int64)
    gallery_labels = np.concatenate([match_labels, distractor_labels])
    return probes, probe_labels, matches + distractors, gallery_labels


def split_identity_folder(root: str | os.PathLike, gallery_per_identity: int = 1, seed: int | None = None,
                          ) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """Split ``root/<identity>/<image>`` (any of `IMAGE_SUFFIXES`) into a gallery and probes: ``(probe_paths,
    probe_labels, gallery_paths, gallery_labels)``.

    Identities are the sub-folders in sorted order, labelled 0, 1, ...; ``gallery_per_identity`` images of
    each go to the gallery (the first ones in sorted order, or a random choice when ``seed`` is given) and the
    rest are probes. An identity with no more images than that only enlarges the gallery. Images are listed
    recursively under each identity folder (`list_images`), in sorted order of their relative paths.
    """
    root = Path(root)
    if gallery_per_identity < 1:
        raise ValueError(f"gallery_per_identity must be >= 1, got {gallery_per_identity}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: identity folder not found")
    identities = sorted(p for p in root.iterdir() if p.is_dir())
    if not identities:
        raise DataFormatError(root, "no identity sub-folders (expected root/<identity>/<image>)")
    rng = random.Random(seed)
    probes: list[Path] = []
    probe_labels: list[int] = []
    gallery: list[Path] = []
    gallery_labels: list[int] = []
    for label, folder in enumerate(identities):
        images = list_images(folder)
        chosen = set(range(min(gallery_per_identity, len(images))))
        if seed is not None:
            chosen = set(rng.sample(range(len(images)), len(chosen)))
        for position, image in enumerate(images):
            target, labels = (gallery, gallery_labels) if position in chosen else (probes, probe_labels)
            target.append(image)
            labels.append(label)
    if not gallery:
        raise DataFormatError(root, "the identity folders hold no images")
    if not probes:
        raise DataFormatError(root, f"no probes: no identity has more than {gallery_per_identity} image(s)")
    return probes, np.array(probe_labels, dtype=np.int64), gallery, np.array(gallery_labels, dtype=np.int64)

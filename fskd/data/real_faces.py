"""Two small real face databases for the low-resolution experiment (``fskd realfaces``): AT&T/ORL and Extended
Yale B (cropped), read from their distributed folders.

* **AT&T/ORL** (Olivetti Research Laboratory, 1992-94): ``orl_faces/s1..s40/1..10.pgm``, 92x112 grey, frontal,
  roughly centred. Brought to 112x112 by the image-folder rule (`fskd.data.images.fit_to_square`): unscaled,
  10 black columns on each side.
* **Extended Yale B, cropped** (Georghiades et al. 2001; Lee et al. 2005): ``yaleBxx/yaleBxx_P00A+035E+20.pgm``,
  168x192 grey; the name gives the light's azimuth and elevation in degrees. Only moderate light is used
  (|azimuth| <= 35, |elevation| <= 25 by default: 871 images of 38 people). Each image is centre-cropped to a
  168x168 square (12 rows off the top and the bottom: the chin and the hair line) and scaled to 112x112.

Grey is replicated to RGB. The faces are roughly centred, not 5-point aligned like insightface's data. Folds are
over people (never images), dealt per database so that every fold holds both.
"""

from __future__ import annotations

import io
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fskd.data.errors import DataFormatError
from fskd.data.images import IMAGE_SIZE, decode_face, decode_rgb, fit_to_square
from fskd.data.recordio import write_face_records

ORL_FOLDER = "orl_faces"
YALE_FOLDER = "extended_yale_b_cropped"
YALE_NAME = re.compile(r"^yaleB\d+_P00A([+-]\d{3})E([+-]\d{2})\.pgm$")
YALE_CROP_ROWS = 12
"""Rows cut off the top and the bottom of a 168x192 Extended Yale B face to make it square."""


@dataclass(frozen=True)
class FaceImage:
    """One picture: its person (``orl/s7``, ``yale/yaleB03``) and file."""

    person: str
    path: Path

    @property
    def database(self) -> str:
        return self.person.split("/", 1)[0]


def list_orl(root: str | os.PathLike) -> list[FaceImage]:
    folder = Path(root) / ORL_FOLDER
    images = [FaceImage(f"orl/{p.parent.name}", p) for p in sorted(folder.glob("s*/*.pgm"))]
    if not images:
        raise FileNotFoundError(f"{folder}: no AT&T/ORL images (expected s1..s40/*.pgm)")
    return images


def list_yale(root: str | os.PathLike, max_azimuth: int = 35, max_elevation: int = 25) -> list[FaceImage]:
    """Extended Yale B images lit within ``max_azimuth`` / ``max_elevation`` degrees of frontal."""
    folder = Path(root) / YALE_FOLDER
    images = []
    for path in sorted(folder.glob("yaleB*/*.pgm")):
        match = YALE_NAME.match(path.name)
        if match and abs(int(match.group(1))) <= max_azimuth and abs(int(match.group(2))) <= max_elevation:
            images.append(FaceImage(f"yale/{path.parent.name}", path))
    if not images:
        raise FileNotFoundError(f"{folder}: no Extended Yale B images named yaleBxx_P00A+aaaE+ee.pgm")
    return images


def face_112(image: FaceImage) -> torch.Tensor:
    """The uint8 (3, 112, 112) RGB picture of ``image`` by the rules of the module docstring."""
    data = image.path.read_bytes()
    if image.database != "yale":
        return decode_face(data, image.path)
    # decode_rgb, not PIL's convert("L"): the latter clips 16-bit samples instead of rescaling them.
    rgb = decode_rgb(data, image.path).to(torch.int64)
    # PIL's "L" conversion (ITU-R 601-2 luma, rounded), exact for grey files, whose channels are equal.
    grey = ((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16).to(torch.uint8).numpy()
    height, width = grey.shape
    if height - 2 * YALE_CROP_ROWS != width:
        raise DataFormatError(image.path, f"expected a {width}x{width + 2 * YALE_CROP_ROWS} cropped Yale face, "
                              f"got {width}x{height}")
    square = torch.from_numpy(grey[YALE_CROP_ROWS:height - YALE_CROP_ROWS].copy())[None].expand(3, -1, -1)
    return fit_to_square(square.contiguous(), IMAGE_SIZE)


def people(images: Sequence[FaceImage]) -> list[str]:
    return sorted({image.person for image in images})


def people_folds(images: Sequence[FaceImage], folds: int = 5, seed: int = 0) -> list[list[str]]:
    """Disjoint groups of people, each database shuffled (seeded) and dealt round-robin over the folds."""
    rng = random.Random(seed)
    groups: list[list[str]] = [[] for _ in range(folds)]
    for database in sorted({image.database for image in images}):
        members = [p for p in people(images) if p.startswith(f"{database}/")]
        rng.shuffle(members)
        for position, person in enumerate(members):
            groups[position % folds].append(person)
    return [sorted(group) for group in groups]


def verification_pairs(images: Sequence[FaceImage], seed: int = 0, multiple: int = 20,
                       ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """All genuine pairs of ``images`` plus as many impostor pairs (seeded), shuffled and cut to a multiple
    of ``multiple`` (10 equal folds of the verification protocols): ``(pairs of indices, issame)``."""
    rng = random.Random(seed)
    by_person: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        by_person.setdefault(image.person, []).append(index)
    genuine = [pair for members in by_person.values() for pair in combinations(members, 2)]
    names = sorted(by_person)
    if len(names) < 2:
        raise ValueError("impostor pairs need at least two people")
    impostor: set[tuple[int, int]] = set()
    while len(impostor) < len(genuine):
        first, second = rng.sample(names, 2)
        impostor.add((rng.choice(by_person[first]), rng.choice(by_person[second])))
    labelled = [(pair, True) for pair in genuine] + [(pair, False) for pair in sorted(impostor)]
    rng.shuffle(labelled)
    labelled = labelled[: len(labelled) - len(labelled) % multiple]
    return [pair for pair, _ in labelled], np.array([same for _, same in labelled], dtype=bool)


def png_bytes(face: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(face.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def write_training_set(out_dir: str | os.PathLike, images: Sequence[FaceImage], faces: dict[Path, torch.Tensor],
                       ) -> dict[str, int]:
    """``train.rec``/``.idx`` + ``property`` of ``images`` (classes = people in sorted order; lossless PNG of
    the 112x112 pictures), readable by `FaceDataModule`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = {person: label for label, person in enumerate(people(images))}
    ordered = sorted(images, key=lambda image: (labels[image.person], str(image.path)))
    count, classes = write_face_records(out / "train.rec", out / "train.idx",
                                        ((labels[i.person], png_bytes(faces[i.path])) for i in ordered))
    (out / "property").write_text(f"{classes},{IMAGE_SIZE},{IMAGE_SIZE}")
    return {"images": count, "classes": classes}

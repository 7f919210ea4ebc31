"""The real data outside the project (``../shared/data/real-faces`` from the repository root) and the picture rule of
the MXNet import tests.

Nothing from there is copied into the project; tests read it in place and skip, saying why, when it is absent.

Picture rule for ORL faces (92x112 grey PGM) fed to a 112x112 RGB recogniser: the grey value is replicated to R, G
and B, and the picture is padded with 10 black (0) columns on the left and on the right (92 + 2 x 10 = 112), rows
unchanged. MXNet's graph gets these 0..255 values as float32 NCHW; fskd's model gets ``(x/255 - 0.5)/0.5`` of the
same array (a black border is -1 there).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
REAL_FACES = REPO / ".." / "shared" / "data" / "real-faces"
MOBILEFACENET_PREFIX = REAL_FACES / "mobilefacenet_insightface_mxnet" / "model"
ORL = REAL_FACES / "orl_faces"

#: The 20 ORL faces of the comparison: people s1..s10, pictures 1 and 6 of each (relative to REAL_FACES).
ORL_FACES: tuple[str, ...] = tuple(f"orl_faces/s{person}/{picture}.pgm" for person in range(1, 11)
                                   for picture in (1, 6))
PAD_COLUMNS = 10


def missing_real_faces() -> str | None:
    """Why the real-data tests cannot run, or None when they can."""
    needed = [MOBILEFACENET_PREFIX.with_name("model-symbol.json"), MOBILEFACENET_PREFIX.with_name("model-0000.params"),
              *(REAL_FACES / name for name in ORL_FACES)]
    absent = [path for path in needed if not path.is_file()]
    if absent:
        return (f"real data absent: {absent[0].resolve()} (and {len(absent) - 1} more) not found; the tests read "
                "../shared/data/real-faces from the repository root")
    return None


def read_pgm(path: Path) -> np.ndarray:
    """A binary (P5) 8-bit PGM as a (H, W) uint8 array."""
    data = path.read_bytes()
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' comments may sit between them
        while data[position:position + 1].isspace():
            position += 1
        if data[position:position + 1] == b"#":
            position = data.index(b"\n", position) + 1
            continue
        end = position
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[position:end])
        position = end
    position += 1  # the single whitespace after maxval
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P5" or maxval != 255:
        raise ValueError(f"{path}: not an 8-bit binary PGM ({magic!r}, maxval {maxval})")
    pixels = np.frombuffer(data, np.uint8, count=width * height, offset=position)
    return pixels.reshape(height, width)


def orl_as_112_rgb(grey: np.ndarray) -> np.ndarray:
    """The picture rule: (112, 92) grey -> (3, 112, 112) uint8, grey replicated, 10 black columns each side."""
    if grey.shape != (112, 112 - 2 * PAD_COLUMNS):
        raise ValueError(f"expected a 112x92 ORL picture, got {grey.shape}")
    padded = np.zeros((112, 112), np.uint8)
    padded[:, PAD_COLUMNS:112 - PAD_COLUMNS] = grey
    return np.stack([padded] * 3)


def orl_batch(names: tuple[str, ...] = ORL_FACES) -> np.ndarray:
    """(N, 3, 112, 112) uint8 RGB of the named ORL faces, by the picture rule."""
    return np.stack([orl_as_112_rgb(read_pgm(REAL_FACES / name)) for name in names])


def as_fskd_input(pixels: np.ndarray) -> np.ndarray:
    """What fskd feeds every model from 0..255 pixels: `fskd.data.images.normalize`, (x/255 - 0.5)/0.5, float32."""
    from fskd.data.images import normalize

    return normalize(torch.from_numpy(pixels)).numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

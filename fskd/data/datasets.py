"""Map-style datasets over the supported layouts; each item is a uint8 image plus its label or pair index.

Formats, detected from the files in a data root:

* insightface: ``train.rec`` + ``train.idx`` (+ ``property``) and ``<set>.bin``;
* extracted (the authors' utility or ``fskd prepare``): ``train.list`` + ``image/`` and ``evaluation/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fskd.data.binfile import load_bin
from fskd.data.errors import DataFormatError
from fskd.data.folder import TRAIN_LIST, read_pair_list, read_train_list
from fskd.data.images import IMAGE_SIZE, decode_face
from fskd.data.recordio import FaceRecordFile


def read_property(root: str | os.PathLike) -> tuple[int, int, int] | None:
    """``property`` file ("num_classes,height,width") or None when absent."""
    path = Path(root) / "property"
    if not path.is_file():
        return None
    fields = path.read_text().strip().split(",")
    if len(fields) != 3 or not all(f.strip().isdigit() for f in fields):
        raise DataFormatError(path, f"expected 'num_classes,height,width', found {path.read_text().strip()!r}")
    num_classes, height, width = (int(f) for f in fields)
    return num_classes, height, width


class RecordFaceDataset(Dataset):
    """Training images from ``train.rec``/``train.idx`` (insightface layout); items ``{"image", "label"}``."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike,
                 num_classes: int | None = None, image_size: int = IMAGE_SIZE) -> None:
        self.rec_path = os.fspath(rec_path)
        self.records = FaceRecordFile(rec_path, idx_path)
        self.image_size = image_size
        self.num_classes = num_classes if num_classes is not None else self._infer_num_classes()

    def _infer_num_classes(self) -> int:
        if self.records.identity_ranges is not None:
            return len(self.records.identity_ranges)
        # No header: a full scan of the labels (slow only for very large files without a property file).
        return max(self.records.label_of(i) for i in range(len(self.records))) + 1

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        label, payload = self.records.read_image(index)
        key = self.records.image_keys[index]
        if not 0 <= label < self.num_classes:
            raise DataFormatError(self.rec_path, f"label {label} outside 0..{self.num_classes - 1}", key)
        return {"image": decode_face(payload, self.rec_path, key, self.image_size), "label": label}


class FolderFaceDataset(Dataset):
    """Training images listed in ``train.list``; items ``{"image", "label"}``.

    The listed files may be JPEG, PNG or PGM/PPM, colour or grey, of any size: `decode_face` brings each to a
    uint8 RGB (3, image_size, image_size) tensor by the rule shared with identification and prediction
    (docs/formats.md, section 5).
    """

    def __init__(self, root: str | os.PathLike, num_classes: int | None = None,
                 image_size: int = IMAGE_SIZE) -> None:
        self.list_path = Path(root) / TRAIN_LIST
        self.paths, self.labels = read_train_list(root)
        self.image_size = image_size
        self.num_classes = num_classes if num_classes is not None else int(self.labels.max()) + 1
        if self.labels.max() >= self.num_classes:
            line = int(np.argmax(self.labels >= self.num_classes)) + 1
            raise DataFormatError(self.list_path, f"line {line}: class {int(self.labels[line - 1])} outside "
                                  f"0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        path = self.paths[index]
        try:
            payload = path.read_bytes()
        except OSError as error:
            raise DataFormatError(path, f"cannot read image listed at line {index + 1} of {self.list_path}: "
                                  f"{error.strerror}") from None
        return {"image": decode_face(payload, path, None, self.image_size), "label": int(self.labels[index])}


class PairImageDataset(Dataset):
    """The 2P images of a verification set, pair i = images 2i and 2i+1; items ``{"image", "index"}``.

    Images are kept encoded (bytes from a .bin, or file paths) and decoded in the workers: a decoded AgeDB-30
    would hold 450 MB per process.
    """

    def __init__(self, name: str, images: Sequence[bytes] | Sequence[Path], issame: np.ndarray,
                 source: str | os.PathLike, image_size: int = IMAGE_SIZE) -> None:
        if len(images) != 2 * len(issame):
            raise DataFormatError(source, f"{len(images)} images for {len(issame)} pairs (expected twice as many)")
        self.name = name
        self.images = images
        self.issame = np.asarray(issame, dtype=bool)
        self.source = os.fspath(source)
        self.image_size = image_size

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        item = self.images[index]
        if isinstance(item, Path):
            source, key, payload = item, None, item.read_bytes()
        else:
            source, key, payload = self.source, index, item
        return {"image": decode_face(payload, source, key, self.image_size), "index": index}


def open_training_set(root: str | os.PathLike, image_size: int = IMAGE_SIZE) -> Dataset:
    """The training set found in ``root`` (``train.rec``/``.idx`` preferred over ``train.list``)."""
    root = Path(root)
    prop = read_property(root)
    num_classes = prop[0] if prop else None
    if (root / "train.rec").is_file() and (root / "train.idx").is_file():
        return RecordFaceDataset(root / "train.rec", root / "train.idx", num_classes, image_size)
    if (root / TRAIN_LIST).is_file():
        return FolderFaceDataset(root, num_classes, image_size)
    raise FileNotFoundError(f"{root}: no training set (expected train.rec + train.idx, or train.list + image/)")


def has_verification_set(root: str | os.PathLike, name: str) -> bool:
    root = Path(root)
    return (root / f"{name}.bin").is_file() or (root / "evaluation" / f"{name}.txt").is_file()


def open_verification_set(root: str | os.PathLike, name: str, image_size: int = IMAGE_SIZE) -> PairImageDataset:
    """Verification set ``name`` from ``<root>/<name>.bin`` or ``<root>/evaluation/<name>.txt``."""
    root = Path(root)
    bin_path = root / f"{name}.bin"
    if bin_path.is_file():
        images, issame = load_bin(bin_path)
        return PairImageDataset(name, images, issame, bin_path, image_size)
    if (root / "evaluation" / f"{name}.txt").is_file():
        paths, issame = read_pair_list(root, name)
        return PairImageDataset(name, paths, issame, root / "evaluation" / f"{name}.txt", image_size)
    raise FileNotFoundError(f"{root}: verification set {name!r} not found "
                            f"(expected {name}.bin or evaluation/{name}.txt)")

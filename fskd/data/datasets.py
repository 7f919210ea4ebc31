"""Map-style datasets over the supported layouts; each item is a uint8 image plus its label or pair index.

Formats, detected from the files in a data root:

* insightface: ``train.rec`` + ``train.idx`` (+ ``property``) and ``<set>.bin``;
* extracted (the authors' utility or ``fskd prepare``): ``train.list`` + ``image/`` and ``evaluation/``.

Training items also carry their ``index`` and ``decoded_size`` (height, width before the size rule of
`fskd.data.images.decode_face`), so that the DataModule can count suspiciously small images as batches go by
(`fskd.data.datamodule`); `PairImageDataset.check_images` lists those of a verification set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fskd.data.binfile import load_bin
from fskd.data.errors import DataFormatError
from fskd.data.folder import TRAIN_LIST, read_pair_list_with_lines, read_train_list
from fskd.data.images import IMAGE_SIZE, SMALL_IMAGE_SIDE, decode_rgb, fit_to_square
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

    def describe(self, index: int) -> str:
        """Item ``index`` for messages: the file and its record."""
        return f"{self.rec_path} (record {self.records.image_keys[index]})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        label, payload = self.records.read_image(index)
        key = self.records.key_of(index)
        if not 0 <= label < self.num_classes:
            raise DataFormatError(self.rec_path, f"label {label} outside 0..{self.num_classes - 1}", key)
        image = decode_rgb(payload, self.rec_path, key)
        return {"image": fit_to_square(image, self.image_size), "label": label, "index": index,
                "decoded_size": tuple(image.shape[-2:])}


class FolderFaceDataset(Dataset):
    """Training images listed in ``train.list``; items ``{"image", "label"}``.

    The listed files may be JPEG, PNG or PGM/PPM, colour or grey, of any size: `decode_face` brings each to a
    uint8 RGB (3, image_size, image_size) tensor by the rule shared with identification and prediction
    (docs/formats.md, section 5). Every listed file must exist when the dataset is opened (`read_train_list`
    with ``check_files``), so a missing one fails before training, naming the line of ``train.list``.
    """

    def __init__(self, root: str | os.PathLike, num_classes: int | None = None,
                 image_size: int = IMAGE_SIZE) -> None:
        self.list_path = Path(root) / TRAIN_LIST
        self.paths, self.labels = read_train_list(root, check_files=True)
        self.image_size = image_size
        self.num_classes = num_classes if num_classes is not None else int(self.labels.max()) + 1
        if self.labels.max() >= self.num_classes:
            line = int(np.argmax(self.labels >= self.num_classes)) + 1
            raise DataFormatError(self.list_path, f"line {line}: class {int(self.labels[line - 1])} outside "
                                  f"0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        """Item ``index`` for messages: the file and its line of ``train.list``."""
        return f"{self.paths[index]} (line {index + 1} of {self.list_path})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            payload = path.read_bytes()
        except OSError as error:
            raise DataFormatError(path, f"cannot read image listed at line {index + 1} of {self.list_path}: "
                                  f"{error.strerror}") from None
        image = decode_rgb(payload, path, None)
        return {"image": fit_to_square(image, self.image_size), "label": int(self.labels[index]), "index": index,
                "decoded_size": tuple(image.shape[-2:])}


class PairImageDataset(Dataset):
    """The 2P images of a verification set, pair i = images 2i and 2i+1; items ``{"image", "index"}``.

    Images are kept encoded (bytes from a .bin, or file paths) and decoded in the workers: a decoded AgeDB-30
    would hold 450 MB per process. ``lines`` (folder sets) gives the line of the pair list that holds each pair.
    An image that cannot be read or decoded raises `DataFormatError` naming its file, its index and its pair
    (`check_images` does so for every image at once, before training).
    """

    def __init__(self, name: str, images: Sequence[bytes] | Sequence[Path], issame: np.ndarray,
                 source: str | os.PathLike, image_size: int = IMAGE_SIZE,
                 lines: Sequence[int] | None = None) -> None:
        if len(images) != 2 * len(issame):
            raise DataFormatError(source, f"{len(images)} images for {len(issame)} pairs (expected twice as many)")
        self.name = name
        self.images = images
        self.issame = np.asarray(issame, dtype=bool)
        self.source = os.fspath(source)
        self.image_size = image_size
        self.lines = list(lines) if lines is not None else None

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        """Image ``index`` for messages: ``image 17 (pair 8)``, plus the line of the pair list for folder sets."""
        if self.lines is None:
            return f"image {index} (pair {index // 2})"
        return f"image {index} (pair {index // 2}, line {self.lines[index // 2]} of {self.source})"

    def decode(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``index`` as the model gets it (uint8 (3, image_size, image_size)) and its decoded (height,
        width) before the size rule."""
        item = self.images[index]
        if isinstance(item, Path):
            source = item
            try:
                payload = item.read_bytes()
            except OSError as error:
                raise DataFormatError(item, f"{self.describe(index)}: cannot read image: "
                                      f"{error.strerror or error}") from None
        else:
            source, payload = self.source, item
        try:
            image = decode_rgb(payload, source, None)
        except DataFormatError as error:
            raise DataFormatError(source, f"{self.describe(index)}: {error.reason}") from None
        return fit_to_square(image, self.image_size), (int(image.shape[-2]), int(image.shape[-1]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"image": self.decode(index)[0], "index": index}

    def check_images(self) -> list[tuple[int, int, int]]:
        """Read and decode every image once, as the loader workers will, and drop the pixels: the first image
        that fails raises its `DataFormatError` now instead of at the first validation, after training steps.
        Returns the images decoded smaller than `SMALL_IMAGE_SIDE` on a side, as ``(index, height, width)``.

        About 5,000 112x112 JPEGs a second on one core: a few seconds for AgeDB-30's 12,000 images.
        """
        small = []
        for index in range(len(self.images)):
            height, width = self.decode(index)[1]
            if min(height, width) < SMALL_IMAGE_SIDE:
                small.append((index, height, width))
        return small

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.source!r}, pairs={self.num_pairs})"


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
    """Whether ``<root>/<name>.bin`` or ``<root>/evaluation/<name>.txt`` exists (names are case-sensitive)."""
    root = Path(root)
    return (root / f"{name}.bin").is_file() or (root / "evaluation" / f"{name}.txt").is_file()


def miscased_verification_files(root: str | os.PathLike, name: str) -> list[Path]:
    """Files that would hold verification set ``name`` but for the case of their name (``LFW.bin`` for ``lfw``):
    found on a case-sensitive file system, they would otherwise leave the set out without a word."""
    root = Path(root)
    found: list[Path] = []
    for folder, expected in ((root, f"{name}.bin"), (root / "evaluation", f"{name}.txt")):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if p.name != expected and p.name.lower() == expected.lower() and p.is_file())
    return found


def open_verification_set(root: str | os.PathLike, name: str, image_size: int = IMAGE_SIZE) -> PairImageDataset:
    """Verification set ``name`` from ``<root>/<name>.bin`` or ``<root>/evaluation/<name>.txt``.

    The images are not decoded here (`PairImageDataset.check_images` does that); for a pair list every listed
    file must exist. A set that is absent raises FileNotFoundError, which names a file that differs from the
    expected name only in case (``LFW.bin`` for ``lfw.bin``).
    """
    root = Path(root)
    bin_path = root / f"{name}.bin"
    if bin_path.is_file():
        images, issame = load_bin(bin_path)
        return PairImageDataset(name, images, issame, bin_path, image_size)
    list_path = root / "evaluation" / f"{name}.txt"
    if list_path.is_file():
        paths, issame, lines = read_pair_list_with_lines(root, name, check_files=True)
        return PairImageDataset(name, paths, issame, list_path, image_size, lines=lines)
    message = f"{root}: verification set {name!r} not found (expected {name}.bin or evaluation/{name}.txt)"
    miscased = miscased_verification_files(root, name)
    if miscased:
        found = ", ".join(p.relative_to(root).as_posix() for p in miscased)
        expected = (list_path if miscased[0].suffix.lower() == ".txt" else bin_path).relative_to(root).as_posix()
        message += f"; found {found}, which differs only in case: rename it to {expected} (names are case-sensitive)"
    raise FileNotFoundError(message)

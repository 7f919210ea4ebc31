"""Image sources that workers decode: a list of files or encoded bytes, and a folder or ``.rec`` to embed.

Items are uint8 (3, size, size) RGB tensors; normalisation and degradation happen later, on the device. Files
may be JPEG, PNG or PGM/PPM, colour or grey, of any size: `decode_face` applies the one rule of docs/formats.md,
section 5 (grey to three channels; longer side scaled to ``size``, the shorter zero-padded), the same as training.
A file that cannot be read or decoded raises `DataFormatError` naming it (and the record key for a ``.rec``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fskd.data.errors import DataFormatError
from fskd.data.images import IMAGE_SIZE, decode_face
from fskd.data.layouts import IMAGE_SUFFIXES, list_images
from fskd.data.recordio import FaceRecordFile


class EncodedImages(Dataset):
    """Decodes image files or encoded bytes to uint8 (3, size, size) tensors (for DataLoader workers)."""

    def __init__(self, items: Sequence[str | os.PathLike | bytes], size: int = IMAGE_SIZE) -> None:
        self.items = list(items)
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.items[index]
        if isinstance(item, bytes | bytearray | memoryview):
            return decode_face(bytes(item), "<bytes>", key=index, size=self.size)
        try:
            data = Path(item).read_bytes()
        except OSError as error:
            raise DataFormatError(item, f"cannot read image: {error.strerror or error}") from None
        return decode_face(data, item, size=self.size)


REC_NAME_PREFIX = "rec:"


class PredictionImages(Dataset):
    """Faces to embed: every image under a folder (recursive, sorted by relative path, any of
    `IMAGE_SUFFIXES`) or every image of a ``.rec`` file (with the ``.idx`` of the same name beside it), in record order.

    Items are ``{"image": uint8 (3, size, size), "index": int}``; `names` holds, per index, the path relative
    to the folder (POSIX separators) or ``"rec:<key>"``.
    """

    def __init__(self, source: str | os.PathLike, size: int = IMAGE_SIZE) -> None:
        self.source = Path(source)
        self.size = size
        self.records: FaceRecordFile | None = None
        self.paths: list[Path] = []
        if self.source.is_dir():
            self.paths = list_images(self.source)
            if not self.paths:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                raise DataFormatError(self.source, f"no images ({suffixes}) under the folder")
            self.names = [p.relative_to(self.source).as_posix() for p in self.paths]
        elif self.source.is_file() and self.source.suffix == ".rec":
            index_path = self.source.with_suffix(".idx")
            if not index_path.is_file():
                raise FileNotFoundError(f"{index_path}: index file not found beside {self.source}")
            self.records = FaceRecordFile(self.source, index_path)
            self.names = [f"{REC_NAME_PREFIX}{key}" for key in self.records.image_keys]
            if not self.names:
                raise DataFormatError(self.source, "the record file holds no images")
        elif self.source.exists():
            raise ValueError(f"{self.source}: expected an image folder or a .rec file")
        else:
            raise FileNotFoundError(f"{self.source}: prediction source not found")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.names):
            raise IndexError(f"image index {index} out of range for {len(self.names)} images")
        if self.records is not None:
            _, payload = self.records.read_image(index)
            image = decode_face(payload, self.source, key=self.records.key_of(index), size=self.size)
        else:
            path = self.paths[index]
            image = decode_face(path.read_bytes(), path, size=self.size)
        return {"image": image, "index": index}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.source)!r}, images={len(self)})"

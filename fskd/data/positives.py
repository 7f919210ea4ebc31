"""Positive pairs for cross-sample distillation (``fskd_cross``): which other images of its identity each training
image may be paired with, and the file that keeps that table next to the teacher checkpoint.

The rule: the candidates of image ``i`` are the images ``j != i`` with the same label whose teacher embeddings
have a cosine ``cross_margin < cos < MAX_POSITIVE_COSINE`` (the upper bound leaves out duplicates). The table
is stored in CSR form over global dataset indices: the candidates of ``i`` are
``candidates[offsets[i]:offsets[i + 1]]``, in increasing index order.

The file (``<teacher checkpoint stem>.positives.npz``) also holds what the table depends on (`PositiveKey`: the
number of training images, a hash of their labels, the margin and a fingerprint of the teacher checkpoint), so
that a run reuses it only when all of them match. Plain NumPy: the mining itself (running the teacher) is in
`fskd.systems.positives`.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from fskd.data.atomic import atomic_write

#: Candidates must have a teacher cosine below this: higher means the same picture stored twice.
MAX_POSITIVE_COSINE = 0.99

#: Version of the file layout; a file of another version is re-mined.
POSITIVES_VERSION = 1

#: Suffix of the positives file next to the teacher checkpoint.
POSITIVES_SUFFIX = ".positives.npz"

#: Last word of the seed of the positive drawn for a sample (`PositiveTable.draw`); other per-sample draws of
#: the DataModule use other words, so the choice of the positive is independent of them.
DRAW_STREAM = 2

#: Rows of one identity's similarity matrix computed at once (bounds memory for very large identities).
ROW_CHUNK = 4096


def index_dtype(count: int) -> np.dtype:
    """The narrowest of int32/int64 that holds every index in ``[0, count)``."""
    return np.dtype(np.int32 if count <= np.iinfo(np.int32).max + 1 else np.int64)


@dataclass(frozen=True, eq=False)
class PositiveTable:
    """Candidates per training image, CSR over global dataset indices.

    Args:
        offsets: int64 (N + 1,), non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == len(candidates)``.
        candidates: integers, each in ``[0, N)``; kept as `index_dtype` (N), int32 for any real training set
            (every rank holds the table: CASIA-WebFace's can reach 60 M candidates, 456 MiB in int64).
    """

    offsets: np.ndarray
    candidates: np.ndarray

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets)
        candidates = np.asarray(self.candidates)
        if offsets.ndim != 1 or offsets.shape[0] < 1 or candidates.ndim != 1:
            raise ValueError(f"offsets must be (N + 1,) and candidates 1-D, got shapes {offsets.shape} and "
                             f"{candidates.shape}")
        if offsets[0] != 0 or offsets[-1] != candidates.shape[0] or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must start at 0, never decrease and end at the number of candidates")
        count = offsets.shape[0] - 1
        if candidates.size and (candidates.min() < 0 or candidates.max() >= count):
            raise ValueError(f"candidates must be indices in [0, {count})")
        object.__setattr__(self, "offsets", offsets.astype(np.int64, copy=False))
        object.__setattr__(self, "candidates", candidates.astype(index_dtype(count), copy=False))

    def __len__(self) -> int:
        """Number of training images the table covers."""
        return self.offsets.shape[0] - 1

    def candidates_of(self, index: int) -> np.ndarray:
        """The candidate positives of image ``index`` (global indices, increasing)."""
        return self.candidates[self.offsets[index]:self.offsets[index + 1]]

    def counts(self) -> np.ndarray:
        """Number of candidates of every image, (N,)."""
        return np.diff(self.offsets)

    def draw(self, index: int, seed: int, epoch: int) -> int | None:
        """The positive of image ``index`` in epoch ``epoch``: uniform over its candidates, a function of
        ``(seed, epoch, index)`` only (so the same after a resume, with any number of workers or processes);
        None when it has no candidate."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        if end == start:
            return None
        word = np.random.SeedSequence([seed, epoch, index, DRAW_STREAM]).generate_state(1, dtype=np.uint64)[0]
        return int(self.candidates[start + int(word % np.uint64(end - start))])


@dataclass(frozen=True)
class PositiveKey:
    """What a positives table depends on; a stored table is reused only when its key equals the run's."""

    num_images: int
    labels_hash: str
    cross_margin: float
    teacher_fingerprint: str

    def differences(self, stored: PositiveKey) -> list[str]:
        """Why a table stored with key ``stored`` does not fit this one (empty when it does)."""
        reasons = []
        if stored.num_images != self.num_images:
            reasons.append(f"it was mined for {stored.num_images} training images, the training set has "
                           f"{self.num_images}")
        elif stored.labels_hash != self.labels_hash:
            reasons.append("the training labels changed")
        if stored.cross_margin != self.cross_margin:
            reasons.append(f"it was mined with cross_margin {stored.cross_margin}, the run uses {self.cross_margin}")
        if stored.teacher_fingerprint != self.teacher_fingerprint:
            reasons.append("the teacher checkpoint changed")
        return reasons


def labels_hash(labels: np.ndarray | Sequence[int]) -> str:
    """SHA-256 of the labels as little-endian int64 (independent of the array's dtype)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def file_fingerprint(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    """``"<size>:<sha256 of the bytes>"`` of a file (the teacher checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk_bytes):
            digest.update(block)
    return f"{os.path.getsize(path)}:{digest.hexdigest()}"


def positives_path(teacher_ckpt: str | os.PathLike) -> Path:
    """Where the positives of a teacher checkpoint are kept: ``<folder>/<stem>.positives.npz``."""
    path = Path(teacher_ckpt)
    return path.with_name(path.stem + POSITIVES_SUFFIX)


def dataset_labels(dataset: Any) -> np.ndarray:
    """The label of every item of a training set, int64 (N,), without decoding images where possible: a
    ``labels`` array (``train.list`` layout), else the record headers (``train.rec``), else item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64).copy()
    records = getattr(dataset, "records", None)
    if records is not None and hasattr(records, "label_of"):
        return np.fromiter((records.label_of(i) for i in range(len(dataset))), dtype=np.int64, count=len(dataset))
    return np.fromiter((int(dataset[i]["label"]) for i in range(len(dataset))), dtype=np.int64, count=len(dataset))


def build_positive_table(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | Sequence[int],
                         cross_margin: float = 0.0, max_cosine: float = MAX_POSITIVE_COSINE) -> PositiveTable:
    """The positives table of embeddings (N, E) and labels (N,): for each ``i`` the ``j != i`` of the same label
    with ``cross_margin < cos(e_i, e_j) < max_cosine``. Cosines are computed in float64; a zero embedding has
    cosine 0 with everything."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().double().numpy()
    vectors = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if vectors.ndim != 2 or labels.shape != (vectors.shape[0],):
        raise ValueError(f"expected embeddings (N, E) and labels (N,), got {vectors.shape} and {labels.shape}")
    count = vectors.shape[0]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    order = np.argsort(labels, kind="stable")  # each identity's images in increasing index order
    _, starts = np.unique(labels[order], return_index=True)
    counts = np.zeros(count, dtype=np.int64)
    chosen: list[tuple[np.ndarray, np.ndarray]] = []  # (group indices, boolean candidate matrix) per identity
    for members in np.split(order, starts[1:]):
        group = vectors[members]
        accepted = np.empty((members.shape[0], members.shape[0]), dtype=bool)
        for first in range(0, members.shape[0], ROW_CHUNK):
            cosine = group[first:first + ROW_CHUNK] @ group.T
            accepted[first:first + ROW_CHUNK] = (cosine > cross_margin) & (cosine < max_cosine)
        np.fill_diagonal(accepted, False)  # never itself, whatever its cosine
        counts[members] = accepted.sum(axis=1)
        chosen.append((members, accepted))
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    candidates = np.empty(int(offsets[-1]), dtype=index_dtype(count))
    for members, accepted in chosen:
        rows, columns = np.nonzero(accepted)  # row-major: each row's candidates in increasing index order
        if rows.size == 0:
            continue
        row_counts = counts[members]
        first_of_row = np.repeat(np.cumsum(row_counts) - row_counts, row_counts)
        destination = np.repeat(offsets[members], row_counts) + np.arange(rows.size) - first_of_row
        candidates[destination] = members[columns]
    return PositiveTable(offsets, candidates)


def save_positives(path: str | os.PathLike, table: PositiveTable, key: PositiveKey) -> None:
    """Write table and key to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    def write(stream: BinaryIO) -> None:  # a file object: np.savez appends no suffix
        np.savez(stream, version=np.int64(POSITIVES_VERSION), offsets=table.offsets,
                 candidates=table.candidates, num_images=np.int64(key.num_images),
                 labels_hash=np.str_(key.labels_hash), cross_margin=np.float64(key.cross_margin),
                 teacher_fingerprint=np.str_(key.teacher_fingerprint), max_cosine=np.float64(MAX_POSITIVE_COSINE))

    atomic_write(path, write, "positives file", "set the DistillModule's positives_path to a writable place")


def load_positives(path: str | os.PathLike) -> tuple[PositiveTable, PositiveKey]:
    """Read a positives file written by `save_positives` (no pickled objects are accepted)."""
    with np.load(path, allow_pickle=False) as data:
        version = int(data["version"])
        if version != POSITIVES_VERSION:
            raise ValueError(f"{path}: positives file version {version}, expected {POSITIVES_VERSION}")
        if float(data["max_cosine"]) != MAX_POSITIVE_COSINE:
            raise ValueError(f"{path}: mined with max_cosine {float(data['max_cosine'])}, "
                             f"expected {MAX_POSITIVE_COSINE}")
        table = PositiveTable(data["offsets"], data["candidates"])
        key = PositiveKey(int(data["num_images"]), str(data["labels_hash"]), float(data["cross_margin"]),
                          str(data["teacher_fingerprint"]))
    if len(table) != key.num_images:
        raise ValueError(f"{path}: the table covers {len(table)} images but says {key.num_images}")
    return table, key


def stale_reason(path: str | os.PathLike, key: PositiveKey) -> str | None:
    """None when ``path`` holds a table for ``key``; otherwise why it must be (re-)mined."""
    if not Path(path).is_file():
        return f"no positives file at {path}"
    try:
        _, stored = load_positives(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        return f"{path} is unreadable or of another version ({error})"
    reasons = key.differences(stored)
    return f"{path} does not fit this run: " + "; ".join(reasons) if reasons else None

"""MXNet RecordIO (.rec/.idx) and the insightface face-dataset layout, in pure Python.

The byte format follows dmlc-core's RecordIO and ``mx.recordio.pack``/``unpack`` (see
docs/formats.md, sections 3.1-3.4). Files written here are byte-identical to mxnet 1.9.1's, and mxnet
is never needed at run time: it only installs beside numpy<1.24.

Readers open the ``.rec`` file lazily and re-open it after ``fork``, so one reader object can be handed
to ``torch.utils.data.DataLoader`` workers (forked or spawned: the open file is not pickled).
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import struct
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from fskd.data.errors import DataFormatError

__all__ = [
    "MAGIC",
    "MAX_RECORD_BYTES",
    "FaceRecordFile",
    "IRHeader",
    "IndexedRecordReader",
    "IndexedRecordWriter",
    "decode_segments",
    "encode_record",
    "pack",
    "unpack",
    "write_face_records",
]

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)  # 0a 23 d7 ce
# dmlc stores the length in the low 29 bits of the segment word and CHECKs a record is shorter than this.
MAX_RECORD_BYTES = 1 << 29
_LENGTH_MASK = MAX_RECORD_BYTES - 1
_SEGMENT_HEADER = struct.Struct("<II")

# cflag values of a segment (bits 29-31 of the length word).
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3

_IR_FORMAT = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR_FORMAT.size  # 24
# float32 labels hold integers exactly only up to 2**24.
_MAX_EXACT_FLOAT32_INT = 1 << 24
# Bytes read by FaceRecordFile.label_of: the IRHeader plus up to 10 float32 labels.
_LABEL_HEAD_BYTES = IR_HEADER_SIZE + 40


class IRHeader(NamedTuple):
    """Image record header of ``mx.recordio``: ``flag`` > 0 means ``label`` is an array of that length."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# ---------------------------------------------------------------------------------------------------------
# Image record header (mx.recordio.pack / unpack)
# ---------------------------------------------------------------------------------------------------------


def pack(header: IRHeader | tuple, payload: bytes) -> bytes:
    """Build a logical record as ``mx.recordio.pack`` does.

    A number label forces ``flag`` to 0 and goes in the header's float field. Anything else becomes a
    float32 array: ``flag`` is set to its size, the float field to 0.0 and the labels are prepended to the
    payload. The caller's ``flag`` is always overwritten, exactly like mxnet.
    """
    flag, label, record_id, record_id2 = IRHeader(*header)
    if isinstance(label, numbers.Number):
        head = _IR_FORMAT.pack(0, float(label), record_id, record_id2)
        return head + bytes(payload)
    labels = np.asarray(label, dtype=np.float32)
    head = _IR_FORMAT.pack(labels.size, 0.0, record_id, record_id2)
    return head + labels.astype("<f4").tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a logical record into its header and payload, as ``mx.recordio.unpack`` does.

    When ``flag`` > 0 the label is a float32 array of ``flag`` values read from the start of the payload.
    Raises ValueError if the record is shorter than its header and labels.
    """
    view = memoryview(record).cast("B")
    if len(view) < IR_HEADER_SIZE:
        raise ValueError(f"record of {len(view)} bytes is shorter than the {IR_HEADER_SIZE}-byte IRHeader")
    flag, scalar_label, record_id, record_id2 = _IR_FORMAT.unpack_from(view, 0)
    if flag == 0:
        return IRHeader(flag, scalar_label, record_id, record_id2), bytes(view[IR_HEADER_SIZE:])
    payload_start = IR_HEADER_SIZE + 4 * flag
    if len(view) < payload_start:
        raise ValueError(
            f"record of {len(view)} bytes is too short for its {flag} float32 labels "
            f"(needs at least {payload_start} bytes)"
        )
    labels = np.frombuffer(view, dtype="<f4", count=flag, offset=IR_HEADER_SIZE).astype(np.float32)
    return IRHeader(flag, labels, record_id, record_id2), bytes(view[payload_start:])


# ---------------------------------------------------------------------------------------------------------
# Record framing (dmlc RecordIOWriter / RecordIOReader)
# ---------------------------------------------------------------------------------------------------------


def _segment_word(cflag: int, length: int) -> bytes:
    return _SEGMENT_HEADER.pack(MAGIC, (cflag << 29) | length)


def encode_record(buf: bytes) -> bytes:
    """Frame one logical record as dmlc's ``RecordIOWriter::WriteRecord`` does.

    The record is split at every 4-aligned occurrence of the magic; those magic bytes are dropped (the
    reader re-inserts them). Segments get cflag 1 (first), 2 (middle), 3 (last) or 0 (unsplit), and only
    the end is padded with zeros to a multiple of 4. Raises ValueError for records of 2**29 bytes or more.
    """
    data = memoryview(buf).cast("B")
    size = len(data)
    if size >= MAX_RECORD_BYTES:
        raise ValueError(
            f"record of {size} bytes is too large for RecordIO (limit is {MAX_RECORD_BYTES - 1})"
        )
    raw = data.tobytes() if not isinstance(buf, bytes) else buf
    parts: list[bytes] = []
    segment_start = 0
    search_from = 0
    while True:
        hit = raw.find(MAGIC_BYTES, search_from)
        if hit < 0:
            break
        if hit % 4:
            search_from = hit + 1
            continue
        parts.append(_segment_word(_MIDDLE if parts else _FIRST, hit - segment_start))
        parts.append(raw[segment_start:hit])
        segment_start = hit + 4
        search_from = segment_start
    parts.append(_segment_word(_LAST if parts else _WHOLE, size - segment_start))
    parts.append(raw[segment_start:])
    parts.append(b"\0" * (-size % 4))
    return b"".join(parts)


def decode_segments(data: bytes) -> list[bytes]:
    """Decode every record of an in-memory ``.rec`` stream, in order (a sequential reader, for tests/tools).

    Raises ValueError on a malformed stream.
    """
    view = memoryview(data).cast("B")
    records: list[bytes] = []
    pos = 0
    while pos < len(view):
        parts: list[bytes] = []
        while True:
            if len(view) - pos < 8:
                raise ValueError(f"truncated segment header at offset {pos}")
            magic, word = _SEGMENT_HEADER.unpack_from(view, pos)
            if magic != MAGIC:
                raise ValueError(f"bad magic 0x{magic:08x} at offset {pos}")
            cflag, length = word >> 29, word & _LENGTH_MASK
            start = pos + 8
            if length > len(view) - start:
                raise ValueError(f"segment at offset {pos} runs past the end of the stream")
            parts.append(bytes(view[start : start + length]))
            pos = start + ((length + 3) & ~3)
            if cflag in (_WHOLE, _LAST):
                break
            parts.append(MAGIC_BYTES)
        records.append(b"".join(parts))
    return records


# ---------------------------------------------------------------------------------------------------------
# Indexed reader / writer (MXIndexedRecordIO)
# ---------------------------------------------------------------------------------------------------------


def _parse_index(idx_path: str, rec_size: int, rec_path: str) -> tuple[list[int], dict[int, int]]:
    """Read an ``.idx`` file ("key<TAB>offset" per line) into keys in file order and a key->offset map (checked
    line by line; `IndexedRecordReader` keeps them as arrays)."""
    with open(idx_path, "rb") as idx_file:
        content = idx_file.read()
    keys: list[int] = []
    offsets: dict[int, int] = {}
    first_line: dict[int, int] = {}
    for line_number, raw_line in enumerate(content.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        fields = raw_line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
        except ValueError:
            shown = raw_line[:60].decode("ascii", errors="backslashreplace")
            raise DataFormatError(
                idx_path, f"line {line_number}: expected 'key<TAB>offset', got {shown!r}"
            ) from None
        if key in offsets:
            raise DataFormatError(
                idx_path, f"line {line_number}: duplicate key (first seen on line {first_line[key]})", key=key
            )
        if offset < 0:
            raise DataFormatError(idx_path, f"line {line_number}: negative offset {offset}", key=key)
        if offset + _SEGMENT_HEADER.size > rec_size:
            raise DataFormatError(
                idx_path,
                f"line {line_number}: offset {offset} is past the end of {rec_path} ({rec_size} bytes)",
                key=key,
            )
        keys.append(key)
        offsets[key] = offset
        first_line[key] = line_number
    return keys, offsets


class IndexedRecordReader:
    """Random access to the records of a ``.rec`` file through its ``.idx`` file (``MXIndexedRecordIO``).

    ``keys`` holds the keys in ``.idx`` order (an int64 array; not necessarily sorted: insightface files start
    with key 1). ``read(key)`` returns the logical record bytes, i.e. what :func:`unpack` takes. The ``.rec``
    file is opened on first read and re-opened in a forked child; pickling drops the handle.

    The index lives in numpy arrays, not Python ints in a list and a dict: a loader worker forked from the main
    process reads it without writing reference counts into its pages, so CASIA's 494k-record index is not
    copied into every worker as an epoch touches its records (measured: +47 MB per worker with a dict).
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path)
        rec_size = os.path.getsize(self.rec_path)
        keys, offsets = _parse_index(self.idx_path, rec_size, self.rec_path)
        self.keys = np.asarray(keys, dtype=np.int64)
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[order]
        self._sorted_offsets = np.asarray([offsets[key] for key in keys], dtype=np.int64)[order]
        self._fd: int | None = None
        self._fd_pid: int | None = None
        self._rec_size = rec_size

    # -- file handle management ------------------------------------------------------------------------
    def _handle(self) -> int:
        """The open ``.rec`` descriptor of this process (opened lazily, re-opened after fork)."""
        if self._fd is None or self._fd_pid != os.getpid():
            # After fork the inherited descriptor belongs to the parent: leave it alone and open our own.
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fd_pid = os.getpid()
            self._rec_size = os.fstat(self._fd).st_size
        return self._fd

    def _read_at(self, fd: int, offset: int, size: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(fd, size, offset)
        os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without pread
        return os.read(fd, size)  # pragma: no cover

    def close(self) -> None:
        """Close the ``.rec`` handle of this process; a later read re-opens it."""
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._fd_pid = None

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_fd_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- mapping-like access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def _position(self, key: object) -> int | None:
        """Where ``key`` sits in the sorted keys, or None when absent (or not an integer)."""
        if isinstance(key, bool) or not isinstance(key, int | np.integer):
            return None
        position = int(np.searchsorted(self._sorted_keys, key))
        if position < self._sorted_keys.size and self._sorted_keys[position] == key:
            return position
        return None

    def __contains__(self, key: object) -> bool:
        return self._position(key) is not None

    def offset(self, key: int) -> int:
        """Byte offset of ``key``'s first segment in the ``.rec`` file."""
        position = self._position(key)
        if position is None:
            raise KeyError(f"key {key!r} is not in {self.idx_path}")
        return int(self._sorted_offsets[position])

    def read(self, key: int) -> bytes:
        """The logical record stored under ``key`` (segments joined, dropped magics re-inserted)."""
        return self._read_record(key, head_size=None)

    def read_head(self, key: int, size: int) -> bytes:
        """At least the first ``size`` bytes of ``key``'s record (all of it when shorter).

        Cheap access to the IRHeader and labels without reading the image payload.
        """
        return self._read_record(key, head_size=size)

    def _read_record(self, key: int, head_size: int | None) -> bytes:
        """Read ``key``'s record; with ``head_size``, only that much of a first segment long enough for it."""
        pos = self.offset(key)
        fd = self._handle()
        file_size = self._rec_size
        parts: list[bytes] = []
        first = True
        while True:
            header = self._read_at(fd, pos, _SEGMENT_HEADER.size)
            if len(header) < _SEGMENT_HEADER.size:
                raise DataFormatError(
                    self.rec_path,
                    f"truncated record: segment header at offset {pos} is past the end",
                    key=key,
                )
            magic, word = _SEGMENT_HEADER.unpack(header)
            if magic != MAGIC:
                raise DataFormatError(
                    self.rec_path,
                    f"bad magic 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x})",
                    key=key,
                )
            cflag, length = word >> 29, word & _LENGTH_MASK
            if first and cflag not in (_WHOLE, _FIRST):
                raise DataFormatError(
                    self.rec_path, f"offset {pos} points into the middle of a record (cflag {cflag})", key=key
                )
            if not first and cflag not in (_MIDDLE, _LAST):
                raise DataFormatError(
                    self.rec_path, f"unexpected segment flag {cflag} at offset {pos} inside a record", key=key
                )
            data_start = pos + _SEGMENT_HEADER.size
            bytes_left = file_size - data_start
            if length > bytes_left:
                # Checked before reading: never allocate more than what the file can hold.
                raise DataFormatError(
                    self.rec_path,
                    f"truncated record: segment at offset {pos} declares {length} bytes but only "
                    f"{max(bytes_left, 0)} remain in the file",
                    key=key,
                )
            if first and head_size is not None and (length >= head_size or cflag == _WHOLE):
                wanted = min(length, head_size)
                chunk = self._read_at(fd, data_start, wanted)
                if len(chunk) < wanted:
                    raise DataFormatError(
                        self.rec_path, f"truncated record: short read at offset {data_start}", key=key
                    )
                return chunk
            padded = min((length + 3) & ~3, bytes_left)
            chunk = self._read_at(fd, data_start, padded)
            if len(chunk) < length:
                raise DataFormatError(
                    self.rec_path, f"truncated record: short read at offset {data_start}", key=key
                )
            parts.append(chunk if len(chunk) == length else chunk[:length])
            if cflag in (_WHOLE, _LAST):
                break
            parts.append(MAGIC_BYTES)
            pos = data_start + padded
            first = False
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rec_path!r}, {self.idx_path!r}, records={len(self.keys)})"


class IndexedRecordWriter:
    """Write a ``.rec``/``.idx`` pair byte-identical to ``mx.recordio.MXIndexedRecordIO(..., 'w')``.

    ``write(key, record)`` appends the framed record to ``.rec`` and ``"key\\tpos\\n"`` to ``.idx``.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path)
        self._rec = open(self.rec_path, "wb")
        try:
            self._idx = open(self.idx_path, "w", encoding="ascii", newline="\n")
        except BaseException:
            self._rec.close()
            raise
        self._position = 0
        self._seen: set[int] = set()

    def write(self, key: int, record: bytes) -> None:
        """Append ``record`` (a logical record, e.g. from :func:`pack`) under the integer ``key``."""
        if self._rec.closed:
            raise ValueError(f"write to closed {self.rec_path}")
        if isinstance(key, bool) or not isinstance(key, numbers.Integral):
            raise TypeError(f"record keys must be integers, got {type(key).__name__}")
        key = int(key)
        if key in self._seen:
            raise ValueError(f"duplicate key {key} written to {self.rec_path}")
        framed = encode_record(record)
        self._rec.write(framed)
        self._idx.write(f"{key}\t{self._position}\n")
        self._position += len(framed)
        self._seen.add(key)

    def close(self) -> None:
        """Flush and close both files (idempotent)."""
        try:
            self._rec.close()
        finally:
            self._idx.close()

    def __enter__(self) -> IndexedRecordWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# insightface layout (face2rec2 / arcface_torch)
# ---------------------------------------------------------------------------------------------------------


def _integer_label(value: float, path: str, key: int, what: str) -> int:
    """``value`` as an int, or DataFormatError when it is not a finite non-negative integer."""
    number = float(value)
    if not math.isfinite(number) or number < 0 or not number.is_integer():
        raise DataFormatError(path, f"{what} {value!r} is not a finite non-negative integer", key=key)
    return int(number)


class FaceRecordFile:
    """An insightface face dataset (``train.rec``/``train.idx`` as written by ``face2rec2``).

    Record 0, when present with an array label ``[N+1, N+1+K]``, says the images are keys ``1..N`` and
    identity records are keys ``N+1..N+K`` (each labelled ``[first_key, last_key+1]``). Without such a
    header every key is an image (the same fallback as arcface_torch). Image labels may be scalars or
    arrays whose first element is the class.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
        self.reader = IndexedRecordReader(rec_path, idx_path)
        self.image_keys: np.ndarray = self.reader.keys  # int64, see IndexedRecordReader on why not a list
        self.identity_ranges: list[tuple[int, int]] | None = None
        if 0 in self.reader:
            header, _ = self._unpack(0)
            if header.flag > 0:
                self._use_header(header)

    def _unpack(self, key: int) -> tuple[IRHeader, bytes]:
        try:
            return unpack(self.reader.read(key))
        except ValueError as error:
            if isinstance(error, DataFormatError):
                raise
            raise DataFormatError(self.reader.rec_path, str(error), key=key) from None

    def _use_header(self, header: IRHeader) -> None:
        path = self.reader.rec_path
        labels = np.asarray(header.label)
        first_identity = _integer_label(labels[0], path, 0, "header label[0]")
        if first_identity < 1:
            raise DataFormatError(path, f"header label[0] must be >= 1, got {first_identity}", key=0)
        image_keys = np.arange(1, first_identity, dtype=np.int64)
        present = np.isin(image_keys, self.reader.keys)
        missing = image_keys[~present].tolist()
        if missing:
            raise DataFormatError(
                self.reader.idx_path,
                f"header announces images 1..{first_identity - 1} but {len(missing)} keys are missing "
                f"(first: {missing[0]})",
                key=0,
            )
        self.image_keys = image_keys
        if labels.size < 2:
            return
        end_identity = _integer_label(labels[1], path, 0, "header label[1]")
        if end_identity < first_identity:
            raise DataFormatError(
                path, f"header label [{first_identity}, {end_identity}] has its end before its start", key=0
            )
        ranges: list[tuple[int, int]] = []
        for identity_key in range(first_identity, end_identity):
            if identity_key not in self.reader:
                raise DataFormatError(
                    self.reader.idx_path,
                    "identity record announced by the header is missing",
                    key=identity_key,
                )
            identity_header, _ = self._unpack(identity_key)
            identity_labels = np.atleast_1d(np.asarray(identity_header.label))
            if identity_header.flag < 2:
                raise DataFormatError(path, "identity record has no [start, end) label", key=identity_key)
            start = _integer_label(identity_labels[0], path, identity_key, "identity start")
            end = _integer_label(identity_labels[1], path, identity_key, "identity end")
            if not 1 <= start < end <= first_identity:
                raise DataFormatError(
                    path,
                    f"identity range [{start}, {end}) is outside images 1..{first_identity - 1}",
                    key=identity_key,
                )
            ranges.append((start, end))
        self.identity_ranges = ranges

    def __len__(self) -> int:
        return len(self.image_keys)

    def key_of(self, index: int) -> int:
        """Record key of the ``index``-th image."""
        if not 0 <= index < len(self.image_keys):
            raise IndexError(f"image index {index} out of range for {len(self.image_keys)} images")
        return int(self.image_keys[index])

    def read_image(self, index: int) -> tuple[int, bytes]:
        """The ``index``-th image as (integer class label, encoded image bytes)."""
        key = self.key_of(index)
        header, payload = self._unpack(key)
        return self._class_of(header, key), payload

    def label_of(self, index: int) -> int:
        """Class label of the ``index``-th image, reading only the start of its record when possible."""
        key = self.key_of(index)
        # The labels sit in the first 24 + 4*flag bytes: read just those, or the whole record if needed.
        head = self.reader.read_head(key, _LABEL_HEAD_BYTES)
        flag = _IR_FORMAT.unpack_from(head, 0)[0] if len(head) >= IR_HEADER_SIZE else None
        if flag is None or len(head) < IR_HEADER_SIZE + 4 * flag:
            header, _ = self._unpack(key)
        else:
            header, _ = unpack(head)
        return self._class_of(header, key)

    def _class_of(self, header: IRHeader, key: int) -> int:
        if header.flag > 0:
            return _integer_label(header.label[0], self.reader.rec_path, key, "class label")
        return _integer_label(header.label, self.reader.rec_path, key, "class label")

    def close(self) -> None:
        """Close the underlying ``.rec`` handle (re-opened on the next read)."""
        self.reader.close()

    def __enter__(self) -> FaceRecordFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        identities = None if self.identity_ranges is None else len(self.identity_ranges)
        return f"{type(self).__name__}({self.reader.rec_path!r}, images={len(self)}, identities={identities})"


def write_face_records(
    rec_path: str | os.PathLike,
    idx_path: str | os.PathLike,
    samples: Iterable[tuple[int, bytes]],
    label_style: str = "scalar",
) -> tuple[int, int]:
    """Write ``(class, image_bytes)`` samples in insightface's face2rec2 layout; return ``(N, K)``.

    Samples must come grouped by class, classes 0..K-1 in order. Images get keys 1..N with a scalar label
    (``label_style="scalar"``) or ``[class, 0.0]`` (``"array"``); then record 0 with label ``[N+1, N+1+K]``
    and identity records N+1+k with label ``[first_key, last_key+1]``. Both files are written under
    temporary names and renamed at the end, so a ValueError never leaves half-written files behind.
    """
    if label_style not in ("scalar", "array"):
        raise ValueError(f"label_style must be 'scalar' or 'array', got {label_style!r}")
    rec_path, idx_path = os.fspath(rec_path), os.fspath(idx_path)
    token = secrets.token_hex(4)
    rec_tmp, idx_tmp = f"{rec_path}.tmp-{token}", f"{idx_path}.tmp-{token}"
    try:
        with IndexedRecordWriter(rec_tmp, idx_tmp) as writer:
            ranges: list[tuple[int, int]] = []
            key = 0
            for position, (class_id, image) in enumerate(samples):
                if isinstance(class_id, bool) or not isinstance(class_id, numbers.Integral):
                    raise ValueError(f"sample {position}: class must be an integer, got {class_id!r}")
                class_id = int(class_id)
                key += 1
                if ranges and class_id == len(ranges) - 1:
                    ranges[-1] = (ranges[-1][0], key + 1)
                elif class_id == len(ranges):
                    ranges.append((key, key + 1))
                else:
                    expected = "0" if not ranges else f"{len(ranges) - 1} or {len(ranges)}"
                    raise ValueError(
                        f"sample {position}: class {class_id} out of order (expected {expected}); "
                        "samples must be grouped by class with classes 0..K-1 in order"
                    )
                label: float | list[float] = float(class_id) if label_style == "scalar" else [class_id, 0.0]
                writer.write(key, pack(IRHeader(0, label, key, 0), image))
            num_images, num_classes = key, len(ranges)
            if num_images + 1 + num_classes > _MAX_EXACT_FLOAT32_INT:
                raise ValueError(f"{num_images} images and {num_classes} classes exceed float32 label range")
            first_identity = num_images + 1
            writer.write(0, pack(IRHeader(2, [first_identity, first_identity + num_classes], 0, 0), b""))
            for class_id, (start, end) in enumerate(ranges):
                identity_key = first_identity + class_id
                writer.write(identity_key, pack(IRHeader(2, [start, end], identity_key, 0), b""))
        os.replace(rec_tmp, rec_path)
        os.replace(idx_tmp, idx_path)
    finally:
        for leftover in (rec_tmp, idx_tmp):
            if os.path.exists(leftover):
                os.remove(leftover)
    return num_images, num_classes

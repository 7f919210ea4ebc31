"""Pure-Python reader of MXNet NDArray files (``*.params``, anything written by ``mx.nd.save``): no mxnet needed.

Layout (little-endian; mxnet ``src/ndarray/ndarray.cc``, ``NDArray::Save``/``NDArray::Load`` of a list):

* ``uint64`` list magic ``0x112``, ``uint64`` reserved;
* ``uint64`` number of arrays, then each array:

  - ``uint32`` magic: ``0xF993FAC9`` (V2, mxnet >= 1.0: followed by an ``int32`` storage type, 0 = dense),
    ``0xF993FAC8`` (V1: no storage type), or, in files older than both, no magic at all: that word is the
    number of dimensions and the dimensions are ``uint32`` (legacy);
  - the shape: ``int32`` ndim, then ndim ``int64`` dimensions (``uint32`` in legacy files);
  - the context: ``int32`` device type (1 cpu, 2 gpu, 3 pinned cpu, 5 shared cpu), ``int32`` device id;
  - ``int32`` dtype flag (mshadow: 0 float32, 1 float64, 2 float16, 3 uint8, 4 int32, 5 int8, 6 int64, 7 bool);
  - the elements, C order;

* ``uint64`` number of names (0, or as many as arrays), each an ``uint64`` length and that many UTF-8 bytes.
  ``mx.model.save_checkpoint`` names parameters ``arg:NAME`` and BatchNorm statistics ``aux:NAME``.

The whole file is read first and every count, shape and length is checked against the bytes that are left before
anything is built from it, so a corrupt or hostile file fails with `DataFormatError` (naming the file and the
array) instead of allocating what it claims; nothing in it is ever executed (a pickle renamed ``.params`` is
refused by its first eight bytes). Sparse arrays and empty (uninitialised) arrays are refused: parameters are
dense.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from fskd.data.errors import DataFormatError

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
DEFAULT_STORAGE = 0

#: mshadow type flags that mxnet 1.x's Python API reads and writes, as little-endian numpy dtypes.
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
}
DEVICE_TYPES = {1: "cpu", 2: "gpu", 3: "cpu_pinned", 5: "cpu_shared"}
#: More dimensions than any parameter has; also what tells a legacy file's leading ndim from garbage.
MAX_NDIM = 32
#: The smallest possible array record (a legacy one: a single uint32 ndim of 0), bounding the array count.
MIN_ARRAY_BYTES = 4
MIN_NAME_BYTES = 8


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes; errors name the file and the current array."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.path = path
        self.offset = 0
        self.where = "header"

    @property
    def left(self) -> int:
        return len(self.data) - self.offset

    def fail(self, message: str) -> DataFormatError:
        return DataFormatError(self.path, f"{self.where}: {message}")

    def take(self, size: int, what: str) -> bytes:
        if size > self.left:
            raise self.fail(f"truncated: {what} needs {size:,} bytes at offset {self.offset:,}, "
                            f"the file has {self.left:,} left")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]


def _read_shape(cursor: _Cursor, dim_format: str) -> tuple[int, ...]:
    ndim = cursor.unpack("<i", "the number of dimensions")
    return _read_dims(cursor, ndim, dim_format)


def _read_dims(cursor: _Cursor, ndim: int, dim_format: str) -> tuple[int, ...]:
    if ndim <= 0:
        # ndim 0 (mxnet < 1.5) and -1 (>= 1.5) both mark an uninitialised NDArray, which has no data.
        raise cursor.fail(f"an empty (uninitialised) NDArray (ndim {ndim}): not a parameter")
    if ndim > MAX_NDIM:
        raise cursor.fail(f"{ndim} dimensions (more than {MAX_NDIM}): corrupt shape")
    size = struct.calcsize(dim_format)
    dims = struct.unpack(f"<{ndim}{dim_format}", cursor.take(ndim * size, f"a shape of {ndim} dimensions"))
    if any(d <= 0 for d in dims):
        raise cursor.fail(f"shape {dims} has a dimension <= 0: corrupt shape")
    return tuple(int(d) for d in dims)


def _read_array(cursor: _Cursor) -> np.ndarray:
    magic = cursor.unpack("<I", "the array magic")
    if magic == NDARRAY_V2_MAGIC:
        storage = cursor.unpack("<i", "the storage type")
        if storage != DEFAULT_STORAGE:
            raise cursor.fail(f"storage type {storage} (sparse or undefined): only dense arrays are supported")
        shape = _read_shape(cursor, "q")
    elif magic == NDARRAY_V1_MAGIC:
        shape = _read_shape(cursor, "q")
    elif magic <= MAX_NDIM:
        shape = _read_dims(cursor, magic, "I")  # legacy: the first word was the number of dimensions
    else:
        raise cursor.fail(f"unknown NDArray magic 0x{magic:08X} (expected 0x{NDARRAY_V2_MAGIC:08X}, "
                          f"0x{NDARRAY_V1_MAGIC:08X} or a legacy ndim <= {MAX_NDIM})")
    device = cursor.unpack("<i", "the device type")
    cursor.unpack("<i", "the device id")
    if device not in DEVICE_TYPES:
        raise cursor.fail(f"unknown device type {device} (expected one of {sorted(DEVICE_TYPES)})")
    flag = cursor.unpack("<i", "the dtype flag")
    if flag not in DTYPES:
        raise cursor.fail(f"unsupported dtype flag {flag} (known: "
                          + ", ".join(f"{k} {v.name}" for k, v in DTYPES.items()) + ")")
    dtype = DTYPES[flag]
    count = 1
    for d in shape:
        count *= d  # Python ints: no overflow, however absurd the shape
    nbytes = count * dtype.itemsize
    if nbytes > cursor.left:
        raise cursor.fail(f"truncated or corrupt: shape {shape} of {dtype.name} needs {nbytes:,} bytes, "
                          f"the file has {cursor.left:,} left")
    raw = cursor.take(nbytes, "the array data")
    # copy(): an owned, aligned, writable array in native byte order (torch.from_numpy needs all three)
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_ndarray_file(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
    """The arrays of an MXNet NDArray file, in file order, and their names (empty for an unnamed list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MXNet parameter file not found")
    cursor = _Cursor(path.read_bytes(), str(path))
    magic = cursor.unpack("<Q", "the file magic")
    if magic != LIST_MAGIC:
        raise cursor.fail(f"not an MXNet NDArray file: magic 0x{magic:016X}, expected 0x{LIST_MAGIC:X}")
    cursor.unpack("<Q", "the reserved word")
    count = cursor.unpack("<Q", "the number of arrays")
    if count * MIN_ARRAY_BYTES > cursor.left:
        raise cursor.fail(f"claims {count:,} arrays but only {cursor.left:,} bytes follow: corrupt count")
    arrays = []
    for index in range(count):
        cursor.where = f"array {index} of {count}"
        arrays.append(_read_array(cursor))
    cursor.where = "names"
    name_count = cursor.unpack("<Q", "the number of names")
    if name_count not in (0, count):
        raise cursor.fail(f"{name_count:,} names for {count:,} arrays (mxnet requires 0 or one per array)")
    if name_count * MIN_NAME_BYTES > cursor.left:
        raise cursor.fail(f"claims {name_count:,} names but only {cursor.left:,} bytes follow: corrupt count")
    names = []
    for index in range(name_count):
        cursor.where = f"name of array {index}"
        length = cursor.unpack("<Q", "the name length")
        raw = cursor.take(length, f"a name of {length:,} bytes")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise cursor.fail(f"the name is not UTF-8 ({raw[:40]!r})") from None
    if cursor.left:
        cursor.where = "end"
        raise cursor.fail(f"{cursor.left:,} unexpected bytes after the names: corrupt or not an NDArray file")
    return arrays, names


def load_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of a named MXNet NDArray file (``PREFIX-EPOCH.params``: names ``arg:...``/``aux:...``)."""
    arrays, names = read_ndarray_file(path)
    if arrays and not names:
        raise DataFormatError(path, f"its {len(arrays)} arrays have no names: a list saved by mx.nd.save, "
                                    "not parameters")
    params: dict[str, np.ndarray] = {}
    for index, (name, array) in enumerate(zip(names, arrays, strict=True)):
        if name in params:
            raise DataFormatError(path, f"array {index}: the name {name!r} appears twice")
        params[name] = array
    return params


__all__ = [
    "DTYPES",
    "LIST_MAGIC",
    "NDARRAY_V1_MAGIC",
    "NDARRAY_V2_MAGIC",
    "load_params",
    "read_ndarray_file",
]

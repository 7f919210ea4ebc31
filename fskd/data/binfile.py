"""Verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``) of insightface.

A ``.bin`` is a pickle of ``(bins, issame)``: ``2P`` encoded images, pair ``i`` being
``(bins[2i], bins[2i+1])``, and ``P`` booleans (docs/formats.md, section 3.5). The public files were
written by Python 2, whose ``str`` opcodes need ``encoding='bytes'`` under Python 3; some later insightface
files (``arcface_paddle``'s ``small_lfw.bin``) hold each image as a numpy uint8 array of the encoded bytes, of
shape (N, 1) as ``cv2.imencode`` returns it (a 1-D (N,) array is accepted too).

Pickle runs code named by the file, so :func:`load_bin` uses an unpickler that admits only the few
globals these files legitimately contain (``_codecs.encode`` and numpy's array reconstructors) and
refuses everything else.
"""

from __future__ import annotations

import io
import numbers
import os
import pickle
import secrets
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fskd.data.errors import DataFormatError

__all__ = ["load_bin", "save_bin"]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode`` as used by Python 3 protocol-2 pickles of ``bytes``."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), not {encoding!r}"
        )
    return text.encode("latin-1")


def _numpy_internal(name: str) -> Any:
    """numpy's array/scalar reconstructors, wherever this numpy version keeps them."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return {
        "_reconstruct": multiarray._reconstruct,
        "scalar": multiarray.scalar,
        "_frombuffer": numeric._frombuffer,
    }[name]


# (module, name) pairs that a legitimate .bin may reference, and what each one resolves to. Both the
# numpy 1.x ("numpy.core") and numpy 2.x ("numpy._core") spellings are accepted; nothing is imported by
# name from the file.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    **{
        (f"{package}.multiarray", name): (lambda name=name: _numpy_internal(name))
        for package in ("numpy.core", "numpy._core")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (f"{package}.numeric", "_frombuffer"): (lambda: _numpy_internal("_frombuffer"))
        for package in ("numpy.core", "numpy._core")
    },
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of :data:`_ALLOWED_GLOBALS` and refuses all others."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if isinstance(module, bytes):
            module = module.decode("ascii", errors="replace")
        if isinstance(name, bytes):
            name = name.decode("ascii", errors="replace")
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise DataFormatError(
                self._path,
                f"refused global {module}.{name}: a .bin file only holds images (bytes or uint8 numpy "
                "arrays) and booleans",
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(self._path, "refused persistent id: a .bin file has none")


def _as_issame(raw: Any, path: str) -> np.ndarray:
    """The pair labels as a 1-D bool array; accepts Python/numpy bools (or 0/1 integers) and bool arrays."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or not (raw.dtype == np.bool_ or np.issubdtype(raw.dtype, np.integer)):
            raise DataFormatError(
                path, f"issame must be a 1-D bool array, got {raw.dtype} of shape {raw.shape}"
            )
        values = raw
    elif isinstance(raw, (list, tuple)):
        for position, value in enumerate(raw):
            if not isinstance(value, (bool, np.bool_, numbers.Integral)):
                raise DataFormatError(path, f"issame[{position}] is a {type(value).__name__}, not a bool")
        values = np.asarray(raw, dtype=np.int64) if raw else np.zeros(0, dtype=np.int64)
    else:
        raise DataFormatError(
            path, f"issame must be a list of bools or a bool array, got {type(raw).__name__}"
        )
    if values.dtype != np.bool_ and values.size and not np.isin(values, (0, 1)).all():
        raise DataFormatError(path, "issame holds integers other than 0 and 1")
    return values.astype(bool)


def _image_bytes(image: Any, path: str, position: int) -> bytes:
    """One image payload as bytes: Python bytes, or a uint8 numpy array of the encoded bytes of shape (N,) or
    (N, 1) (cv2.imencode's); nothing else."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    # Exactly ndarray: the unpickler can only build plain arrays, and a subclass could redefine tobytes().
    if type(image) is np.ndarray:
        if image.dtype == np.object_:
            # Its items could be anything the stream built; an image is raw bytes, never a container.
            raise DataFormatError(path, f"image {position} is a numpy object array, not a uint8 array of "
                                  "encoded bytes")
        if image.dtype != np.uint8:
            raise DataFormatError(path, f"image {position} is a numpy {image.dtype} array, not a uint8 array "
                                  "of encoded bytes")
        # (N, 1) is what cv2.imencode returns and what the real arcface_paddle small_lfw.bin stores; any other
        # shape (a (112, 112) or (H, W, 3) array would be decoded pixels) is not an encoded image.
        if not (image.ndim == 1 or (image.ndim == 2 and image.shape[1] == 1)):
            raise DataFormatError(path, f"image {position} is a {image.ndim}-D numpy uint8 array of shape "
                                  f"{image.shape}, not a 1-D (or (N, 1)) array of encoded bytes")
        return image.tobytes()
    if isinstance(image, np.generic):
        raise DataFormatError(path, f"image {position} is a numpy {type(image).__name__} scalar, not bytes or a "
                              "uint8 array")
    if callable(image):
        name = getattr(image, "__qualname__", None) or type(image).__name__
        raise DataFormatError(path, f"image {position} is a callable ({name}), not bytes or a uint8 array")
    raise DataFormatError(path, f"image {position} is a {type(image).__name__}, not bytes or a uint8 array")


def load_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Load a verification ``.bin``: ``(images, issame)`` with ``2P`` image byte strings and ``P`` bools.

    Reads the Python 2 files of insightface as well as Python 3 pickles of any protocol, with ``issame`` as
    a list of bools or a numpy bool array. An image may be stored as bytes (Python 2 ``str``) or as a numpy
    uint8 array of the encoded bytes of shape (N,) or (N, 1) (``cv2.imencode``'s output, as in insightface's
    ``arcface_paddle`` files); either is returned as ``bytes``. Any global other than those such files
    contain, an unreadable or truncated pickle, an image of another type (object or non-uint8 arrays, arrays
    of any other shape, callables) or a wrong structure raises DataFormatError naming the file (and the image
    index).
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        try:
            content = _RestrictedUnpickler(file, path).load()
        except DataFormatError:
            raise
        except Exception as error:  # any failure to parse the stream means a bad file
            raise DataFormatError(path, f"unreadable pickle ({type(error).__name__}: {error})") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        found = (
            f"a {len(content)}-item" if isinstance(content, (tuple, list)) else f"a {type(content).__name__}"
        )
        raise DataFormatError(path, f"expected a 2-tuple (images, issame), found {found}")
    raw_images, raw_issame = content
    if not isinstance(raw_images, (list, tuple)):
        raise DataFormatError(path, f"images must be a list of encoded images, got {type(raw_images).__name__}")
    images = [_image_bytes(image, path, position) for position, image in enumerate(raw_images)]
    issame = _as_issame(raw_issame, path)
    if len(images) != 2 * len(issame):
        raise DataFormatError(
            path, f"found {len(images)} images and {len(issame)} pairs; expected exactly 2 images per pair"
        )
    return images, issame


class _Py2StylePickler(pickle._Pickler):
    """Pure-Python pickler writing ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING, BINSTRING): lfw2pack."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes((size,)) + obj)
        elif size < 2**31:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        else:
            raise pickle.PicklingError(f"a {size}-byte image is too large for a Python 2 BINSTRING")
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def save_bin(
    path: str | os.PathLike,
    images: Sequence[bytes],
    issame: Sequence[bool] | np.ndarray,
    style: str = "py2",
) -> None:
    """Write a verification ``.bin`` of ``images`` (2 per pair) and ``issame`` (one bool per pair).

    ``style="py2"`` reproduces the opcode stream of insightface's Python 2 files (protocol 2, images as
    BINSTRING, which plain Python 3 ``pickle.load`` cannot decode without ``encoding='bytes'``);
    ``style="py3"`` is a plain protocol-4 pickle. Images are always written as bytes, in both styles, even when
    given as numpy uint8 arrays (any bytes-like object is accepted and copied): that is what the public files
    hold and what every reader, mxnet's and insightface's Python 2 ones included, expects; `load_bin` reads the
    numpy form as well. The file is written under a temporary name in the same folder and renamed, so a
    failure never leaves a half-written ``.bin``.
    """
    if style not in ("py2", "py3"):
        raise ValueError(f"style must be 'py2' or 'py3', got {style!r}")
    image_list = [bytes(memoryview(image)) for image in images]  # TypeError for non-bytes-like items
    pair_labels = [bool(value) for value in np.asarray(issame, dtype=bool).reshape(-1)]
    if len(image_list) != 2 * len(pair_labels):
        raise ValueError(f"{len(image_list)} images for {len(pair_labels)} pairs; need exactly 2 per pair")
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    temp_path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    payload = (image_list, pair_labels)
    try:
        # O_EXCL: never follow or clobber anything already there; the umask applies to the mode as usual.
        descriptor = os.open(
            temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
        )
        with os.fdopen(descriptor, "wb") as file:
            if style == "py2":
                _Py2StylePickler(file, protocol=2).dump(payload)
            else:
                pickle.dump(payload, file, protocol=4)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise

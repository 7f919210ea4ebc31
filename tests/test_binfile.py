"""Tests of fskd.data.binfile: both pickle styles, the restricted unpickler and structure checks."""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg

from fskd.data.binfile import load_bin, save_bin
from fskd.data.errors import DataFormatError

# JPEG-like byte strings starting with 0xFF (not ASCII): two short (< 256 bytes), four long.
IMAGES = [b"\xff\xd8\xff\xe0" + bytes([i]) * (40 + 150 * i) for i in range(6)]
ISSAME = [True, False, True]


def opcodes(data: bytes) -> list[str]:
    return [op.name for op, _, _ in pickletools.genops(data)]


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_round_trip(tmp_path, style):
    path = tmp_path / "lfw.bin"
    save_bin(path, IMAGES, ISSAME, style=style)
    images, issame = load_bin(path)
    assert images == IMAGES
    assert issame.dtype == np.bool_ and issame.tolist() == ISSAME
    assert os.listdir(tmp_path) == ["lfw.bin"]  # the temporary file was renamed


def test_py2_style_stream_is_python2_like(tmp_path):
    path = tmp_path / "py2.bin"
    save_bin(path, IMAGES, ISSAME, style="py2")
    data = path.read_bytes()
    assert data[:2] == b"\x80\x02"
    ops = opcodes(data)
    assert ops.count("SHORT_BINSTRING") == 2 and ops.count("BINSTRING") == 4  # 44, 194 bytes / 344+
    assert "BINBYTES" not in ops and "GLOBAL" not in ops
    assert ops.count("NEWTRUE") == 2 and ops.count("NEWFALSE") == 1
    assert ops[-2:] == ["BINPUT", "STOP"] and "TUPLE2" in ops
    # the first image: 'U' + 1-byte length + bytes, then its memo entry
    first = 2 + 1 + 2 + 1  # PROTO 2, EMPTY_LIST, BINPUT 0, MARK
    assert data[first : first + 2 + len(IMAGES[0])] == b"U" + bytes([len(IMAGES[0])]) + IMAGES[0]
    third = data.index(IMAGES[2]) - 5
    assert data[third : third + 5] == b"T" + struct.pack("<i", len(IMAGES[2]))
    with open(path, "rb") as file, pytest.raises(UnicodeDecodeError):
        pickle.load(file)  # Python 3's default ASCII decoding of py2 str fails, as with the real files
    with open(path, "rb") as file:
        assert pickle.load(file, encoding="bytes") == (IMAGES, ISSAME)


def test_py3_style_is_protocol_4(tmp_path):
    path = tmp_path / "py3.bin"
    save_bin(path, IMAGES, np.array(ISSAME), style="py3")
    data = path.read_bytes()
    assert data[:2] == b"\x80\x04" and "SHORT_BINBYTES" in opcodes(data)
    with open(path, "rb") as file:
        assert pickle.load(file) == (IMAGES, ISSAME)


def test_protocol_2_py3_pickle_loads(tmp_path):
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps((IMAGES, ISSAME), protocol=2))
    assert "GLOBAL" in opcodes(path.read_bytes())  # bytes go through _codecs.encode
    images, issame = load_bin(path)
    assert images == IMAGES and issame.tolist() == ISSAME


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_issame_loads(tmp_path, protocol):
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((IMAGES, np.array(ISSAME, dtype=bool)), protocol=protocol))
    images, issame = load_bin(path)
    assert images == IMAGES and issame.dtype == np.bool_ and issame.tolist() == ISSAME
    path.write_bytes(pickle.dumps((IMAGES, [np.bool_(v) for v in ISSAME]), protocol=protocol))
    assert load_bin(path)[1].tolist() == ISSAME


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_code_execution_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((IMAGES, [_Exploit(str(marker)), True, False]), protocol=protocol))
    with pytest.raises(
        DataFormatError, match=re.escape(str(path)) + r": refused global (posix|nt|os)\.system"
    ):
        load_bin(path)
    assert not marker.exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "codec.bin"
    # a protocol-2 stream calling _codecs.encode('x', 'rot13') instead of latin1
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + r": unreadable pickle.*latin1"):
        load_bin(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ((IMAGES[:5], [True, False, True]), "found 5 images and 3 pairs"),
        ((IMAGES, [True, False]), "found 6 images and 2 pairs"),
        ((IMAGES, ISSAME, "extra"), "expected a 2-tuple"),
        ({"bins": IMAGES}, "expected a 2-tuple.*dict"),
        ((IMAGES[:4] + ["text", IMAGES[5]], ISSAME), "image 4 is a str"),
        ((IMAGES, ["yes", False, True]), r"issame\[0\] is a str"),
        ((IMAGES, np.zeros((3, 1), dtype=bool)), "issame must be a 1-D bool array"),
    ],
)
def test_wrong_structure_is_rejected(tmp_path, content, message):
    path = tmp_path / "shape.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": " + message):
        load_bin(path)


def test_truncated_file_is_rejected(tmp_path):
    path = tmp_path / "cut.bin"
    save_bin(path, IMAGES, ISSAME, style="py2")
    data = path.read_bytes()
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": unreadable pickle"):
            load_bin(path)
    # a BINSTRING that claims 2 GiB must fail fast, without allocating it
    path.write_bytes(b"\x80\x02]q\x00(T" + struct.pack("<i", 2**31 - 1) + b"\xff\xd8")
    with pytest.raises(DataFormatError, match="unreadable pickle"):
        load_bin(path)


def test_save_bin_validates_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "x.bin"
    with pytest.raises(ValueError, match="5 images for 3 pairs"):
        save_bin(path, IMAGES[:5], ISSAME)
    with pytest.raises(ValueError, match="style"):
        save_bin(path, IMAGES, ISSAME, style="py1")
    save_bin(path, IMAGES, ISSAME)
    with pytest.raises(TypeError):
        save_bin(path, IMAGES[:5] + [12345], ISSAME)  # not bytes: fails before anything is written
    assert os.listdir(tmp_path) == ["x.bin"] and load_bin(path)[0] == IMAGES  # the old file is intact


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    save_bin(path, IMAGES, ISSAME, style="py3")

    def failing_dump(obj, file, protocol=None):
        file.write(b"\x80\x04partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pickle, "dump", failing_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        save_bin(path, IMAGES[:2], [False], style="py3")
    assert os.listdir(tmp_path) == ["x.bin"] and load_bin(path)[1].tolist() == ISSAME


# ---------------------------------------------------------------------------------------------------------
# Images stored as numpy uint8 arrays (insightface's arcface_paddle files, cv2.imencode output)
# ---------------------------------------------------------------------------------------------------------

REAL_FACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-faces"
SMALL_LFW = REAL_FACES / "insightface_small_lfw.bin"


@pytest.mark.skipif(not SMALL_LFW.is_file(), reason=f"real insightface file absent: {SMALL_LFW}")
def test_real_insightface_file_with_numpy_images_loads():
    images, issame = load_bin(SMALL_LFW)
    assert len(images) == 20 and all(type(image) is bytes for image in images)
    assert issame.dtype == np.bool_ and issame.shape == (10,) and issame.all()
    for image in images:
        assert image[:3] == b"\xff\xd8\xff" and image.rstrip(b"\x00")[-2:] == b"\xff\xd9"
        decoded = decode_jpeg(torch.frombuffer(bytearray(image), dtype=torch.uint8))
        assert decoded.dtype == torch.uint8 and decoded.shape[0] == 3


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", ["flat", "column"])
def test_numpy_uint8_images_round_trip(tmp_path, protocol, shape):
    # (N,) arrays, and (N, 1) ones as cv2.imencode returns them (the real small_lfw.bin holds those).
    arrays = [np.frombuffer(image, dtype=np.uint8) for image in IMAGES]
    if shape == "column":
        arrays = [array.reshape(-1, 1) for array in arrays]
    path = tmp_path / "numpy.bin"
    path.write_bytes(pickle.dumps((arrays, ISSAME), protocol=protocol))
    images, issame = load_bin(path)
    assert images == IMAGES and all(type(image) is bytes for image in images)
    assert issame.tolist() == ISSAME
    # Mixed bytes and arrays in one list load too.
    path.write_bytes(pickle.dumps((IMAGES[:3] + arrays[3:], ISSAME), protocol=protocol))
    assert load_bin(path)[0] == IMAGES


def test_save_bin_writes_numpy_images_as_bytes(tmp_path):
    path = tmp_path / "x.bin"
    save_bin(path, [np.frombuffer(image, dtype=np.uint8) for image in IMAGES], ISSAME)
    assert "GLOBAL" not in opcodes(path.read_bytes())  # no numpy reconstructor in the stream
    assert load_bin(path)[0] == IMAGES


def _array(image: bytes = IMAGES[1]) -> np.ndarray:
    return np.frombuffer(image, dtype=np.uint8)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_array().astype(object), "image 1 is a numpy object array"),
        (np.array([IMAGES[1]], dtype=object), "image 1 is a numpy object array"),
        (_array().astype(np.float32), "image 1 is a numpy float32 array, not a uint8 array"),
        (_array().astype(np.int8), "image 1 is a numpy int8 array"),
        (np.zeros((112, 112), dtype=np.uint8), r"image 1 is a 2-D numpy uint8 array of shape \(112, 112\)"),
        (_array().reshape(1, -1), r"image 1 is a 2-D numpy uint8 array of shape \(1, 194\)"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "image 1 is a 3-D numpy uint8 array"),
        (np.array(7, dtype=np.uint8), "image 1 is a 0-D numpy uint8 array"),
        (np.uint8(7), "image 1 is a numpy uint8 scalar"),
        (np.ndarray, r"image 1 is a callable \(ndarray\)"),
        (np.dtype, r"image 1 is a callable \(dtype\)"),
    ],
)
def test_numpy_images_other_than_uint8_bytes_are_refused(tmp_path, protocol, bad, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps((IMAGES[:1] + [bad] + IMAGES[2:], ISSAME), protocol=protocol))
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": " + message):
        load_bin(path)


class _RebuiltBy:
    """Pickles as ``callable(*args)``: a numpy array whose stream names another function than _reconstruct."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize(
    ("bad", "refused"),
    [
        (_RebuiltBy(np.frombuffer, IMAGES[1], "uint8"), r"numpy\.frombuffer"),
        (_RebuiltBy(np.fromfile, "/etc/hostname", "uint8"), r"numpy\.fromfile"),
        (_RebuiltBy(np.load, "/nonexistent.npy", None, True), r"numpy\.load"),
        (_array().view(np.ma.MaskedArray), r"numpy\.ma\.core\._mareconstruct"),
        (_array().view(np.recarray), r"numpy\.(_core\.)?(rec|records)\.recarray"),
    ],
)
def test_numpy_arrays_rebuilt_by_other_callables_are_refused(tmp_path, protocol, bad, refused):
    path = tmp_path / "rebuild.bin"
    path.write_bytes(pickle.dumps((IMAGES[:1] + [bad] + IMAGES[2:], ISSAME), protocol=protocol))
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": refused global " + refused):
        load_bin(path)

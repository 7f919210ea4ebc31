"""Tests of fskd.data.images.decode_face: formats (JPEG, PNG, PGM), grey and alpha, and the one size rule
(longer side to 112, shorter side zero-padded) as training, identification and prediction use it."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from fskd.data.datasets import FolderFaceDataset
from fskd.data.errors import DataFormatError
from fskd.data.images import IMAGE_SIZE, decode_face, fit_to_square, normalize
from fskd.data.layouts import IMAGE_SUFFIXES, list_images, split_identity_folder
from fskd.data.sources import EncodedImages, PredictionImages
from fskd.data.synthetic import render_face_jpeg

REAL_FACES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real-faces"
ORL = REAL_FACES / "orl_faces"
YALE = REAL_FACES / "extended_yale_b_cropped"


def pattern(height: int, width: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Distinct, non-zero pixel values (1..255), so that padding (0) is never confused with content."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, size=(height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)


def pgm_p5(grey: np.ndarray, maxval: int = 255) -> bytes:
    """A raw PGM written by hand (the layout of ORL's and Yale's files)."""
    height, width = grey.shape
    sample = grey.astype(">u2").tobytes() if maxval > 255 else grey.astype(np.uint8).tobytes()
    return f"P5\n{width} {height}\n{maxval}\n".encode() + sample


def pgm_p2(grey: np.ndarray) -> bytes:
    height, width = grey.shape
    rows = "\n".join(" ".join(str(int(v)) for v in row) for row in grey)
    return f"P2\n# a comment, as plain PGM allows\n{width} {height}\n255\n{rows}\n".encode()


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference resampling of the rule: bilinear, antialiased, rounded to uint8."""
    return F.interpolate(image[None].float(), size=(height, width), mode="bilinear", antialias=True,
                         align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)


def assert_placed(out: torch.Tensor, content: torch.Tensor, top: int, left: int) -> None:
    """``content`` (3, h, w) sits at (top, left) of the 112x112 output and everything else is exactly 0."""
    height, width = content.shape[-2:]
    assert out.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and out.dtype == torch.uint8
    assert torch.equal(out[:, top:top + height, left:left + width], content)
    mask = torch.ones(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    mask[top:top + height, left:left + width] = False
    assert int(out[:, mask].abs().sum()) == 0 and bool((content > 0).all())


# ---------------------------------------------------------------------------------------------------------
# The fast path and square images (unchanged behaviour)
# ---------------------------------------------------------------------------------------------------------


def test_112_jpeg_takes_the_torchvision_path_unchanged():
    data = render_face_jpeg(0, 3, 1)
    expected = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    image = decode_face(data, "x.jpg")
    assert image.shape == (3, 112, 112) and image.dtype == torch.uint8 and torch.equal(image, expected)
    assert fit_to_square(expected) is expected  # no copy, no resampling at 112x112


def test_square_images_are_only_resized():
    small = pattern(56, 56, 3)
    out = decode_face(encode(small, "PNG"), "s.png")
    assert torch.equal(out, resized(torch.from_numpy(small).permute(2, 0, 1), 112, 112))
    large = pattern(250, 250, 3, seed=1)
    assert torch.equal(decode_face(encode(large, "PNG"), "l.png"),
                       resized(torch.from_numpy(large).permute(2, 0, 1), 112, 112))
    assert decode_face(encode(large, "PNG"), "l.png", size=64).shape == (3, 64, 64)


# ---------------------------------------------------------------------------------------------------------
# PGM (grey, replicated to 3 channels) and the padding rule
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", [pgm_p5, pgm_p2])
def test_orl_shaped_pgm_is_padded_unscaled(writer):
    grey = pattern(112, 92)
    out = decode_face(writer(grey), "s1/1.pgm")
    # 92 wide, 112 high: the longer side is already 112, so no resampling; 10 black columns each side.
    assert_placed(out, torch.from_numpy(grey)[None].expand(3, -1, -1), top=0, left=10)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_yale_shaped_pgm_is_scaled_to_98_by_112_and_padded():
    grey = pattern(192, 168, seed=2)
    out = decode_face(pgm_p5(grey), "yaleB01/x.pgm")
    expected = resized(torch.from_numpy(grey)[None].expand(3, -1, -1), 112, 98)
    assert_placed(out, expected, top=0, left=7)


def test_16_bit_and_low_maxval_pgm_are_brought_to_8_bits():
    wide = np.array([[0, 257, 65535, 32896]], dtype=np.uint16).repeat(112, axis=0)  # 4 wide, 112 high
    out = decode_face(pgm_p5(wide, maxval=65535), "w.pgm")
    assert out[0, 0, 54:58].tolist() == [0, 1, 255, 128]  # (4 wide -> 54 black columns on the left)
    low = b"P5\n2 1\n100\n" + bytes([100, 50])  # maxval 100: PIL stretches to 0..255
    assert decode_face(low, "l.pgm")[0, 28, 0].item() == 255


# ---------------------------------------------------------------------------------------------------------
# PNG with alpha, non-square JPEG, odd padding, extremes
# ---------------------------------------------------------------------------------------------------------


def test_rgba_png_drops_alpha_and_pads_rows():
    rgba = pattern(56, 112, 4, seed=3)
    rgba[..., 3] = np.linspace(0, 255, 112, dtype=np.uint8)  # transparency must not change the colours
    out = decode_face(encode(rgba, "PNG", "RGBA"), "a.png")
    assert_placed(out, torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1), top=28, left=0)


def test_grey_and_grey_alpha_png_replicate_channels():
    grey = pattern(112, 112, seed=4)
    out = decode_face(encode(grey, "PNG", "L"), "g.png")
    assert torch.equal(out, torch.from_numpy(grey)[None].expand(3, -1, -1))
    grey_alpha = np.stack([grey, np.full_like(grey, 9)], axis=-1)
    assert torch.equal(decode_face(encode(grey_alpha, "PNG", "LA"), "la.png"), out)


def test_16_bit_png_is_rounded_to_8_bits():
    wide = (pattern(112, 112, seed=5).astype(np.uint16) * 257)
    out = decode_face(encode(wide, "PNG"), "w.png")
    assert out.dtype == torch.uint8 and torch.equal(out[0], torch.from_numpy((wide // 257).astype(np.uint8)))


def png_16_bit(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (numpy samples, big-endian rows): ``color_type`` 0 grey, 2 RGB, 4 grey +
    alpha, 6 RGBA, as cameras and scanners write them."""
    height, width = samples.shape[:2]
    rows = samples.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("color_type", "channels"), [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_16_bit_png_of_every_colour_type_normalises_into_minus_one_one(color_type: int, channels: int):
    # The values of a real 16-bit photograph (1530..50617): read as uint16 they would normalise to [11, 396].
    samples = np.random.default_rng(color_type).integers(1530, 50618, size=(112, 112, channels), dtype=np.uint16)
    samples[0, 0, :] = (1530, 50617, 1530, 50617)[:channels]
    out = decode_face(png_16_bit(samples, color_type), "photo16.png")
    colour = samples[..., :3] if channels >= 3 else np.repeat(samples[..., :1], 3, axis=-1)
    expected = (colour.astype(np.int64) * 255 + 32767) // 65535  # round(v * 255 / 65535)
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(expected).permute(2, 0, 1).to(torch.uint8))
    values = normalize(out)
    assert (int(out.min()), int(out.max())) == (6, 197)
    assert -1.0 <= float(values.min()) < -0.95 and 0.54 < float(values.max()) <= 1.0


def test_samples_neither_8_nor_16_bits_are_refused_naming_the_file(monkeypatch: pytest.MonkeyPatch):
    import fskd.data.images as images

    monkeypatch.setattr(images, "decode_image", lambda *args, **kwargs: torch.zeros(3, 112, 112))
    with pytest.raises(DataFormatError, match=r"^odd\.png: decoded to torch\.float32 samples; only 8- and 16-bit "
                                              r"images are supported$"):
        decode_face(b"anything", "odd.png")


def test_16_bit_yale_pgm_is_rescaled_not_clipped(tmp_path: Path):
    from fskd.data.real_faces import YALE_CROP_ROWS, FaceImage, face_112

    grey8 = pattern(192, 168, seed=7)
    path = tmp_path / "yaleB01_P00A+000E+00.pgm"
    path.write_bytes(pgm_p5(grey8.astype(np.uint16) * 257, maxval=65535))
    out = face_112(FaceImage("yale/yaleB01", path))
    square = torch.from_numpy(grey8[YALE_CROP_ROWS:192 - YALE_CROP_ROWS].copy())[None].expand(3, -1, -1)
    assert torch.equal(out, resized(square, 112, 112))  # PIL's convert("L") clipped every value to 255


def test_non_square_jpeg_is_scaled_and_padded_symmetrically():
    # 200 wide x 100 high: scaled to 112 x 56, 28 black rows above and below. The JPEG is decoded by torchvision
    # first; the rule then resamples exactly as the reference.
    rgb = np.zeros((100, 200, 3), dtype=np.uint8)
    rgb[:, :100] = (200, 30, 30)
    rgb[:, 100:] = (30, 30, 200)
    data = encode(rgb, "JPEG", quality=95)
    decoded = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    out = decode_face(data, "wide.jpg")
    assert torch.equal(out[:, 28:84], resized(decoded, 56, 112))
    assert int(out[:, :28].sum()) == 0 and int(out[:, 84:].sum()) == 0
    # left half red, right half blue, after the JPEG round trip and resampling
    assert out[0, 56, 20] > 150 > out[2, 56, 20] and out[2, 56, 90] > 150 > out[0, 56, 90]


@pytest.mark.parametrize(("width", "left", "right"), [(111, 0, 1), (91, 10, 11), (1, 55, 56)])
def test_odd_padding_puts_the_extra_column_on_the_right(width, left, right):
    grey = pattern(112, width, seed=width)
    out = decode_face(pgm_p5(grey), "odd.pgm")
    assert_placed(out, torch.from_numpy(grey)[None].expand(3, -1, -1), top=0, left=left)
    assert IMAGE_SIZE - left - width == right


def test_extreme_aspect_keeps_at_least_one_row():
    image = fit_to_square(torch.full((3, 3, 1000), 77, dtype=torch.uint8))
    assert image.shape == (3, 112, 112)
    assert int((image.sum(dim=(0, 2)) > 0).sum()) == 1  # one row of content, at the middle
    assert int(image[0, 55].max()) > 0


# ---------------------------------------------------------------------------------------------------------
# Errors name the file (and the record key)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image payload"),
        (b"P5\n6 4\n255\n" + bytes(10), "cannot decode Netpbm image.*truncated"),
        (b"P5 nonsense", "cannot decode Netpbm image"),
        (b"P5\n100000 100000\n255\n\x00", "cannot decode Netpbm image.*decompression bomb"),
        (b"Pf\n2 1\n-1.0\n" + bytes(8), "cannot decode image"),  # float PFM: no 8-bit meaning
        (b"BM" + bytes(60), "cannot decode image"),  # BMP: not a supported format
        (b"not an image", "cannot decode image"),
    ],
)
def test_undecodable_payloads_raise_data_format_error(data, message):
    with pytest.raises(DataFormatError, match=r"^faces\.rec \(record 17\): " + message):
        decode_face(data, "faces.rec", key=17)


def test_animated_gif_is_refused():
    frames = [Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)) for value in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(DataFormatError, match="a.gif.*2 frames"):
        decode_face(buffer.getvalue(), "a.gif")


# ---------------------------------------------------------------------------------------------------------
# One rule in every reader: train.list, identity folders (identify), prediction folders
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def mixed_faces(tmp_path: Path) -> dict[str, bytes]:
    """Two identities of mixed formats and sizes, one with an upper-case .PGM suffix."""
    files = {
        "alice/1.pgm": pgm_p5(pattern(112, 92, seed=10)),
        "alice/2.PGM": pgm_p2(pattern(40, 30, seed=11)),
        "alice/3.jpg": render_face_jpeg(0, 1, 0),
        "bob/1.png": encode(pattern(90, 120, 4, seed=12), "PNG", "RGBA"),
        "bob/2.jpeg": encode(pattern(150, 100, 3, seed=13), "JPEG"),
        "bob/notes.txt": b"not an image",
    }
    for name, data in files.items():
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / name).write_bytes(data)
    return files


def test_suffixes_include_pgm_case_insensitively(tmp_path, mixed_faces):
    assert ".pgm" in IMAGE_SUFFIXES
    listed = [p.relative_to(tmp_path / "faces").as_posix() for p in list_images(tmp_path / "faces")]
    assert listed == ["alice/1.pgm", "alice/2.PGM", "alice/3.jpg", "bob/1.png", "bob/2.jpeg"]


def test_every_reader_applies_the_same_rule(tmp_path, mixed_faces):
    root = tmp_path / "faces"
    expected = {name: decode_face(data, name) for name, data in mixed_faces.items() if not name.endswith(".txt")}
    assert all(image.shape == (3, 112, 112) for image in expected.values())

    # identification: identity folders -> EncodedImages (as fskd identify --layout folder)
    probes, probe_labels, gallery, gallery_labels = split_identity_folder(root, gallery_per_identity=1)
    paths = gallery + probes
    encoded = EncodedImages(paths)
    for index, path in enumerate(paths):
        assert torch.equal(encoded[index], expected[path.relative_to(root).as_posix()])
    assert gallery_labels.tolist() == [0, 1] and sorted(probe_labels.tolist()) == [0, 0, 1]
    # encoded bytes too
    assert torch.equal(EncodedImages([mixed_faces["alice/1.pgm"]])[0], expected["alice/1.pgm"])

    # prediction: every image under a folder
    prediction = PredictionImages(root)
    assert prediction.names == list(expected)
    for index, name in enumerate(prediction.names):
        assert torch.equal(prediction[index]["image"], expected[name])

    # training: a train.list naming the same files
    lines = [f"faces/{name} {0 if name.startswith('alice') else 1}\n" for name in expected]
    (tmp_path / "train.list").write_text("".join(lines))
    training = FolderFaceDataset(tmp_path)
    for index, name in enumerate(expected):
        item = training[index]
        assert torch.equal(item["image"], expected[name]) and item["label"] == (0 if name.startswith("alice") else 1)


def test_unreadable_pgm_in_a_folder_names_the_file(tmp_path):
    path = tmp_path / "faces" / "x" / "1.pgm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"P5\n92 112\n255\n" + bytes(100))
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ".*truncated"):
        PredictionImages(tmp_path / "faces")[0]


# ---------------------------------------------------------------------------------------------------------
# Real grey databases (outside the project; skipped when absent)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ORL.is_dir(), reason=f"real ORL faces absent: {ORL}")
def test_real_orl_folder_gives_400_padded_faces_of_40_identities():
    probes, probe_labels, gallery, gallery_labels = split_identity_folder(ORL, gallery_per_identity=1)
    paths = gallery + probes
    labels = np.concatenate([gallery_labels, probe_labels])
    assert len(paths) == 400 and len(set(labels.tolist())) == 40 and len(gallery) == 40
    images = torch.stack([EncodedImages(paths)[index] for index in range(len(paths))])
    assert images.shape == (400, 3, 112, 112) and images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    # 92 wide: exactly 10 black columns on each side, the pixels of the file unscaled in between.
    assert int(images[..., :10].sum()) == 0 and int(images[..., 102:].sum()) == 0
    first = np.asarray(Image.open(gallery[0])).copy()
    assert first.shape == (112, 92) and torch.equal(images[0, 0, :, 10:102], torch.from_numpy(first))


@pytest.mark.skipif(not YALE.is_dir(), reason=f"real Extended Yale B faces absent: {YALE}")
def test_real_yale_faces_are_scaled_to_98_columns_and_padded():
    paths = list_images(YALE / "yaleB01")[:5]
    assert paths and all(p.suffix == ".pgm" for p in paths)
    for path in paths:
        image = decode_face(path.read_bytes(), path)
        grey = torch.from_numpy(np.asarray(Image.open(path)).copy())
        assert grey.shape == (192, 168)
        assert torch.equal(image[:, :, 7:105], resized(grey[None].expand(3, -1, -1), 112, 98))
        assert int(image[..., :7].sum()) == 0 and int(image[..., 105:].sum()) == 0

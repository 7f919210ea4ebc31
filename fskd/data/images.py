"""Image decoding and normalisation shared by training, evaluation and prediction.

Images travel from the loader workers to the device as uint8 (3, H, W) tensors, four times less than float32;
normalisation to [-1, 1] happens on the device. Channel order is RGB everywhere (as insightface; the authors'
cv2-based code used BGR, which matters only when loading their checkpoints).

Every reader (``.rec``, ``.bin``, ``train.list``, identity folders, prediction folders) goes through `decode_face`
(or its two halves, `decode_rgb` then `fit_to_square`, where the decoded size is wanted), so one rule brings any
stored image to the model input (docs/formats.md, section 5).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from fskd.data.errors import DataFormatError

IMAGE_SIZE = 112

#: Decoded images with a side shorter than this (before the size rule scales them to `IMAGE_SIZE`) are counted and
#: warned about once per data set: a face crop that small is almost always a broken crop or a placeholder.
SMALL_IMAGE_SIDE = 32

# torchvision 0.29 announces the move of its decoders to torchcodec; they remain the fastest CPU/GPU JPEG path here.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

# Netpbm magic numbers (PBM, PGM, PPM; plain and raw). Only these go to PIL: torchvision reads JPEG/PNG itself, and
# handing arbitrary bytes to every PIL plugin would widen what a crafted record or file can reach.
_NETPBM_MAGIC = tuple(f"P{digit}".encode() for digit in "123456")


def _decode_netpbm(data: bytes) -> torch.Tensor:
    """PBM/PGM/PPM (P1-P6) bytes to uint8 RGB (3, H, W), grey replicated; 16-bit samples rounded to 8 bits."""
    with Image.open(io.BytesIO(data), formats=["PPM"]) as picture:
        picture.load()  # PIL decodes lazily: a truncated file must fail here, inside the caller's error handling
        if picture.mode in ("I", "I;16", "I;16B", "I;16L"):
            # PIL scales a maxval > 255 file to 0..65535; convert("RGB") would clip instead of rescale.
            wide = np.asarray(picture, dtype=np.int64)
            grey = ((wide.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
            return torch.from_numpy(grey)[None].expand(3, -1, -1).contiguous()
        if picture.mode not in ("1", "L", "RGB"):
            raise ValueError(f"unsupported Netpbm mode {picture.mode}")  # e.g. PFM floats: no 8-bit meaning
        rgb = np.asarray(picture.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def fit_to_square(image: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Bring a uint8 (C, H, W) image to (C, size, size) without distorting it (the rule of `decode_face`).

    The longer side is scaled to ``size`` (bilinear, antialiased; the shorter side to the nearest integer, at
    least 1, rounding halves up) and the shorter side is zero-padded (black) to ``size``, the padding split
    evenly, the odd pixel (if any) going to the right or bottom. A square image is only resized; a
    ``size`` x ``size`` image is returned as it is.
    """
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image
    longer = max(height, width)
    # Integer round-half-up of side * size / longer: no float error (168 x 192 -> 98 x 112 exactly).
    new_height, new_width = (max(1, (2 * side * size + longer) // (2 * longer)) for side in (height, width))
    if (new_height, new_width) != (height, width):
        image = F.interpolate(image[None].float(), size=(new_height, new_width), mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    if (new_height, new_width) == (size, size):
        return image
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas = image.new_zeros((image.shape[0], size, size))
    canvas[:, top:top + new_height, left:left + new_width] = image
    return canvas


def decode_face(data: bytes, source: str | os.PathLike, key: object | None = None,
                size: int = IMAGE_SIZE) -> torch.Tensor:
    """Decode an encoded image to a uint8 RGB tensor (3, size, size).

    Formats: JPEG and PNG (torchvision's decoders; also what else ``torchvision.io.decode_image`` reads) and
    Netpbm PBM/PGM/PPM, raw or plain (P1-P6, through PIL, when torchvision cannot read the bytes). Grey images are
    replicated to three channels; an alpha channel is dropped, not composited; 16-bit samples are rounded to 8 bits.

    Size rule (docs/formats.md, section 5): a ``size`` x ``size`` image is kept as it is; any other is scaled so
    that its longer side is ``size``, preserving the aspect ratio (bilinear, antialiased), and the shorter side is
    zero-padded symmetrically (`fit_to_square`). A square image is thus only resized, and ORL's 92x112 faces get
    10 black columns on each side, unscaled. Aligned 112x112 JPEGs (every insightface ``.rec``/``.bin``) take the
    torchvision path with no further copy.

    A payload that cannot be decoded, or decodes to samples that are neither 8 nor 16 bits, raises
    `DataFormatError` naming the file and the record instead of killing a loader worker with a bare decoder
    message (or feeding the model values outside [-1, 1] after `normalize`).
    """
    return fit_to_square(decode_rgb(data, source, key), size)


def decode_rgb(data: bytes, source: str | os.PathLike, key: object | None = None) -> torch.Tensor:
    """Decode an encoded image to a uint8 RGB tensor (3, H, W) at its own size (`decode_face` before the size
    rule): grey replicated, alpha dropped, 16-bit samples rounded to 8 bits, anything else refused."""
    if len(data) == 0:
        raise DataFormatError(source, "empty image payload", key)
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as error:
        if bytes(data[:2]) not in _NETPBM_MAGIC:
            raise DataFormatError(source, f"cannot decode image ({len(data)} bytes): {error}", key) from None
        try:
            image = _decode_netpbm(data)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as netpbm_error:
            raise DataFormatError(source, f"cannot decode Netpbm image ({len(data)} bytes): {netpbm_error}",
                                  key) from None
    if image.ndim != 3:  # an animated GIF or WebP decodes to (frames, 3, H, W)
        raise DataFormatError(source, f"expected one still image, got {image.shape[0]} frames", key)
    if image.dtype == torch.uint16:
        # torchvision returns 16-bit PNGs as uint16; the rest of the pipeline is 8-bit (normalize expects 0..255).
        image = ((image.to(torch.int64) * 255 + 32767) // 65535).to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise DataFormatError(source, f"decoded to {image.dtype} samples; only 8- and 16-bit images are "
                              "supported", key)
    return image


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) images to float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5`` as all peers do."""
    return images.float().div(127.5).sub(1.0)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize`, to uint8 for pictures."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)

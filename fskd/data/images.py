"""Image decoding and normalisation shared by training, evaluation and prediction.

Images travel from the loader workers to the device as uint8 (3, H, W) tensors, four times less than float32;
normalisation to [-1, 1] happens on the device. Channel order is RGB everywhere (as insightface; the authors'
cv2-based code used BGR, which matters only when loading their checkpoints).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image

from fskd.data.errors import DataFormatError

IMAGE_SIZE = 112

# torchvision 0.29 announces the move of its decoders to torchcodec; they remain the fastest CPU/GPU JPEG path here.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def decode_face(data: bytes, source: str | os.PathLike, key: object | None = None,
                size: int = IMAGE_SIZE) -> torch.Tensor:
    """Decode JPEG/PNG bytes to a uint8 RGB tensor (3, size, size).

    Images that are not ``size`` x ``size`` are resized (antialiased bilinear) as insightface's ``resize_short``
    does for aligned 112x112 crops. A payload that cannot be decoded raises `DataFormatError` naming the file and
    the record instead of killing a loader worker with a bare decoder message.
    """
    if len(data) == 0:
        raise DataFormatError(source, "empty image payload", key)
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as error:
        raise DataFormatError(source, f"cannot decode image ({len(data)} bytes): {error}", key) from None
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    return image


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) images to float32 in [-1, 1]: ``(x / 255 - 0.5) / 0.5`` as all peers do."""
    return images.float().div(127.5).sub(1.0)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize`, to uint8 for pictures."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)

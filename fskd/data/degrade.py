"""Batched low-resolution degradation: shrink each face to d x d pixels, then scale it back to its size.

One code path serves training (random resolution and interpolation per sample, drawn from an explicit
``torch.Generator`` so a run is reproducible and resumable) and evaluation (a fixed resolution and mode). It runs on
whatever device the batch is on, so in training it is applied after the batch reaches the GPU.

Resolution policies, as the authors' ``--down_size``:

* ``112`` (or the image size): no degradation (teacher);
* ``14`` / ``28`` / ``56``: fixed resolution;
* ``"multi"``: per sample uniform over {14, 28, 56, 112} (the authors' ``--equal True`` default);
* ``"multi_hr50"``: per sample 50 % untouched HR, 50 % uniform over {14, 28, 56} (``--equal False``, QualNet).

Interpolation: ``"nearest"`` both ways reproduces the paper-era code (cv2 INTER_NEAREST down and up; torch
``nearest`` uses the same floor(dst * scale) source index); ``"random"`` draws the down and the up mode
independently per sample from `RANDOM_MODES`, as the authors' later code draws from five cv2 modes (Lanczos has
no torch equivalent and is left out); any single torch mode name fixes both directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fskd.data.transfer import to_device_async

LOW_RESOLUTIONS = (14, 28, 56)
MODES = ("nearest", "bilinear", "bicubic", "area")
RANDOM_MODES = MODES


def _interpolate(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if mode in ("bilinear", "bicubic"):
        # cv2's INTER_LINEAR/INTER_CUBIC do not antialias either; align_corners=False matches cv2's pixel centres.
        return F.interpolate(images, size=(size, size), mode=mode, align_corners=False)
    return F.interpolate(images, size=(size, size), mode=mode)


def degrade_fixed(images: torch.Tensor, resolution: int, down_mode: str = "nearest",
                  up_mode: str | None = None) -> torch.Tensor:
    """Down-sample a float batch (B, C, H, W) to ``resolution`` and back to (H, W); identity at full size."""
    size = images.shape[-1]
    if resolution >= size:
        return images
    up_mode = up_mode or down_mode
    for mode in (down_mode, up_mode):
        if mode not in MODES:
            raise ValueError(f"unknown interpolation {mode!r}; expected one of {MODES}")
    if down_mode == up_mode == "nearest" and size % resolution == 0:
        # Integer factor: nearest keeps every f-th pixel and repeats it f times; bit-identical to two
        # interpolate calls and several times faster on a CPU.
        factor = size // resolution
        low = images[..., ::factor, ::factor]
        shape = (*low.shape[:-2], resolution, factor, resolution, factor)
        return low[..., :, None, :, None].expand(shape).reshape(images.shape)
    # Bicubic overshoots: each bicubic step is clamped to the range of normalised images, as cv2 saturates its
    # uint8 result after each resize. (Only the up step was clamped before, so bicubic-down with another up mode,
    # 3 of 16 pairs under "random", gave values up to about +-1.2 on faces and +-1.8 on noise.) The other modes
    # average their inputs and cannot leave the range.
    low = _interpolate(images, resolution, down_mode)
    if down_mode == "bicubic":
        low = low.clamp(-1.0, 1.0)
    out = _interpolate(low, size, up_mode)
    if up_mode == "bicubic":
        out = out.clamp(-1.0, 1.0)
    return out


@dataclass(frozen=True)
class DegradationPlan:
    """Per-sample choices for one batch (CPU tensors): resolution and indices into `MODES`."""

    resolution: torch.Tensor
    down_mode: torch.Tensor
    up_mode: torch.Tensor


def parse_policy(policy: int | str, image_size: int = 112) -> tuple[list[int], list[float]]:
    """Resolution policy -> (resolutions, probabilities)."""
    text = str(policy).strip().lower()
    if text == "multi":
        choices = [*LOW_RESOLUTIONS, image_size]
        return choices, [1.0 / len(choices)] * len(choices)
    if text == "multi_hr50":
        low = 0.5 / len(LOW_RESOLUTIONS)
        return [*LOW_RESOLUTIONS, image_size], [low] * len(LOW_RESOLUTIONS) + [0.5]
    if text.isdigit():
        resolution = int(text)
        if not 1 <= resolution <= image_size:
            raise ValueError(f"resolution {resolution} outside 1..{image_size}")
        return [resolution], [1.0]
    raise ValueError(f"unknown resolution policy {policy!r}; expected an int, 'multi' or 'multi_hr50'")


class Degradation:
    """Random per-sample degradation of a batch according to a resolution policy.

    Args:
        policy: see the module docstring.
        interpolation: ``"random"`` or one of `MODES` (used both ways).
        modes: the set drawn from when ``interpolation == "random"``.
        image_size: side of the HR images.
    """

    def __init__(self, policy: int | str = 112, interpolation: str = "nearest",
                 modes: Sequence[str] = RANDOM_MODES, image_size: int = 112) -> None:
        self.policy = policy
        self.resolutions, probabilities = parse_policy(policy, image_size)
        self.probabilities = torch.tensor(probabilities, dtype=torch.float64)
        if interpolation != "random" and interpolation not in MODES:
            raise ValueError(f"unknown interpolation {interpolation!r}; expected 'random' or one of {MODES}")
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ValueError(f"interpolation modes {list(modes)} must be a non-empty subset of {MODES}")
        self.interpolation = interpolation
        self.modes = [MODES.index(m) for m in modes]
        self.image_size = image_size

    @property
    def is_identity(self) -> bool:
        return self.resolutions == [self.image_size]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> DegradationPlan:
        """Draw the per-sample resolution and modes on the CPU (independent of the batch's device)."""
        choice = torch.multinomial(self.probabilities, batch_size, replacement=True, generator=generator)
        resolution = torch.tensor(self.resolutions)[choice]
        if self.interpolation == "random":
            modes = torch.tensor(self.modes)
            down = modes[torch.randint(len(modes), (batch_size,), generator=generator)]
            up = modes[torch.randint(len(modes), (batch_size,), generator=generator)]
        else:
            down = up = torch.full((batch_size,), MODES.index(self.interpolation))
        return DegradationPlan(resolution, down, up)

    def apply(self, images: torch.Tensor, plan: DegradationPlan) -> torch.Tensor:
        """Degrade ``images`` (B, C, H, W float) following ``plan``, one interpolate call per group.

        The groups are found on the host from the CPU plan (numpy, no device round trip); the rows of every
        group go to the device in one non-blocking copy (`to_device_async`), so that a batch on a GPU makes the
        host wait for nothing, however many (resolution, down, up) groups it has (up to 48 for ``random``).
        """
        keys = np.stack([plan.resolution.numpy(), plan.down_mode.numpy(), plan.up_mode.numpy()], axis=1)
        # Sorted lexicographically like torch.unique(dim=0); `group` maps every row to its group.
        groups, group = np.unique(keys, axis=0, return_inverse=True)
        if len(groups) == 1:
            # One resolution and mode pair for the whole batch (fixed policies): no gather/scatter copies.
            resolution, down, up = (int(v) for v in groups[0])
            return degrade_fixed(images, resolution, MODES[down], MODES[up])
        # Rows sorted by group, ascending within each group (stable): group g is order[starts[g]:starts[g + 1]].
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(groups)))])
        rows_of = to_device_async(torch.from_numpy(order), images.device)
        out = images.clone()
        for index, key in enumerate(groups):
            resolution, down, up = (int(v) for v in key)
            if resolution >= images.shape[-1]:
                continue
            rows = rows_of[int(starts[index]):int(starts[index + 1])]
            out[rows] = degrade_fixed(images[rows], resolution, MODES[down], MODES[up])
        return out

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.is_identity:
            return images
        return self.apply(images, self.sample(images.shape[0], generator))

    def __repr__(self) -> str:
        return f"Degradation(policy={self.policy!r}, interpolation={self.interpolation!r})"

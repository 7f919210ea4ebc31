"""Host-to-device copies that do not make the host wait for the device.

A plain ``tensor.to("cuda")`` of a CPU tensor is a blocking copy: the host waits until the device has finished
everything queued before it, so the CPU cannot run ahead and queue the next training step. The training
transforms (`fskd.data.datamodule`, `fskd.data.degrade`) draw their flips and degradation plans on the CPU, from
a CPU generator (reproducible whatever the device), and send the small results to the device with
`to_device_async`: from pinned (page-locked) memory, ``non_blocking``, so the copy is queued like a kernel.
"""

from __future__ import annotations

import torch


def to_device_async(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` (on the CPU) on ``device`` without a host synchronisation: on a CUDA device the tensor is
    pinned first and copied ``non_blocking`` (PyTorch's pinned-memory allocator keeps the block until the copy
    has run); a CPU ``device`` gets the tensor itself."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)

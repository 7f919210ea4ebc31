"""Channel/spatial attention modules used inside iResNet blocks.

* :class:`SqueezeExcitation` -- the "se" mode: global average pool -> 1x1 conv (C -> C/r) -> ReLU ->
  1x1 conv (C/r -> C) -> sigmoid, multiplied onto the input.
* :class:`CBAM` -- the "cbam" mode (Woo et al. 2018, as used by F-SKD's A-SKD baseline): a channel gate
  from a shared MLP over the average- and max-pooled descriptors (summed, sigmoid), then a spatial gate
  from a 7x7 conv + BN over the channel-wise mean and max maps (sigmoid). The post-sigmoid gates are
  returned alongside the output because attention-distillation losses compare them between networks.

The hidden width of the bottleneck MLPs is ``max(1, channels // reduction)`` so that slim networks
(width multiplier < 1, e.g. 8 channels with reduction 16) still get a valid layer.
"""

from __future__ import annotations

import torch
from torch import nn


def bottleneck_width(channels: int, reduction: int) -> int:
    """Hidden width of an attention MLP: ``channels // reduction`` but never below 1."""
    if channels < 1 or reduction < 1:
        raise ValueError(
            f"channels and reduction must be >= 1, got channels={channels}, reduction={reduction}"
        )
    return max(1, channels // reduction)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation gate: ``x * sigmoid(W2 relu(W1 avgpool(x)))`` with 1x1 convs (no bias)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = bottleneck_width(channels, reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Post-sigmoid channel gate of shape (B, C, 1, 1)."""
        return torch.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ChannelAttention(nn.Module):
    """CBAM channel gate: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with one shared MLP."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = bottleneck_width(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the post-sigmoid gate of shape (B, C) for an input of shape (B, C, H, W)."""
        avg_descriptor = x.mean(dim=(2, 3))
        max_descriptor = x.amax(dim=(2, 3))
        return torch.sigmoid(self.mlp(avg_descriptor) + self.mlp(max_descriptor))


class SpatialAttention(nn.Module):
    """CBAM spatial gate: ``sigmoid(BN(conv7x7([mean_c(x), max_c(x)])))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the post-sigmoid gate of shape (B, 1, H, W) for an input of shape (B, C, H, W)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Convolutional block attention: channel gate, then spatial gate on the channel-gated map.

    ``forward`` returns ``(output, channel_gate, spatial_gate)`` with gates of shape (B, C) and
    (B, 1, H, W) (post-sigmoid), so callers can distil them without forward hooks.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(spatial_kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channel_gate = self.channel_attention(x)
        x = x * channel_gate[:, :, None, None]
        spatial_gate = self.spatial_attention(x)
        return x * spatial_gate, channel_gate, spatial_gate


__all__ = ["CBAM", "ChannelAttention", "SpatialAttention", "SqueezeExcitation", "bottleneck_width"]

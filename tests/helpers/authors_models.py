"""The F-SKD authors' network layout, re-implemented from its description, as the reference for the importer.

Their iResNet (gist-ailab/feature-similarity-KD, both code versions) names its modules like fskd's, except:
each block's gate is ``attention`` (identity for "ir"; an SE gate made of two bias-free ``Linear`` layers; or the
standard CBAM: ``ChannelGate.mlp`` = Flatten, Linear, ReLU, Linear over avg- and max-pooled descriptors,
``SpatialGate.spatial`` = a 2->1 convolution over the channel maps ``[max, mean]`` then BatchNorm); students of
the later code add ``hint_layer1..4`` (1x1 convolution + BN on each stage output, for distillation only); the
neck is global average pooling ("A") or BN-Dropout-FC-BN ("E"). They feed BGR images.
"""

from __future__ import annotations

import torch
from torch import nn


class SEGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
                                nn.Linear(channels // reduction, channels, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3))))[:, :, None, None]


class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = self.mlp(x.mean(dim=(2, 3), keepdim=True)) + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(summed)[:, :, None, None]


class SpatialConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spatial = SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # [max, mean]
        return x * torch.sigmoid(self.spatial(pooled))


class CBAMGate(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels)  # noqa: N815 (their attribute names)
        self.SpatialGate = SpatialGate()  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class Block(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, mode: str) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        self.attention = {"ir": nn.Identity(), "se": SEGate(planes), "cbam": CBAMGate(planes)}[mode]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return self.attention(out) + identity


class HintLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.hint = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)


class AuthorsIResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], mode: str = "ir", pooling: str = "A", student: bool = False) -> None:
        super().__init__()
        self.pooling = pooling
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512), strict=True), start=1):
            stage = [Block(inplanes, planes, 2, mode)] + [Block(planes, planes, 1, mode) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            inplanes = planes
        if student:
            for index, planes in enumerate((64, 128, 256, 512), start=1):
                setattr(self, f"hint_layer{index}", HintLayer(planes))
        if pooling == "E":
            self.bn2 = nn.BatchNorm2d(512)
            self.dropout = nn.Dropout(0.0)
            self.fc = nn.Linear(512 * 49, 512)
            self.features = nn.BatchNorm1d(512)

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(bgr)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.pooling == "A":
            return x.mean(dim=(2, 3))
        return self.features(self.fc(torch.flatten(self.dropout(self.bn2(x)), 1)))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics everywhere (so that every renamed tensor matters), scaled by
    fan-in so that activations stay of order one through the depth (a chaotic network would amplify rounding
    differences between two correct implementations)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim >= 2:
                values = noise / tensor[0].numel() ** 0.5
            elif name.endswith("running_var"):
                values = noise.abs() * 0.2 + 0.8
            elif name.endswith("prelu.weight"):
                values = 0.25 + 0.05 * noise
            elif name.endswith("weight"):  # BatchNorm scale
                values = 1.0 + 0.1 * noise
            else:  # shifts and running means
                values = 0.1 * noise
            tensor.copy_(values)
    return model.eval()

"""insightface-style improved ResNet (iResNet) backbones for 112x112 face crops.

Structure (see docs/fskd-method.md section 2):

* stem: conv3x3 (stride 1, 64w channels) -> BN -> PReLU;
* four stages of :class:`IBasicBlock` with 64w/128w/256w/512w channels, each stage's first block has
  stride 2 (112 -> 56 -> 28 -> 14 -> 7); a block is BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN,
  optionally followed by squeeze-excitation ("se") or CBAM ("cbam"), then the residual add (shortcut =
  1x1 conv with the stride + BN whenever the shape changes) with no activation after the add;
* a neck turning the last stage into the embedding:

  - ``"gap"`` (F-SKD paper-era "Option A"): global average pooling of the last stage. When the last stage
    width equals ``embedding_size`` (the paper setting: 512 channels, 512-d) nothing else is added, so
    the embedding *is* the pooled map. Otherwise (slim students, other embedding sizes) a projection
    ``Linear(C, E, bias=False) -> BatchNorm1d(E)`` is appended; the BN keeps the projected embedding's
    scale independent of the width (the bias would be redundant before it).
  - ``"fc"`` (insightface "Option E"): BN2d -> Dropout(p) -> Flatten -> Linear(C*7*7 -> E) ->
    BatchNorm1d(E) whose scale (gamma) is frozen at 1 (``requires_grad=False``), as insightface does.

Module names follow insightface's ``iresnet.py`` (``conv1``, ``bn1``, ``prelu``, ``layer1..4``,
``bn2``, ``dropout``, ``fc``, ``features``; blocks ``bn1, conv1, bn2, prelu, conv2, bn3, downsample``),
so with ``mode="ir"``, ``neck="fc"``, ``width=1`` the state-dict keys have the same names and shapes as
insightface checkpoints.

The forward pass returns a :class:`BackboneOutput` with the embedding, the four stage outputs (the
tensors F-SKD distils) and, in CBAM mode, the post-sigmoid attention gates of every block (what the
A-SKD baseline distils).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from fskd.models.attention import CBAM, SqueezeExcitation

BASE_STAGE_CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)
MODES: tuple[str, ...] = ("ir", "se", "cbam")
NECKS: tuple[str, ...] = ("gap", "fc")
ATTENTION_REDUCTION = 16
CONV_INIT_STD = 0.1  # insightface initialises every conv weight with N(0, 0.1)

IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


class BackboneOutput(NamedTuple):
    """What :class:`IResNet` returns.

    Attributes:
        embedding: (B, embedding_size) face embedding (not L2-normalised).
        features: the 4 stage outputs after the residual add, e.g. (B,64w,56,56) ... (B,512w,7,7) for a
            112x112 input.
        attention: one ``(channel_gate (B, C), spatial_gate (B, 1, H, W))`` pair per block, in block order,
            post-sigmoid; an empty tuple unless the model was built with ``mode="cbam"``.
    """

    embedding: torch.Tensor
    features: tuple[torch.Tensor, ...]
    attention: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def scaled_width(channels: int, width: float) -> int:
    """Channel count ``channels`` scaled by the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def check_size_arguments(width: float, embedding_size: int, input_size: int) -> None:
    """The size arguments every backbone takes: a positive width multiplier, embedding size and input side."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")


def output_spatial_size(input_size: int) -> int:
    """Side of the last stage's map: four stride-2 3x3 convs with padding 1, each mapping n -> ceil(n/2)."""
    size = input_size
    for _ in range(4):
        size = (size + 1) // 2
    return size


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Improved residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN [+SE/CBAM] + shortcut.

    ``forward`` returns ``(output, gates)`` where ``gates`` is ``(channel_gate, spatial_gate)`` for CBAM
    blocks and ``None`` otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, mode: str = "ir") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown block mode {mode!r}; expected one of {list(MODES)}")
        self.mode = mode
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, stride)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se: SqueezeExcitation | None = (
            SqueezeExcitation(out_channels, ATTENTION_REDUCTION) if mode == "se" else None
        )
        self.cbam: CBAM | None = CBAM(out_channels, ATTENTION_REDUCTION) if mode == "cbam" else None
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        gates = None
        if self.se is not None:
            out = self.se(out)
        elif self.cbam is not None:
            out, channel_gate, spatial_gate = self.cbam(out)
            gates = (channel_gate, spatial_gate)
        return out + shortcut, gates


class IResNet(nn.Module):
    """iResNet backbone with a GAP or insightface-FC neck; see the module docstring.

    Args:
        layers: number of blocks in each of the 4 stages, e.g. ``(3, 4, 14, 3)`` for iResNet-50.
        mode: ``"ir"`` (plain), ``"se"`` (squeeze-excitation, reduction 16) or ``"cbam"``.
        neck: ``"gap"`` or ``"fc"``.
        width: channel multiplier applied to the stem and all stages (``max(1, round(c * width))``).
        embedding_size: dimension of the output embedding.
        dropout: dropout probability in the ``"fc"`` neck (ignored by ``"gap"``, which has no dropout).
        input_size: side of the square input; fixes the flattened size of the ``"fc"`` neck.
    """

    def __init__(
        self,
        layers: Sequence[int],
        mode: str = "ir",
        neck: str = "gap",
        width: float = 1.0,
        embedding_size: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be 4 positive integers (blocks per stage), got {layers!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {list(MODES)}")
        if neck not in NECKS:
            raise ValueError(f"unknown neck {neck!r}; expected one of {list(NECKS)}")
        check_size_arguments(width, embedding_size, input_size)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        self.layers = layers
        self.mode = mode
        self.neck = neck
        self.width = width
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels: tuple[int, ...] = tuple(scaled_width(c, width) for c in BASE_STAGE_CHANNELS)
        self.num_blocks = sum(layers)
        self.output_spatial_size = output_spatial_size(input_size)

        stem_channels = scaled_width(64, width)
        self.conv1 = _conv3x3(3, stem_channels)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.prelu = nn.PReLU(stem_channels)

        in_channels = stem_channels
        stages = []
        for num_blocks, out_channels in zip(layers, self.feature_channels, strict=True):
            blocks = [IBasicBlock(in_channels, out_channels, stride=2, mode=mode)]
            for _ in range(num_blocks - 1):
                blocks.append(IBasicBlock(out_channels, out_channels, stride=1, mode=mode))
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        last_channels = self.feature_channels[-1]
        if neck == "fc":
            flat_size = last_channels * self.output_spatial_size**2
            self.bn2 = nn.BatchNorm2d(last_channels)
            self.dropout = nn.Dropout(p=dropout)
            self.fc = nn.Linear(flat_size, embedding_size)
            self.features = nn.BatchNorm1d(embedding_size)
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.projection: nn.Sequential | None = None
            if last_channels != embedding_size:
                self.projection = nn.Sequential(
                    nn.Linear(last_channels, embedding_size, bias=False),
                    nn.BatchNorm1d(embedding_size),
                )
        self._initialise()

    def _initialise(self) -> None:
        """insightface init: conv weights N(0, 0.1), BN gamma 1 / beta 0; Linear keeps torch's default."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, CONV_INIT_STD)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.neck == "fc":
            # insightface's embedding BN: scale fixed at 1, only the shift is learnt.
            self.features.weight.requires_grad_(False)

    @property
    def stages(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential, nn.Sequential]:
        """The four residual stages, in order."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        features: list[torch.Tensor] = []
        attention: list[tuple[torch.Tensor, torch.Tensor]] = []
        for stage in self.stages:
            for block in stage:
                x, gates = block(x)
                if gates is not None:
                    attention.append(gates)
            features.append(x)
        return BackboneOutput(self._embed(x), tuple(features), tuple(attention))

    def _embed(self, last_stage: torch.Tensor) -> torch.Tensor:
        if self.neck == "fc":
            expected = (self.output_spatial_size, self.output_spatial_size)
            if tuple(last_stage.shape[-2:]) != expected:
                raise ValueError(
                    f"the fc neck was built for input_size={self.input_size} (last map {expected}), "
                    f"got a last map of {tuple(last_stage.shape[-2:])}; "
                    "build the model with the input_size it will be fed"
                )
            out = self.dropout(self.bn2(last_stage))
            return self.features(self.fc(torch.flatten(out, 1)))
        pooled = torch.flatten(self.pool(last_stage), 1)
        return pooled if self.projection is None else self.projection(pooled)


#: Backbones defined in other modules of this package (``mobilefacenet``), which register themselves here: they
#: import this module (`BackboneOutput`, `scaled_width`), so this factory cannot import them without a cycle.
_REGISTERED_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make :func:`create_backbone` build ``name`` with ``builder(**kwargs)`` (called by the defining module)."""
    key = name.lower()
    if key in IRESNET_LAYERS:
        raise ValueError(f"backbone name {name!r} is taken by an iResNet")
    _REGISTERED_BACKBONES[key] = builder


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return [*IRESNET_LAYERS, *_REGISTERED_BACKBONES]


def create_backbone(name: str, **kwargs: object) -> nn.Module:
    """Build a named backbone: an iResNet (``iresnet18/34/50/100``; ``kwargs`` go to :class:`IResNet`) or a
    registered one (``mobilefacenet``: `fskd.models.mobilefacenet.MobileFaceNet`)."""
    key = name.lower()
    if key in _REGISTERED_BACKBONES:
        return _REGISTERED_BACKBONES[key](**kwargs)
    if key not in IRESNET_LAYERS:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    return IResNet(IRESNET_LAYERS[key], **kwargs)  # type: ignore[arg-type]


__all__ = [
    "BackboneOutput",
    "check_size_arguments",
    "IBasicBlock",
    "IRESNET_LAYERS",
    "IResNet",
    "create_backbone",
    "list_backbones",
    "output_spatial_size",
    "register_backbone",
    "scaled_width",
]

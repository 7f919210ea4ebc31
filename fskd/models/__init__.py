"""fskd.models: iResNet backbones (with optional SE/CBAM attention) and classification/margin heads."""

from __future__ import annotations

from fskd.models.attention import CBAM, ChannelAttention, SpatialAttention, SqueezeExcitation
from fskd.models.heads import (
    AdaFace,
    ArcFace,
    ClassificationHead,
    CosFace,
    SoftmaxHead,
    create_head,
    list_heads,
)
from fskd.models.iresnet import (
    BackboneOutput,
    IBasicBlock,
    IResNet,
    create_backbone,
    list_backbones,
)

__all__ = [
    "AdaFace",
    "ArcFace",
    "BackboneOutput",
    "CBAM",
    "ChannelAttention",
    "ClassificationHead",
    "CosFace",
    "IBasicBlock",
    "IResNet",
    "SoftmaxHead",
    "SpatialAttention",
    "SqueezeExcitation",
    "create_backbone",
    "create_head",
    "list_backbones",
    "list_heads",
]

"""fskd.models: iResNet backbones (with optional SE/CBAM attention), MobileFaceNet, classification/margin heads,
and loading a trained backbone or head from a checkpoint (plain PyTorch: no Lightning import)."""

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
from fskd.models.loading import load_backbone, load_head, read_checkpoint
from fskd.models.mobilefacenet import MobileFaceNet  # also registers "mobilefacenet" with create_backbone

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
    "MobileFaceNet",
    "SoftmaxHead",
    "SpatialAttention",
    "SqueezeExcitation",
    "create_backbone",
    "create_head",
    "list_backbones",
    "list_heads",
    "load_backbone",
    "load_head",
    "read_checkpoint",
]

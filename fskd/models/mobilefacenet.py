"""MobileFaceNet in insightface's "y1" layout (``fmobilefacenet.py``; the MXNet model zoo's MobileFaceNet).

The graph, for a 112x112 input (channels at ``width=1``; ``width`` scales every channel count, for tiny test
models):

* ``conv_1``: conv 3x3/2, 64 -> BN -> PReLU (56x56);
* ``conv_2_dw``: depthwise conv 3x3 -> BN -> PReLU (56x56);  **stage 1**
* ``dconv_23``: a bottleneck without shortcut: ``conv_sep`` 1x1 expand to 128 -> BN -> PReLU, ``conv_dw``
  depthwise 3x3/2 -> BN -> PReLU, ``conv_proj`` 1x1 project to 64 -> BN (linear) (28x28);
* ``res_3``: 4 such bottlenecks (stride 1, expansion 128) with an identity shortcut;  **stage 2**
* ``dconv_34`` (expand 256, to 128, 14x14), ``res_4``: 6 bottlenecks (expand 256);  **stage 3**
* ``dconv_45`` (expand 512, to 128, 7x7), ``res_5``: 2 bottlenecks (expand 256);  **stage 4**
* ``conv_6_sep``: conv 1x1, 512 -> BN -> PReLU;
* ``conv_6_dw``: the GDC (global depthwise convolution) neck: depthwise 7x7, no padding -> BN (linear): 1x1;
* ``pre_fc1``: Linear(512 -> E, with bias) and ``fc1``: BatchNorm1d(E) whose scale is fixed at 1 (MXNet
  ``fix_gamma=True``): the embedding.

BatchNorm epsilons are the symbol's: MXNet's default 1e-3 everywhere (the symbol sets none) and 2e-5 on ``fc1``;
PReLUs are per channel. So the module computes exactly the MXNet graph once its weights are loaded
(`fskd.models.importers.mxnet`). The four stage maps F-SKD distils are the ends of the stages above: 56, 28, 14
and 7 px, with ``feature_channels`` (64, 64, 128, 128) at ``width=1``.

``create_backbone("mobilefacenet", ...)`` builds it (``mode="ir"`` and ``neck="gdc"`` are its only layouts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fskd.models.iresnet import (
    BackboneOutput,
    check_size_arguments,
    output_spatial_size,
    register_backbone,
    scaled_width,
)

#: Bottlenecks in res_3, res_4, res_5 of the y1 layout.
Y1_BLOCKS: tuple[int, int, int] = (4, 6, 2)
NECKS: tuple[str, ...] = ("gdc",)
MODES: tuple[str, ...] = ("ir",)
#: MXNet's BatchNorm default; the insightface symbol leaves every BN but the embedding's at it.
BN_EPS = 1e-3
#: The embedding BN (``fc1``) sets eps=2e-5 explicitly.
EMBEDDING_BN_EPS = 2e-5


class ConvUnit(nn.Module):
    """insightface's ``Conv``/``Linear``: conv (no bias) -> BN -> PReLU (``activation=False``: no PReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, activation: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.prelu = nn.PReLU(out_channels) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class DepthWiseUnit(nn.Module):
    """insightface's ``DResidual``: 1x1 expand -> depthwise 3x3 (stride) -> 1x1 linear projection, plus the input
    when ``residual`` (a block of ``Residual``; stride 1 and equal channels)."""

    def __init__(self, in_channels: int, out_channels: int, expanded: int, stride: int = 1,
                 residual: bool = False) -> None:
        super().__init__()
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError("a residual bottleneck needs stride 1 and as many output channels as input channels")
        self.residual = residual
        self.conv_sep = ConvUnit(in_channels, expanded)
        self.conv_dw = ConvUnit(expanded, expanded, kernel=3, stride=stride, padding=1, groups=expanded)
        self.conv_proj = ConvUnit(expanded, out_channels, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_proj(self.conv_dw(self.conv_sep(x)))
        return out + x if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet-y1 backbone returning a `BackboneOutput` (embedding and four stage maps); see the module
    docstring.

    Args:
        layers: bottlenecks in res_3, res_4, res_5 (``(4, 6, 2)``, the y1 layout).
        mode: ``"ir"`` only (no attention variants).
        neck: ``"gdc"`` only (the global depthwise convolution, MobileFaceNet's defining neck).
        width: channel multiplier (``max(1, round(c * width))``), for tiny models.
        embedding_size: dimension of the embedding (128 in insightface's models).
        dropout: must be 0: the GDC neck has no dropout.
        input_size: side of the square input; fixes the GDC kernel (7 for 112).
    """

    def __init__(
        self,
        layers: Sequence[int] = Y1_BLOCKS,
        mode: str = "ir",
        neck: str = "gdc",
        width: float = 1.0,
        embedding_size: int = 128,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        if len(layers) != 3 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"MobileFaceNet layers must be 3 positive integers (bottlenecks in res_3, res_4, "
                             f"res_5), got {layers!r}")
        if mode not in MODES:
            raise ValueError(f"MobileFaceNet has no {mode!r} variant; its only mode is 'ir'")
        if neck not in NECKS:
            raise ValueError(f"MobileFaceNet's neck is 'gdc' (global depthwise convolution), got {neck!r}")
        check_size_arguments(width, embedding_size, input_size)
        if dropout != 0.0:
            raise ValueError(f"MobileFaceNet's GDC neck has no dropout; dropout must be 0.0, got {dropout}")

        self.layers = layers
        self.mode = mode
        self.neck = neck
        self.width = width
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.num_blocks = sum(layers)
        self.output_spatial_size = output_spatial_size(input_size)

        def c(channels: int) -> int:
            return scaled_width(channels, width)

        self.feature_channels: tuple[int, ...] = (c(64), c(64), c(128), c(128))
        self.conv_1 = ConvUnit(3, c(64), kernel=3, stride=2, padding=1)
        self.conv_2_dw = ConvUnit(c(64), c(64), kernel=3, padding=1, groups=c(64))
        self.dconv_23 = DepthWiseUnit(c(64), c(64), c(128), stride=2)
        self.res_3 = self._residual(layers[0], c(64), c(128))
        self.dconv_34 = DepthWiseUnit(c(64), c(128), c(256), stride=2)
        self.res_4 = self._residual(layers[1], c(128), c(256))
        self.dconv_45 = DepthWiseUnit(c(128), c(128), c(512), stride=2)
        self.res_5 = self._residual(layers[2], c(128), c(256))
        self.conv_6_sep = ConvUnit(c(128), c(512))
        kernel = self.output_spatial_size
        self.conv_6_dw = ConvUnit(c(512), c(512), kernel=kernel, groups=c(512), activation=False)
        self.pre_fc1 = nn.Linear(c(512), embedding_size)
        self.fc1 = nn.BatchNorm1d(embedding_size, eps=EMBEDDING_BN_EPS)
        self._initialise()

    @staticmethod
    def _residual(blocks: int, channels: int, expanded: int) -> nn.Sequential:
        return nn.Sequential(*(DepthWiseUnit(channels, channels, expanded, residual=True) for _ in range(blocks)))

    def _initialise(self) -> None:
        """insightface's init: convs Gaussian with std sqrt(2 / fan_out) (MXNet Xavier "gaussian", "out", 2),
        BN scale 1 and shift 0, PReLU slopes 0.25 (torch's default too); the embedding BN's scale fixed at 1."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.fc1.weight.requires_grad_(False)  # MXNet fix_gamma=True: only the shift is learnt

    def forward(self, x: torch.Tensor) -> BackboneOutput:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        stage1 = self.conv_2_dw(self.conv_1(x))
        stage2 = self.res_3(self.dconv_23(stage1))
        stage3 = self.res_4(self.dconv_34(stage2))
        stage4 = self.res_5(self.dconv_45(stage3))
        expected = (self.output_spatial_size, self.output_spatial_size)
        if tuple(stage4.shape[-2:]) != expected:
            raise ValueError(f"the GDC neck was built for input_size={self.input_size} (last map {expected}), got a "
                             f"last map of {tuple(stage4.shape[-2:])}; build the model with the input_size it "
                             "will be fed")
        pooled = torch.flatten(self.conv_6_dw(self.conv_6_sep(stage4)), 1)
        embedding = self.fc1(self.pre_fc1(pooled))
        return BackboneOutput(embedding, (stage1, stage2, stage3, stage4), ())


register_backbone("mobilefacenet", MobileFaceNet)


__all__ = ["ConvUnit", "DepthWiseUnit", "MobileFaceNet", "Y1_BLOCKS"]

"""Tests of fskd.models.iresnet / attention: shapes, gradients, structure, parameter counts, factory."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fskd.models import (
    CBAM,
    BackboneOutput,
    IBasicBlock,
    IResNet,
    SqueezeExcitation,
    create_backbone,
    list_backbones,
)

LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
SLIM_CONFIGS = [("iresnet18", 0.25), ("iresnet34", 0.125)]
MODES = ["ir", "se", "cbam"]
NECKS = ["gap", "fc"]


def _expected_widths(width: float) -> tuple[int, int, int, int]:
    return tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("name", "width", "mode", "neck"),
    [(n, w, m, k) for (n, w), m, k in itertools.product(SLIM_CONFIGS, MODES, NECKS)],
)
def test_forward_shapes_and_gradients(name: str, width: float, mode: str, neck: str) -> None:
    model = create_backbone(name, mode=mode, neck=neck, width=width, embedding_size=32)
    x = torch.randn(2, 3, 112, 112)
    out = model(x)
    assert isinstance(out, BackboneOutput)

    c1, c2, c3, c4 = _expected_widths(width)
    assert model.feature_channels == (c1, c2, c3, c4)
    assert [tuple(f.shape) for f in out.features] == [
        (2, c1, 56, 56),
        (2, c2, 28, 28),
        (2, c3, 14, 14),
        (2, c4, 7, 7),
    ]
    assert out.embedding.shape == (2, 32)
    assert model.num_blocks == sum(LAYERS[name])

    if mode == "cbam":
        assert len(out.attention) == model.num_blocks
        block_shapes = []
        for blocks, channels, side in zip(LAYERS[name], (c1, c2, c3, c4), (56, 28, 14, 7), strict=True):
            block_shapes += [((2, channels), (2, 1, side, side))] * blocks
        assert [(tuple(c.shape), tuple(s.shape)) for c, s in out.attention] == block_shapes
        for channel_gate, spatial_gate in out.attention:
            assert 0 < channel_gate.min() and channel_gate.max() < 1
            assert 0 < spatial_gate.min() and spatial_gate.max() < 1
    else:
        assert out.attention == ()

    # Random fixed projections so that no parameter gets an exactly-zero gradient by symmetry
    # (e.g. the bias of a final BN under a plain sum/mean loss).
    generator = torch.Generator().manual_seed(1)
    loss = (out.embedding * torch.randn(out.embedding.shape, generator=generator)).sum()
    for feature in out.features:
        loss = loss + (feature * torch.randn(feature.shape, generator=generator)).mean()
    loss.backward()
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        # a 1-unit attention bottleneck (slim widths) can legitimately sit on a dead ReLU
        if ".se." not in param_name and "channel_attention.mlp" not in param_name:
            assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


def test_only_the_fc_neck_embedding_bn_scale_is_frozen() -> None:
    fc_model = create_backbone("iresnet18", neck="fc", width=0.125, embedding_size=16)
    frozen = [n for n, p in fc_model.named_parameters() if not p.requires_grad]
    assert frozen == ["features.weight"]
    assert torch.equal(fc_model.features.weight, torch.ones(16))
    gap_model = create_backbone("iresnet18", neck="gap", width=0.125, embedding_size=16)
    assert all(p.requires_grad for p in gap_model.parameters())


def test_gap_neck_is_plain_average_pool_when_widths_match() -> None:
    model = create_backbone("iresnet18", width=0.125, embedding_size=64)  # last stage width 64
    assert model.projection is None
    assert not any(name.startswith(("fc", "features", "projection")) for name, _ in model.named_parameters())
    out = model(torch.randn(2, 3, 112, 112))
    torch.testing.assert_close(out.embedding, out.features[-1].mean(dim=(2, 3)), rtol=0, atol=0)


def test_gap_neck_projects_when_widths_differ() -> None:
    model = create_backbone("iresnet18", width=0.125, embedding_size=24).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 112, 112))
        linear, bn = model.projection
        assert linear.bias is None
        pooled = out.features[-1].mean(dim=(2, 3))
        expected = (pooled @ linear.weight.T - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        expected = expected * bn.weight + bn.bias
    torch.testing.assert_close(out.embedding, expected, rtol=1e-5, atol=1e-5)


def test_fc_neck_matches_manual_computation_in_eval() -> None:
    model = create_backbone("iresnet18", neck="fc", width=0.125, embedding_size=20, dropout=0.3)
    # give the BNs non-trivial running statistics and affine parameters first
    with torch.no_grad():
        for bn in (model.bn2, model.features):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
        model.bn2.weight.uniform_(0.5, 1.5)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
        last = out.features[-1]
        bn2 = model.bn2
        std = torch.sqrt(bn2.running_var[:, None, None] + bn2.eps)
        normed = (last - bn2.running_mean[:, None, None]) / std
        normed = normed * bn2.weight[:, None, None] + bn2.bias[:, None, None]
        projected = normed.flatten(1) @ model.fc.weight.T + model.fc.bias
        feat = model.features
        expected = (projected - feat.running_mean) / torch.sqrt(feat.running_var + feat.eps) + feat.bias
    assert model.fc.in_features == 64 * 7 * 7
    torch.testing.assert_close(out.embedding, expected, rtol=1e-4, atol=1e-4)


def test_fc_neck_dropout_is_active_only_in_training() -> None:
    model = create_backbone("iresnet18", neck="fc", width=0.125, embedding_size=8, dropout=0.5)
    assert model.dropout.p == 0.5
    x = torch.randn(2, 3, 112, 112)
    model.train()
    first, second = model(x).embedding, model(x).embedding
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(x).embedding, model(x).embedding, rtol=0, atol=0)


def _manual_block(block: IBasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = block.conv2(block.prelu(block.bn2(block.conv1(block.bn1(x)))))
    return block.bn3(out)


@pytest.mark.parametrize(("in_channels", "out_channels", "stride"), [(8, 16, 2), (16, 16, 1)])
def test_ir_block_matches_its_definition(in_channels: int, out_channels: int, stride: int) -> None:
    block = IBasicBlock(in_channels, out_channels, stride=stride).eval()
    assert (block.downsample is None) == (stride == 1 and in_channels == out_channels)
    x = torch.randn(2, in_channels, 12, 12)
    with torch.no_grad():
        out, gates = block(x)
        shortcut = x if block.downsample is None else block.downsample[1](block.downsample[0](x))
        expected = _manual_block(block, x) + shortcut
    assert gates is None
    assert out.shape == (2, out_channels, 12 // stride, 12 // stride)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_se_block_gates_the_last_bn_output_before_the_add() -> None:
    block = IBasicBlock(32, 32, stride=1, mode="se").eval()
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        out, gates = block(x)
        residual = _manual_block(block, x)
        se = block.se
        hidden = F.relu(residual.mean(dim=(2, 3)) @ se.fc1.weight[:, :, 0, 0].T)
        gate = torch.sigmoid(hidden @ se.fc2.weight[:, :, 0, 0].T)
    assert se.fc1.out_channels == 2  # 32 // 16
    assert gates is None
    torch.testing.assert_close(out, residual * gate[:, :, None, None] + x, rtol=1e-5, atol=1e-6)


def test_cbam_module_matches_hand_computation() -> None:
    cbam = CBAM(32).eval()
    with torch.no_grad():
        cbam.spatial_attention.bn.running_mean.fill_(0.2)
        cbam.spatial_attention.bn.running_var.fill_(1.5)
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        out, channel_gate, spatial_gate = cbam(x)
        mlp = cbam.channel_attention.mlp
        lin1, lin2 = mlp[0], mlp[2]

        def shared_mlp(v: torch.Tensor) -> torch.Tensor:
            return F.relu(v @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias

        expected_channel = torch.sigmoid(shared_mlp(x.mean(dim=(2, 3))) + shared_mlp(x.amax(dim=(2, 3))))
        gated = x * expected_channel[:, :, None, None]
        pooled = torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], dim=1)
        conv = cbam.spatial_attention.conv
        bn = cbam.spatial_attention.bn
        assert conv.kernel_size == (7, 7) and conv.bias is None
        logit = F.conv2d(pooled, conv.weight, padding=3)
        logit = (logit - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expected_spatial = torch.sigmoid(logit)
    assert lin1.out_features == 2
    torch.testing.assert_close(channel_gate, expected_channel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spatial_gate, expected_spatial, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, gated * expected_spatial, rtol=1e-5, atol=1e-6)


def test_cbam_block_reports_the_gates_it_applied() -> None:
    block = IBasicBlock(16, 16, mode="cbam").eval()
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        out, (channel_gate, spatial_gate) = block(x)
        expected = _manual_block(block, x) * channel_gate[:, :, None, None] * spatial_gate + x
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_attention_bottleneck_never_drops_below_one_channel() -> None:
    assert SqueezeExcitation(8).fc1.out_channels == 1
    assert CBAM(4).channel_attention.mlp[0].out_features == 1
    model = create_backbone("iresnet18", mode="cbam", width=0.0625)  # stage widths 4, 8, 16, 32
    assert model.layer1[0].cbam.channel_attention.mlp[0].out_features == 1


def _analytic_parameter_count(layers: tuple[int, ...], neck: str, embedding: int = 512) -> int:
    """Parameter count of the architecture as described in the docs, computed by hand."""

    def bn(c: int) -> int:
        return 2 * c

    total = 3 * 9 * 64 + bn(64) + 64  # stem conv, BN, PReLU
    in_c = 64
    for blocks, out_c in zip(layers, (64, 128, 256, 512), strict=True):
        for index in range(blocks):
            cin = in_c if index == 0 else out_c
            total += bn(cin) + 9 * cin * out_c + bn(out_c) + out_c + 9 * out_c * out_c + bn(out_c)
            if index == 0:
                total += cin * out_c + bn(out_c)  # 1x1 stride-2 shortcut
        in_c = out_c
    if neck == "fc":
        total += bn(512) + 512 * 49 * embedding + embedding + bn(embedding)
    return total


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50", "iresnet100"])
@pytest.mark.parametrize("neck", NECKS)
def test_parameter_counts_match_hand_count(name: str, neck: str) -> None:
    with torch.device("meta"):
        model = create_backbone(name, neck=neck)
    count = sum(p.numel() for p in model.parameters())
    assert count == _analytic_parameter_count(LAYERS[name], neck)


def test_parameter_counts_match_insightface() -> None:
    with torch.device("meta"):
        r50 = create_backbone("iresnet50", neck="fc")
        r100 = create_backbone("iresnet100", neck="fc")
    r50_count = sum(p.numel() for p in r50.parameters())
    r100_count = sum(p.numel() for p in r100.parameters())
    # insightface's iresnet50 / iresnet100 (all parameters, the frozen embedding-BN scale included)
    assert r50_count == 43_590_848
    assert abs(r50_count - 43.6e6) / 43.6e6 < 1e-3
    assert r100_count == 65_156_160
    assert abs(r100_count - 65.2e6) / 65.2e6 < 1e-3


def test_state_dict_uses_insightface_names() -> None:
    with torch.device("meta"):
        model = create_backbone("iresnet50", neck="fc")
    keys = set(model.state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.bias",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer3.13.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.bias",
    ]:
        assert key in keys, key
    assert "layer1.1.downsample.0.weight" not in keys
    assert "layer3.14.conv1.weight" not in keys


def test_initialisation_follows_insightface() -> None:
    model = create_backbone("iresnet18", mode="cbam", width=0.5)
    big_conv = model.layer4[1].conv2.weight  # 256*256*9 values
    assert abs(big_conv.mean().item()) < 0.002
    assert abs(big_conv.std().item() - 0.1) < 0.002
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))


@pytest.mark.parametrize(
    ("width", "expected"), [(1.0, (64, 128, 256, 512)), (0.3, (19, 38, 77, 154)), (0.001, (1, 1, 1, 1))]
)
def test_width_multiplier_rounds_and_stays_positive(width: float, expected: tuple[int, ...]) -> None:
    with torch.device("meta"):
        model = create_backbone("iresnet18", width=width)
    assert model.feature_channels == expected
    assert model.conv1.out_channels == max(1, round(64 * width))
    assert [stage[-1].conv2.out_channels for stage in model.stages] == list(expected)


def test_eval_mode_is_deterministic_and_batch_independent() -> None:
    model = create_backbone("iresnet18", mode="cbam", neck="fc", width=0.125, embedding_size=16).eval()
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        first = model(x)
        second = model(x)
        single = model(x[:1])
    torch.testing.assert_close(first.embedding, second.embedding, rtol=0, atol=0)
    for a, b in zip(first.features, second.features, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(single.embedding, first.embedding[:1], rtol=1e-4, atol=1e-5)


def test_other_input_sizes() -> None:
    gap_model = create_backbone("iresnet18", width=0.125, embedding_size=64)
    out = gap_model(torch.randn(2, 3, 96, 96))
    assert [f.shape[-1] for f in out.features] == [48, 24, 12, 6]
    fc_model = create_backbone("iresnet18", neck="fc", width=0.125, embedding_size=8, input_size=96)
    assert fc_model.fc.in_features == 64 * 6 * 6
    assert fc_model(torch.randn(2, 3, 96, 96)).embedding.shape == (2, 8)
    with pytest.raises(ValueError, match="input_size=96"):
        fc_model(torch.randn(2, 3, 112, 112))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        gap_model(torch.randn(2, 1, 112, 112))


def test_factory_and_argument_errors() -> None:
    assert list_backbones() == ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"]
    assert create_backbone("IResNet18", width=0.125).layers == (2, 2, 2, 2)
    known = "iresnet18, iresnet34, iresnet50, iresnet100"
    with pytest.raises(ValueError, match=rf"unknown backbone 'resnet50'.*{known}"):
        create_backbone("resnet50")
    with pytest.raises(ValueError, match="unknown mode 'bam'"):
        IResNet([2, 2, 2, 2], mode="bam")
    with pytest.raises(ValueError, match="unknown neck 'pool'"):
        IResNet([2, 2, 2, 2], neck="pool")
    with pytest.raises(ValueError, match="layers must be 4 positive integers"):
        IResNet([2, 2, 2])
    with pytest.raises(ValueError, match="layers must be 4 positive integers"):
        IResNet([2, 0, 2, 2])
    with pytest.raises(ValueError, match="width must be > 0"):
        IResNet([2, 2, 2, 2], width=0.0)
    with pytest.raises(ValueError, match="dropout"):
        IResNet([2, 2, 2, 2], dropout=1.0)


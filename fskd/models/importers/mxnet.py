"""Importing insightface's MXNet face recognisers (``PREFIX-symbol.json`` + ``PREFIX-EPOCH.params``), no mxnet needed.

Two layouts are recognised from the symbol:

* **MobileFaceNet-y1** (`fskd.models.mobilefacenet.MobileFaceNet`, neck ``"gdc"``): a graph with depthwise
  convolutions;
* **LResNet-IR** (insightface ``fresnet.py``, ``version_unit=3``, output ``E``: r18/34/50/100) onto
  `fskd.models.iresnet.IResNet` with neck ``"fc"``: nodes named ``stage{i}_unit{j}_*``.

The fskd module is built first (width, embedding size and depth read from the symbol), then the symbol's nodes are
walked in file order (mxnet writes them in topological order) against the computation the module performs: every
convolution, BatchNorm, PReLU, residual addition and fully-connected node must be the next one the module expects,
with the same attributes (kernel, stride, padding, groups, bias, filters, BN eps/``fix_gamma``, activation) and
with its data input(s) coming from the node(s) the module expects. ``Dropout`` (inference: identity) and
``Flatten`` pass their input through. The first node that is of an unsupported op, or that differs from the
expected layout, stops the import with a ValueError naming it. Nodes after the embedding (a training head:
``fc7``, softmax) are not read.

Parameters are taken from the node's inputs (``arg:NAME`` / ``aux:NAME`` in the ``.params``, read by the
pure-Python `fskd.data.mxnet_params`), shape-checked and copied: MXNet's layouts are PyTorch's (conv weights
``(O, I/groups, kH, kW)``, FC ``(out, in)`` with inputs flattened in NCHW order, PReLU slopes per channel).
``fix_gamma=True`` means a BN scale of 1, whatever the file stores; a BN whose eps differs from the fskd module's is
matched exactly by moving the difference into its running variance (``var + eps_mxnet - eps_fskd``).

**Input convention.** The graph computes ``(x - 127.5) * 0.0078125`` on 0..255 RGB, i.e. fskd's input
``(x/255 - 0.5)/0.5`` times ``127.5 * 0.0078125 = 0.99609375``. That factor multiplies the first convolution's
weights (it has no bias; its zero padding is zero in both conventions), so the module takes fskd's input and gives
the original graph's embedding. A graph whose normalisation is not ``(x - 127.5) * s`` is refused: a non-zero
mean cannot be folded exactly into a zero-padded convolution.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fskd.data.errors import DataFormatError
from fskd.data.mxnet_params import load_params
from fskd.models.iresnet import IRESNET_LAYERS, IResNet
from fskd.models.loading import backbone_from_architecture
from fskd.models.mobilefacenet import Y1_BLOCKS, ConvUnit, DepthWiseUnit, MobileFaceNet

#: fskd's input is (x/255 - 0.5)/0.5 = (x - 127.5)/127.5 for 0..255 pixels.
FSKD_PIXEL_MEAN = 127.5
FSKD_PIXEL_SCALE = 127.5
#: Ops the importer understands; any other op stops it (naming the node).
SUPPORTED_OPS = ("null", "_minus_scalar", "_mul_scalar", "_div_scalar", "Convolution", "BatchNorm", "LeakyReLU",
                 "elemwise_add", "_Plus", "_plus", "FullyConnected", "Dropout", "Flatten")
ADD_OPS = ("elemwise_add", "_Plus", "_plus")
PASS_THROUGH_OPS = ("Dropout", "Flatten")
MXNET_BN_EPS = 1e-3  # mxnet's BatchNorm default, for nodes that set none
_UNIT_NAME = re.compile(r"^stage(\d+)_unit(\d+)_")
_INPUT_STEP = -1  # the normalised image, as a step index
_TUPLE = re.compile(r"\s*[(\[]?\s*(?:-?\d+\s*(?:,\s*-?\d+\s*)*,?\s*)?[)\]]?\s*")


@dataclass(frozen=True)
class Step:
    """One node the fskd module expects: its kind, the module that holds its parameters, the steps feeding it."""

    kind: str  # "conv", "bn", "prelu", "add", "fc"
    module: nn.Module | None
    inputs: tuple[int, ...]
    label: str  # where it lives in the fskd module, for messages


class _Plan:
    """Builds the expected step list of a module."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, kind: str, module: nn.Module | None, inputs: tuple[int, ...], label: str) -> int:
        self.steps.append(Step(kind, module, inputs, label))
        return len(self.steps) - 1

    def conv_unit(self, unit: ConvUnit, source: int, label: str) -> int:
        x = self.add("conv", unit.conv, (source,), f"{label}.conv")
        x = self.add("bn", unit.bn, (x,), f"{label}.bn")
        return x if unit.prelu is None else self.add("prelu", unit.prelu, (x,), f"{label}.prelu")

    def depthwise_unit(self, unit: DepthWiseUnit, source: int, label: str) -> int:
        x = self.conv_unit(unit.conv_sep, source, f"{label}.conv_sep")
        x = self.conv_unit(unit.conv_dw, x, f"{label}.conv_dw")
        x = self.conv_unit(unit.conv_proj, x, f"{label}.conv_proj")
        return self.add("add", None, (x, source), f"{label} (residual add)") if unit.residual else x


def mobilefacenet_plan(model: MobileFaceNet) -> list[Step]:
    """The nodes, in order, of insightface's MobileFaceNet symbol that ``model`` computes."""
    plan = _Plan()
    x = plan.conv_unit(model.conv_1, _INPUT_STEP, "conv_1")
    x = plan.conv_unit(model.conv_2_dw, x, "conv_2_dw")
    for name in ("dconv_23", "res_3", "dconv_34", "res_4", "dconv_45", "res_5"):
        part = getattr(model, name)
        for index, unit in enumerate(part if isinstance(part, nn.Sequential) else [part]):
            x = plan.depthwise_unit(unit, x, f"{name}.{index}" if isinstance(part, nn.Sequential) else name)
    x = plan.conv_unit(model.conv_6_sep, x, "conv_6_sep")
    x = plan.conv_unit(model.conv_6_dw, x, "conv_6_dw")
    x = plan.add("fc", model.pre_fc1, (x,), "pre_fc1")
    plan.add("bn", model.fc1, (x,), "fc1")
    return plan.steps


def iresnet_plan(model: IResNet) -> list[Step]:
    """The nodes, in order, of insightface's LResNet-IR symbol (fresnet unit v3, output E) that ``model`` computes."""
    if model.mode != "ir" or model.neck != "fc":
        raise ValueError("only the plain IR iResNet with the 'fc' neck has an MXNet counterpart here")
    plan = _Plan()
    x = plan.add("conv", model.conv1, (_INPUT_STEP,), "conv1")
    x = plan.add("bn", model.bn1, (x,), "bn1")
    x = plan.add("prelu", model.prelu, (x,), "prelu")
    for stage_index, stage in enumerate(model.stages, start=1):
        for block_index, block in enumerate(stage):
            label = f"layer{stage_index}.{block_index}"
            y = plan.add("bn", block.bn1, (x,), f"{label}.bn1")
            y = plan.add("conv", block.conv1, (y,), f"{label}.conv1")
            y = plan.add("bn", block.bn2, (y,), f"{label}.bn2")
            y = plan.add("prelu", block.prelu, (y,), f"{label}.prelu")
            y = plan.add("conv", block.conv2, (y,), f"{label}.conv2")
            y = plan.add("bn", block.bn3, (y,), f"{label}.bn3")
            shortcut = x
            if block.downsample is not None:
                shortcut = plan.add("conv", block.downsample[0], (x,), f"{label}.downsample.0")
                shortcut = plan.add("bn", block.downsample[1], (shortcut,), f"{label}.downsample.1")
            x = plan.add("add", None, (y, shortcut), f"{label} (residual add)")
    x = plan.add("bn", model.bn2, (x,), "bn2")
    x = plan.add("fc", model.fc, (x,), "fc")
    plan.add("bn", model.features, (x,), "features")
    return plan.steps


# -- the symbol ---------------------------------------------------------------------------------------------------
def _attrs(node: dict[str, Any]) -> dict[str, str]:
    # mxnet >= 1.0 writes "attrs"; older symbols "attr" or "param"
    for key in ("attrs", "attr", "param"):
        value = node.get(key)
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
    return {}


def read_symbol(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The nodes of an MXNet symbol JSON file, checked to be a well-formed graph (inputs name earlier nodes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MXNet symbol file not found")
    try:
        symbol = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFormatError(path, f"not an MXNet symbol JSON file ({error})") from None
    nodes = symbol.get("nodes") if isinstance(symbol, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise DataFormatError(path, "not an MXNet symbol JSON file (no 'nodes' list)")
    for index, node in enumerate(nodes):
        if not (isinstance(node, dict) and isinstance(node.get("op"), str) and isinstance(node.get("name"), str)
                and isinstance(node.get("inputs"), list)):
            raise DataFormatError(path, f"node {index} is not an {{op, name, inputs}} object")
        for entry in node["inputs"]:
            if not (isinstance(entry, list) and len(entry) >= 2 and all(isinstance(v, int) for v in entry)
                    and 0 <= entry[0] < index):
                raise DataFormatError(path, f"node {index} {node['name']!r}: input {entry!r} is not an earlier node")
        node["attrs"] = _attrs(node)
    return nodes


class UnreadableAttribute(ValueError):
    """A node attribute that does not parse; the walk re-raises it naming the node."""


def _value(attrs: dict[str, str], key: str, default: Any, parse: Callable[[str], Any], kind: str) -> Any:
    value = attrs.get(key)
    if value is None:
        return default
    try:
        return parse(value)
    except (ValueError, TypeError, OverflowError):
        raise UnreadableAttribute(f"attribute {key}={value[:40]!r} is not {kind}") from None


def _parse_tuple(value: str) -> tuple[int, ...]:
    # commas are required between numbers, so the pattern cannot backtrack badly on a long hostile string
    if not _TUPLE.fullmatch(value):
        raise ValueError(value)
    numbers = tuple(int(v) for v in re.findall(r"-?\d+", value))
    return numbers * 2 if len(numbers) == 1 else numbers  # "3" means (3, 3) for a 2-D operator


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise ValueError(value)
    return lowered in ("true", "1")


def _parse_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _tuple(attrs: dict[str, str], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    return _value(attrs, key, default, _parse_tuple, "a tuple of integers") or default


def _bool(attrs: dict[str, str], key: str, default: bool) -> bool:
    return _value(attrs, key, default, _parse_bool, "a boolean")


def _float(attrs: dict[str, str], key: str, default: float) -> float:
    return _value(attrs, key, default, _parse_float, "a finite number")


def _int(attrs: dict[str, str], key: str, default: int) -> int:
    return _value(attrs, key, default, int, "an integer")


def _describe(index: int, node: dict[str, Any]) -> str:
    return f"node {index} {node['name']!r} ({node['op']})"


# -- the walk -----------------------------------------------------------------------------------------------------
class _Importer:
    def __init__(self, nodes: list[dict[str, Any]], params: dict[str, np.ndarray], symbol_path: Path,
                 params_path: Path, what: str) -> None:
        self.nodes = nodes
        self.params = params
        self.symbol_path = symbol_path
        self.params_path = params_path
        self.what = what
        self.used: set[str] = set()

    def fail(self, index: int, message: str) -> ValueError:
        return ValueError(f"{self.symbol_path}: {_describe(index, self.nodes[index])}: {message}")

    def param(self, index: int, position: int, kind: str, shape: torch.Size) -> torch.Tensor:
        """The array feeding input ``position`` of node ``index`` (an ``arg:``/``aux:`` parameter)."""
        node = self.nodes[index]
        if position >= len(node["inputs"]):
            raise self.fail(index, f"has no input {position} ({kind})")
        source = self.nodes[node["inputs"][position][0]]
        if source["op"] != "null":
            raise self.fail(index, f"its {kind} is computed by node {source['name']!r}, not a stored parameter")
        for prefix in ("arg:", "aux:"):
            key = prefix + source["name"]
            if key in self.params:
                array = self.params[key]
                break
        else:
            raise ValueError(f"{self.params_path}: no parameter {source['name']!r} ({kind} of "
                             f"{_describe(index, node)})")
        if tuple(array.shape) != tuple(shape):
            raise self.fail(index, f"{kind} {source['name']!r} has shape {tuple(array.shape)}, the fskd {self.what} "
                                   f"expects {tuple(shape)}")
        self.used.add(key)
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def preprocessing(self, data_index: int, index: int) -> tuple[float, float, int]:
        """Follow the scalar ops after the data node: the graph's input is ``scale * x + shift``."""
        scale, shift, value = 1.0, 0.0, data_index
        while index < len(self.nodes):
            node = self.nodes[index]
            if node["op"] == "null":
                index += 1
                continue
            if node["op"] not in ("_minus_scalar", "_mul_scalar", "_div_scalar") or not node["inputs"] or \
                    node["inputs"][0][0] != value:
                break
            try:
                scalar = _float(node["attrs"], "scalar", math.nan)
            except UnreadableAttribute as error:
                raise self.fail(index, str(error)) from None
            if node["op"] == "_div_scalar" and scalar == 0:
                raise self.fail(index, "divides the input by 0")
            if node["op"] == "_minus_scalar":
                shift -= scalar
            elif node["op"] == "_mul_scalar":
                scale, shift = scale * scalar, shift * scalar
            else:
                scale, shift = scale / scalar, shift / scalar
            value = index
            index += 1
        return scale, shift, value

    def run(self, steps: list[Step]) -> dict[str, Any]:
        data_index = next((i for i, n in enumerate(self.nodes) if n["op"] == "null"
                           and "arg:" + n["name"] not in self.params and "aux:" + n["name"] not in self.params), None)
        if data_index is None:
            raise ValueError(f"{self.symbol_path}: no input node (every variable is a stored parameter)")
        scale, shift, image = self.preprocessing(data_index, data_index + 1)
        # the graph input is scale * x + shift on 0..255 pixels; foldable iff it is scale * (x - 127.5)
        if not (math.isfinite(scale) and scale > 0 and abs(shift + FSKD_PIXEL_MEAN * scale) <= 1e-9 * scale):
            raise ValueError(f"{self.symbol_path}: the graph normalises its input to {scale:g} * x + {shift:g}, not "
                             f"(x - {FSKD_PIXEL_MEAN}) * s: its input convention cannot be folded exactly into the "
                             "first convolution")
        value_of: dict[int, int] = {image: _INPUT_STEP}  # graph node -> step whose output it is
        step_index = 0
        last_node = image
        for index in range(image + 1, len(self.nodes)):
            if step_index == len(steps):
                break
            node = self.nodes[index]
            op = node["op"]
            if op == "null":
                continue
            if op not in SUPPORTED_OPS:
                raise self.fail(index, f"unsupported op {op!r} (supported: {', '.join(SUPPORTED_OPS[1:])})")
            data = [entry[0] for entry in node["inputs"] if self.nodes[entry[0]]["op"] != "null"]
            if any(entry[1] != 0 for entry in node["inputs"] if self.nodes[entry[0]]["op"] != "null"):
                raise self.fail(index, "reads a secondary output of another node")
            if op in PASS_THROUGH_OPS:
                if op == "Dropout" and node["attrs"].get("mode", "training") == "always":
                    raise self.fail(index, "Dropout with mode='always' is active at inference")
                if len(data) != 1 or data[0] not in value_of:
                    raise self.fail(index, "its input is not a node of the expected layout")
                value_of[index] = value_of[data[0]]
                continue
            step = steps[step_index]
            kind = {"Convolution": "conv", "BatchNorm": "bn", "LeakyReLU": "prelu", "FullyConnected": "fc"}.get(
                op, "add" if op in ADD_OPS else op)
            if kind != step.kind:
                raise self.fail(index, f"the fskd {self.what} expects a {step.kind} node here ({step.label})")
            sources = [value_of.get(i) for i in data]
            if (sorted(s for s in sources if s is not None) != sorted(step.inputs) or None in sources
                    or len(sources) != len(step.inputs)):
                raise self.fail(index, f"its input(s) {[self.nodes[i]['name'] for i in data]} are not those of "
                                       f"{step.label} in the fskd {self.what}")
            try:
                getattr(self, f"load_{kind}")(index, step)
            except UnreadableAttribute as error:
                raise self.fail(index, str(error)) from None
            value_of[index] = step_index
            step_index += 1
            last_node = index
        if step_index < len(steps):
            raise ValueError(f"{self.symbol_path}: the graph ends before {steps[step_index].label} of the fskd "
                             f"{self.what}")
        return {"scale": scale, "output": self.nodes[last_node]["name"]}

    def check(self, index: int, name: str, actual: object, expected: object, step: Step) -> None:
        if actual != expected:
            raise self.fail(index, f"{name}={actual}, but {step.label} of the fskd {self.what} has {expected}")

    def load_conv(self, index: int, step: Step) -> None:
        conv = step.module
        assert isinstance(conv, nn.Conv2d)
        attrs = self.nodes[index]["attrs"]
        self.check(index, "kernel", _tuple(attrs, "kernel", ()), tuple(conv.kernel_size), step)
        self.check(index, "stride", _tuple(attrs, "stride", (1, 1)), tuple(conv.stride), step)
        self.check(index, "pad", _tuple(attrs, "pad", (0, 0)), tuple(conv.padding), step)
        self.check(index, "dilate", _tuple(attrs, "dilate", (1, 1)), tuple(conv.dilation), step)
        self.check(index, "num_filter", _int(attrs, "num_filter", -1), conv.out_channels, step)
        self.check(index, "num_group", _int(attrs, "num_group", 1), conv.groups, step)
        self.check(index, "no_bias", _bool(attrs, "no_bias", False), conv.bias is None, step)
        self.check(index, "layout", attrs.get("layout", "NCHW"), "NCHW", step)
        with torch.no_grad():
            conv.weight.copy_(self.param(index, 1, "weight", conv.weight.shape))

    def load_bn(self, index: int, step: Step) -> None:
        bn = step.module
        assert isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d)
        attrs = self.nodes[index]["attrs"]
        self.check(index, "axis", _int(attrs, "axis", 1), 1, step)
        eps = _float(attrs, "eps", MXNET_BN_EPS)
        shape = bn.running_mean.shape
        gamma = self.param(index, 1, "gamma", shape)
        beta = self.param(index, 2, "beta", shape)
        mean = self.param(index, 3, "moving_mean", shape)
        var = self.param(index, 4, "moving_var", shape)
        with torch.no_grad():
            # fix_gamma (mxnet's default): the scale is 1 whatever the file holds
            bn.weight.copy_(torch.ones_like(gamma) if _bool(attrs, "fix_gamma", True) else gamma)
            bn.bias.copy_(beta)
            bn.running_mean.copy_(mean)
            # same normalisation with the module's eps: var + eps_mxnet = var' + eps_module (exact when equal)
            bn.running_var.copy_((var.double() + (eps - bn.eps)).float())

    def load_prelu(self, index: int, step: Step) -> None:
        prelu = step.module
        assert isinstance(prelu, nn.PReLU)
        self.check(index, "act_type", self.nodes[index]["attrs"].get("act_type", "leaky"), "prelu", step)
        with torch.no_grad():
            prelu.weight.copy_(self.param(index, 1, "gamma", prelu.weight.shape))

    def load_add(self, index: int, step: Step) -> None:
        """A residual addition has no parameters; its inputs were checked by the walk."""

    def load_fc(self, index: int, step: Step) -> None:
        fc = step.module
        assert isinstance(fc, nn.Linear)
        attrs = self.nodes[index]["attrs"]
        self.check(index, "num_hidden", _int(attrs, "num_hidden", -1), fc.out_features, step)
        self.check(index, "flatten", _bool(attrs, "flatten", True), True, step)
        with torch.no_grad():
            fc.weight.copy_(self.param(index, 1, "weight", fc.weight.shape))
            if _bool(attrs, "no_bias", False):
                fc.bias.zero_()
            else:
                fc.bias.copy_(self.param(index, 2, "bias", fc.bias.shape))


# -- recognising the layout ---------------------------------------------------------------------------------------
def _first(nodes: list[dict[str, Any]], predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    return next((node for node in nodes if predicate(node)), None)


def _embedding_size(nodes: list[dict[str, Any]], path: Path) -> int:
    fc = _first(nodes, lambda n: n["op"] == "FullyConnected")
    if fc is None:
        raise ValueError(f"{path}: no FullyConnected node: no embedding layer")
    return _int(fc["attrs"], "num_hidden", 0)


def _stem_width(nodes: list[dict[str, Any]], path: Path) -> float:
    conv = _first(nodes, lambda n: n["op"] == "Convolution")
    if conv is None:
        raise ValueError(f"{path}: no Convolution node")
    return _int(conv["attrs"], "num_filter", 0) / 64


def _mobilefacenet_architecture(nodes: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    # the depth is fskd's y1 layout; a graph with other block counts fails the walk at its first differing node
    return {"backbone": "mobilefacenet", "mode": "ir", "neck": "gdc", "width": _stem_width(nodes, path),
            "embedding_size": _embedding_size(nodes, path), "dropout": 0.0}


def _iresnet_architecture(nodes: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    blocks: dict[int, int] = {}
    for node in nodes:
        match = _UNIT_NAME.match(node["name"])
        if match:
            stage, unit = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), unit)
    layers = tuple(blocks.get(stage, 0) for stage in range(1, 5))
    names = {layers: name for name, layers in IRESNET_LAYERS.items()}
    if len(blocks) != 4 or layers not in names:
        raise ValueError(f"{path}: units per stage {layers} match no iResNet "
                         f"({', '.join(f'{n} {list(k)}' for k, n in names.items())})")
    dropout = _first(nodes, lambda n: n["op"] == "Dropout")
    return {"backbone": names[layers], "mode": "ir", "neck": "fc", "width": _stem_width(nodes, path),
            "embedding_size": _embedding_size(nodes, path),
            "dropout": _float(dropout["attrs"], "p", 0.5) if dropout else 0.0}


def _architecture(nodes: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    if any(n["op"] == "Convolution" and _int(n["attrs"], "num_group", 1) > 1 for n in nodes):
        return _mobilefacenet_architecture(nodes, path)
    if any(_UNIT_NAME.match(n["name"]) for n in nodes):
        return _iresnet_architecture(nodes, path)
    unsupported = next(((i, n) for i, n in enumerate(nodes) if n["op"] not in SUPPORTED_OPS), None)
    detail = "" if unsupported is None else (f"; the first unsupported node is {_describe(*unsupported)}")
    raise ValueError(f"{path}: neither a MobileFaceNet (depthwise convolutions) nor an LResNet-IR "
                     f"(stage{{i}}_unit{{j}}_* nodes){detail}")


def import_mxnet(prefix: str, epoch: int = 0) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Import ``PREFIX-symbol.json`` + ``PREFIX-%04d.params`` (``epoch``) as an fskd backbone (eval mode).

    Returns ``(backbone, architecture, source)`` for `fskd.models.loading.imported_checkpoint`: the architecture
    keys `fskd.models.load_backbone` rebuilds it from, and where it came from with the input convention folded
    into its first convolution.
    """
    symbol_path = Path(f"{prefix}-symbol.json")
    params_path = Path(f"{prefix}-{epoch:04d}.params")
    nodes = read_symbol(symbol_path)
    try:
        architecture = _architecture(nodes, symbol_path)
        backbone = backbone_from_architecture(architecture)
    except UnreadableAttribute as error:
        raise ValueError(f"{symbol_path}: {error}") from None
    except ValueError as error:  # an architecture fskd cannot build (e.g. zero filters)
        message = str(error)
        raise ValueError(message if message.startswith(str(symbol_path)) else f"{symbol_path}: {message}") from None
    params = load_params(params_path)
    if isinstance(backbone, MobileFaceNet):
        steps, what = mobilefacenet_plan(backbone), f"MobileFaceNet-y1 {Y1_BLOCKS}"
    else:
        assert isinstance(backbone, IResNet)
        steps, what = iresnet_plan(backbone), architecture["backbone"]
    importer = _Importer(nodes, params, symbol_path, params_path, what)
    walk = importer.run(steps)
    first_conv = steps[0].module
    assert isinstance(first_conv, nn.Conv2d) and first_conv.bias is None
    factor = walk["scale"] * FSKD_PIXEL_SCALE
    with torch.no_grad():
        first_conv.weight.mul_(factor)
    source = {
        "format": "mxnet",
        "symbol": str(symbol_path),
        "params": str(params_path),
        "epoch": epoch,
        "output": walk["output"],
        "input": f"RGB 0..255, (x - {FSKD_PIXEL_MEAN:g}) * {walk['scale']:g} in the graph; folded: first "
                 f"convolution's weights x {factor:.10g}, so it takes fskd's (x/255 - 0.5)/0.5",
        "unused_params": sorted(set(params) - importer.used),  # e.g. a training head after the embedding
    }
    return backbone.eval(), architecture, source


__all__ = ["SUPPORTED_OPS", "Step", "import_mxnet", "iresnet_plan", "mobilefacenet_plan", "read_symbol"]

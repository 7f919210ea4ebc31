"""Importing PyTorch face recognisers: insightface arcface_torch ``backbone.pth`` and the F-SKD authors' checkpoints.

* **arcface_torch**: a bare ``state_dict`` of ``iresnet18/34/50/100`` whose names and shapes are exactly fskd's
  `IResNet` with the ``"fc"`` neck (and the same input convention: RGB, ``(x/255 - 0.5)/0.5``), so it loads
  strictly, unchanged.
* **authors** (gist-ailab/feature-similarity-KD, both code versions): ``{"iters": N, "net_state_dict": ...}``
  (``last_net.ckpt``; the margin head in ``last_margin.ckpt`` as ``{"weight": (classes, E)}``). Plain IR models
  share fskd's names; three layout changes are needed elsewhere:

  - the attention module of each block is ``attention`` there, ``se`` / ``cbam`` here;
  - SE gates are ``Linear`` layers there (``(out, in)``) and 1x1 convolutions here (``(out, in, 1, 1)``);
  - CBAM's spatial gate convolves the channel maps ``[max, mean]`` there and ``[mean, max]`` here: the two
    input channels of its convolution are swapped;

  students of the later code also hold ``hint_layer1..4`` (adapters for distillation, not part of the
  embedding path): they are left out. The authors read images with OpenCV, so their networks expect **BGR**;
  the first convolution's input channels are reversed so that the imported network takes fskd's RGB and gives
  the same embedding (recorded in the checkpoint).

Both return ``(backbone, architecture, source)`` for `fskd.models.loading.imported_checkpoint`. Files are read
with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from fskd.models.heads import ClassificationHead, create_head
from fskd.models.iresnet import IRESNET_LAYERS, IResNet
from fskd.models.loading import backbone_from_architecture, safe_torch_load

_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")
_ATTENTION_KEY = re.compile(r"^(layer[1-4]\.\d+)\.attention\.(.+)$")
_DROPPED_PREFIXES = ("hint_layer", "conv_bridge")  # distillation adapters / QualNet bridge: not the embedding path


def _load_state(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    loaded = safe_torch_load(path, map_location="cpu")
    if isinstance(loaded, dict) and "net_state_dict" in loaded:
        loaded = loaded["net_state_dict"]
    elif isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: not a state_dict of tensors (nor a checkpoint holding one under "
                         "'net_state_dict' or 'state_dict')")
    # nn.DataParallel / DDP prefixes
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in loaded.items()}


def infer_architecture(state: dict[str, torch.Tensor], path: str | os.PathLike, mode: str = "ir",
                       arch: str | None = None) -> dict[str, Any]:
    """`ARCHITECTURE_KEYS` of the iResNet a state_dict describes: depth from the block indices, width from the
    stem, the neck from the presence of ``fc``, the embedding size from ``fc`` (or the last stage)."""
    blocks = [0, 0, 0, 0]
    for key in state:
        match = _LAYER_KEY.match(key)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    names = {layers: name for name, layers in IRESNET_LAYERS.items()}
    name = names.get(tuple(blocks))
    if name is None:
        raise ValueError(f"{path}: blocks per stage {blocks} match no iResNet ({', '.join(IRESNET_LAYERS)})")
    if arch is not None and arch != name:
        raise ValueError(f"{path}: --arch {arch} but the weights hold {blocks} blocks per stage ({name})")
    if "conv1.weight" not in state:
        raise ValueError(f"{path}: no 'conv1.weight': not an iResNet state_dict")
    stem = state["conv1.weight"].shape[0]
    neck = "fc" if "fc.weight" in state else "gap"
    embedding = state["fc.weight"].shape[0] if neck == "fc" else state["layer4.0.conv1.weight"].shape[0]
    return {"backbone": name, "mode": mode, "neck": neck, "width": stem / 64, "embedding_size": int(embedding),
            "dropout": 0.0}


def _build(architecture: dict[str, Any], state: dict[str, torch.Tensor], path: str | os.PathLike) -> IResNet:
    backbone = backbone_from_architecture(architecture)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit {architecture['backbone']} "
                         f"({architecture['mode']}, neck {architecture['neck']}): "
                         f"{str(error).splitlines()[0]}") from None
    return backbone.eval()


def import_arcface_torch(path: str | os.PathLike, arch: str | None = None,
                         ) -> tuple[IResNet, dict[str, Any], dict[str, Any]]:
    """An insightface arcface_torch ``backbone.pth`` (iresnet18/34/50/100): loaded strictly, unchanged."""
    state = _load_state(path, "arcface_torch backbone")
    architecture = infer_architecture(state, path, "ir", arch)
    backbone = _build(architecture, state, path)
    source = {"format": "arcface_torch", "file": str(path),
              "input": "RGB, (x/255 - 0.5)/0.5 (arcface_torch's own convention: nothing folded)"}
    return backbone, architecture, source


def _attention_mode(state: dict[str, torch.Tensor]) -> str:
    attention = [v for k, v in state.items() if _ATTENTION_KEY.match(k)]
    if not attention:
        return "ir"
    if any(v.ndim == 4 and tuple(v.shape[:2]) == (1, 2) for v in attention):
        return "cbam"
    return "se"


def _convert_attention(state: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """Rename and reshape the authors' per-block attention parameters to fskd's SE / CBAM modules.

    Matched by structure, in the order the parameters appear in the block (a saved state_dict keeps module
    order): SE = two bias-free Linear layers; CBAM = the channel MLP (Linear, ReLU, Linear, with biases), then
    the spatial 2->1 convolution and its BatchNorm.
    """
    converted: dict[str, torch.Tensor] = {}
    per_block: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        match = _ATTENTION_KEY.match(key)
        if match:
            per_block.setdefault(match.group(1), []).append((match.group(2), value))
        else:
            converted[key] = value
    for block, items in per_block.items():
        if mode == "se":
            weights = [(name, v) for name, v in items if v.ndim == 2]
            others = [name for name, v in items if v.ndim != 2]
            if len(weights) != 2 or others:
                raise ValueError(f"{block}.attention: expected the two bias-free Linear weights of an SE gate, "
                                 f"got {[name for name, _ in items]}")
            for target, (_, value) in zip(("fc1", "fc2"), weights, strict=True):
                converted[f"{block}.se.{target}.weight"] = value[:, :, None, None].clone()
            continue
        shapes = [tuple(v.shape) for _, v in items]
        if len(items) < 5 or [len(s) for s in shapes[:5]] != [2, 1, 2, 1, 4] or shapes[4][:2] != (1, 2):
            raise ValueError(f"{block}.attention: expected CBAM's channel MLP (2 Linear layers with biases), then "
                             f"the spatial 2->1 convolution and its BatchNorm, got "
                             f"{[(name, tuple(v.shape)) for name, v in items]}")
        for target, (_, value) in zip(("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"), items[:4],
                                      strict=True):
            converted[f"{block}.cbam.channel_attention.{target}"] = value.clone()
        # [max, mean] there, [mean, max] here
        converted[f"{block}.cbam.spatial_attention.conv.weight"] = items[4][1][:, [1, 0]].clone()
        for name, value in items[5:]:
            converted[f"{block}.cbam.spatial_attention.bn.{name.rsplit('.', 1)[1]}"] = value.clone()
    return converted


def import_authors(path: str | os.PathLike, arch: str | None = None,
                   ) -> tuple[IResNet, dict[str, Any], dict[str, Any]]:
    """An F-SKD/A-SKD authors' ``last_net.ckpt`` (either code version; IR, SE or CBAM; teacher or student)."""
    state = _load_state(path, "authors' network checkpoint")
    dropped = sorted({k.split(".")[0] for k in state if k.startswith(_DROPPED_PREFIXES)})
    state = {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    mode = _attention_mode(state)
    architecture = infer_architecture(state, path, mode, arch)
    state = _convert_attention(state, mode)
    # BGR -> RGB: the first convolution reads the colour channels in reverse order.
    state["conv1.weight"] = state["conv1.weight"][:, [2, 1, 0]].clone()
    backbone = _build(architecture, state, path)
    source = {"format": "authors", "file": str(path),
              "input": "trained on BGR, (x/255 - 0.5)/0.5; folded: conv1 input channels reversed, so the "
                       "imported network takes RGB",
              "dropped": dropped}
    return backbone, architecture, source


def import_authors_head(path: str | os.PathLike, embedding_size: int, head: str = "cosface",
                        **head_kwargs: float) -> tuple[ClassificationHead, dict[str, Any]]:
    """The authors' margin head (``last_margin.ckpt``: one ``weight`` of shape (classes, embedding)), as an fskd
    head (CosFace s=30 m=0.25 by default, their paper-era values), with the hyper-parameters that describe it."""
    state = _load_state(path, "authors' margin checkpoint")
    weight = state.get("weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != embedding_size:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise ValueError(f"{path}: expected a margin head 'weight' of shape (classes, {embedding_size}), got "
                         f"{shapes}")
    module = create_head(head, embedding_size, int(weight.shape[0]), **head_kwargs)
    try:
        module.load_state_dict({"weight": weight}, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the head weights do not fit {head}: {str(error).splitlines()[0]}") from None
    return module.eval(), {"head": head, "num_classes": int(weight.shape[0]), "head_kwargs": dict(head_kwargs)}

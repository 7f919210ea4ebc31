"""Deployment export of a trained backbone: ONNX and TorchScript graphs that map faces to embeddings.

The exported graph takes one input, ``image``: float32 (B, 3, 112, 112) normalised to [-1, 1] (RGB,
``(pixel / 255 - 0.5) / 0.5``, see `fskd.data.images.normalize`), and returns one output, ``embedding``:
(B, E), the backbone's raw embedding (not L2-normalised; normalise it before cosine comparison). The batch
axis is dynamic unless asked otherwise. Feature maps, attention maps and flip fusion are left out: a caller
that wants flip test-time augmentation runs the graph on the mirrored batch too.

ONNX exporters (torch 2.14): the ``torch.export``-based ("dynamo") exporter is torch's default and needs
``onnxscript``; it emits opset 18 natively, and its down-conversion to 17 fails on ``ReduceMean`` (the GAP
neck), so opsets below 18 use the legacy TorchScript-based exporter (deprecated by torch but working).
``exporter="auto"`` picks accordingly. The opset written is checked against the one requested.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
BATCH_AXIS_NAME = "batch"
DYNAMO_NATIVE_OPSET = 18
"""The opset the dynamo exporter writes without a version conversion."""
EXPORTERS = ("auto", "dynamo", "legacy")


class EmbeddingGraph(nn.Module):
    """A backbone reduced to ``image -> embedding`` (what gets exported)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = self.backbone(image)
        return output.embedding if hasattr(output, "embedding") else output


def _graph_and_example(backbone: nn.Module, batch: int = 2) -> tuple[EmbeddingGraph, torch.Tensor]:
    """A CPU, eval-mode copy (the caller's module is left untouched) and an example input."""
    graph = EmbeddingGraph(copy.deepcopy(backbone)).cpu().eval()
    size = int(getattr(backbone, "input_size", 112))
    # Batch 2, not 1: exporters specialise size-1 dimensions.
    example = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return graph, example


@contextlib.contextmanager
def _quiet_trace_warnings() -> Iterator[None]:
    """Silence TracerWarnings: the backbone's input-shape check is a Python bool, harmlessly frozen."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def choose_exporter(opset: int, exporter: str = "auto") -> str:
    """``"dynamo"`` or ``"legacy"`` for ``opset`` (see the module docstring)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    if exporter != "auto":
        return exporter
    return "dynamo" if opset >= DYNAMO_NATIVE_OPSET else "legacy"


def onnx_opset(path: str | os.PathLike) -> int:
    """The default-domain opset of an ONNX file (needs the ``onnx`` package)."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def export_onnx(backbone: nn.Module, path: str | os.PathLike, opset: int = DYNAMO_NATIVE_OPSET,
                dynamic_batch: bool = True, exporter: str = "auto") -> Path:
    """Write ``backbone`` as a single-file ONNX graph ``image (B,3,112,112) -> embedding (B,E)``.

    ``exporter``: ``"dynamo"`` (torch.export-based, needs ``onnxscript``), ``"legacy"`` (TorchScript-based) or
    ``"auto"`` (dynamo for opset >= 18, legacy below). Raises RuntimeError if the file's opset is not
    ``opset`` (an exporter may silently keep its own when a version conversion fails); the file is then
    removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen = choose_exporter(opset, exporter)
    graph, example = _graph_and_example(backbone)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    with _quiet_trace_warnings():
        if chosen == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise ImportError("the dynamo ONNX exporter needs onnxscript (pip install onnxscript), or "
                                  "ask for the legacy exporter (opset < 18 or exporter='legacy')") from None
            dynamic_shapes = ({0: torch.export.Dim(BATCH_AXIS_NAME)},) if dynamic_batch else None
            torch.onnx.export(graph, (example,), path, dynamo=True, opset_version=opset, external_data=False,
                              dynamic_shapes=dynamic_shapes, verbose=False, **names)
        else:
            dynamic_axes = ({INPUT_NAME: {0: BATCH_AXIS_NAME}, OUTPUT_NAME: {0: BATCH_AXIS_NAME}}
                            if dynamic_batch else None)
            torch.onnx.export(graph, (example,), path, dynamo=False, opset_version=opset,
                              dynamic_axes=dynamic_axes, do_constant_folding=True, **names)
    try:
        written = onnx_opset(path)
    except ImportError:
        return path
    if written != opset:
        path.unlink()
        raise RuntimeError(f"{path}: the {chosen} exporter wrote opset {written}, not the requested {opset}; "
                           f"use opset {DYNAMO_NATIVE_OPSET} or exporter='legacy'")
    return path


def export_torchscript(backbone: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``backbone`` as a traced TorchScript module ``image (B,3,112,112) -> embedding (B,E)``.

    Load it with ``torch.jit.load(path)``; any batch size works (the trace has no batch-dependent branch).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph, example = _graph_and_example(backbone)
    with _quiet_trace_warnings(), torch.no_grad():
        traced = torch.jit.trace(graph, example, check_trace=False)
    torch.jit.save(traced, os.fspath(path))
    return path


def onnx_parity(backbone: nn.Module, path: str | os.PathLike, batch_sizes: Sequence[int] = (1, 7),
                seed: int = 0) -> dict[int, tuple[float, float]]:
    """Run an exported ONNX file with onnxruntime (CPU) against the PyTorch backbone on random inputs.

    Returns ``{batch_size: (max |onnx - torch|, max |torch|)}``. Needs the ``onnxruntime`` package.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    graph, _ = _graph_and_example(backbone)
    size = int(getattr(backbone, "input_size", 112))
    generator = torch.Generator().manual_seed(seed)
    results: dict[int, tuple[float, float]] = {}
    for batch in batch_sizes:
        images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = graph(images).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
        if actual.shape != expected.shape:
            raise RuntimeError(f"{path}: ONNX output shape {actual.shape} != PyTorch {expected.shape}")
        results[batch] = (float(np.abs(actual - expected).max()), float(np.abs(expected).max()))
    return results


__all__ = [
    "DYNAMO_NATIVE_OPSET",
    "EmbeddingGraph",
    "choose_exporter",
    "export_onnx",
    "export_torchscript",
    "onnx_opset",
    "onnx_parity",
]

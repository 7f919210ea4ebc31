"""Embedding extraction with ``fskd predict``: the writer of ``<output>.npy``/``.txt``.

`fskd.data.sources.PredictionImages` lists the faces to embed (an image folder, searched recursively, or an
insightface ``.rec`` file); `FaceDataModule` serves it as its predict set and turns each batch into normalised (and
optionally degraded) floats on the device; the system's ``predict_step`` returns ``{"index", "embedding"}``;
`EmbeddingWriter` collects those at the end of the epoch, gathers them from every rank, puts the rows back in
dataset order and writes them on rank 0:

* ``<output>.npy``: float32 (N, E), row i = image i of the source (the raw embeddings, not normalised);
* ``<output>.txt``: N lines, the name of image i (its path relative to the folder, or ``rec:<key>``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


def _flatten_batches(predictions: Sequence[Any]) -> list[dict[str, torch.Tensor]]:
    """Batch outputs of one dataloader (a list of dicts) or of several (a list of such lists)."""
    batches: list[dict[str, torch.Tensor]] = []
    for item in predictions:
        if isinstance(item, dict):
            batches.append(item)
        elif isinstance(item, list | tuple):
            batches.extend(_flatten_batches(item))
        else:
            raise TypeError(f"predict_step must return a dict with 'index' and 'embedding', got {type(item)}")
    return batches


def _gather_padded(tensor: torch.Tensor, trainer: Any) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (ranks may hold different numbers of rows)."""
    world_size = int(getattr(trainer, "world_size", 1) or 1)
    if world_size == 1:
        return tensor
    strategy = trainer.strategy
    device = strategy.root_device
    # Gather whole shapes, not only row counts: a rank that embedded nothing holds a (0, 0) tensor and must pad
    # to the others' width, or the all-gather's shapes differ between ranks (a hang or an error under NCCL).
    shape = torch.tensor([tensor.shape[0], *tensor.shape[1:]], device=device)
    shapes = strategy.all_gather(shape).reshape(world_size, -1)
    counts = shapes[:, 0].tolist()
    trailing = tuple(int(v) for v in shapes[:, 1:].max(dim=0).values)
    padded = torch.zeros((max(counts), *trailing), dtype=tensor.dtype, device=device)
    if tensor.shape[0]:
        padded[: tensor.shape[0]] = tensor.to(device)
    gathered = strategy.all_gather(padded).reshape(world_size, max(counts), *trailing)
    return torch.cat([gathered[rank, :n] for rank, n in enumerate(counts)]).cpu()


def output_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """``(<output>.npy, <output>.txt)``; a trailing ``.npy`` on ``output`` is not doubled."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix == ".npy" else output
    return stem.parent / f"{stem.name}.npy", stem.parent / f"{stem.name}.txt"


class EmbeddingWriter(BasePredictionWriter):
    """Write the predicted embeddings of a whole predict epoch to ``<output>.npy`` and ``<output>.txt``.

    Consumes ``predict_step`` outputs ``{"index": LongTensor (B,), "embedding": FloatTensor (B, E)}``. Under
    DDP the rows of all ranks are all-gathered (repeats added by ``DistributedSampler`` padding are dropped)
    and rank 0 writes them in index order. Names come from ``names`` or else from
    ``trainer.datamodule.predict_names``; every index 0..N-1 must have been predicted at least once.

    Args:
        output: path stem of the two files (parent folders are created).
        names: image names in index order; default: the datamodule's ``predict_names``.
    """

    def __init__(self, output: str | os.PathLike, names: Sequence[str] | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = Path(output)
        self.names = list(names) if names is not None else None

    def _names(self, trainer: Any) -> list[str]:
        if self.names is not None:
            return self.names
        names = getattr(getattr(trainer, "datamodule", None), "predict_names", None)
        if names is None:
            raise ValueError("EmbeddingWriter needs the image names: pass names=... or use a datamodule with "
                             "predict_names")
        return list(names)

    def collect(self, trainer: Any, predictions: Sequence[Any]) -> tuple[np.ndarray, list[str]]:
        """Gather the predictions of every rank and order them: (float32 (N, E) embeddings, N names)."""
        batches = _flatten_batches(predictions)
        for batch in batches:
            if "index" not in batch or "embedding" not in batch:
                raise KeyError(f"predict_step output must have 'index' and 'embedding', got {sorted(batch)}")
        if batches:
            indices = torch.cat([torch.as_tensor(b["index"]).reshape(-1).to("cpu", torch.int64)
                                 for b in batches])
            embeddings = torch.cat([b["embedding"].detach().to("cpu", torch.float32) for b in batches])
        else:
            indices, embeddings = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 0)
        if embeddings.ndim != 2 or embeddings.shape[0] != indices.shape[0]:
            raise ValueError(f"got {indices.shape[0]} indices for embeddings of shape "
                             f"{tuple(embeddings.shape)}")
        indices = _gather_padded(indices, trainer)
        embeddings = _gather_padded(embeddings, trainer)
        names = self._names(trainer)
        count = len(names)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= count):
            raise ValueError(f"predicted index out of range 0..{count - 1} (min {int(indices.min())}, "
                             f"max {int(indices.max())})")
        # Keep the first occurrence of each index (a DistributedSampler pads ranks with repeats).
        order = torch.argsort(indices, stable=True)
        first = torch.ones(order.shape[0], dtype=torch.bool)
        first[1:] = indices[order[1:]] != indices[order[:-1]]
        keep = order[first]
        table = torch.zeros((count, embeddings.shape[1]), dtype=torch.float32)
        table[indices[keep]] = embeddings[keep]
        seen = torch.zeros(count, dtype=torch.bool)
        seen[indices] = True
        if not bool(seen.all()):
            missing = torch.nonzero(~seen).flatten()
            raise ValueError(f"{missing.numel()} of {count} images have no embedding (first missing index "
                             f"{int(missing[0])}); was the predict set cut short (limit_predict_batches)?")
        return table.numpy(), names

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Sequence[Any],
                           batch_indices: Sequence[Any] | None = None) -> None:
        embeddings, names = self.collect(trainer, predictions)
        if not getattr(trainer, "is_global_zero", True):
            return
        npy_path, txt_path = output_paths(self.output)
        npy_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy_path, embeddings)
        txt_path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
        rank_zero_info(f"EmbeddingWriter: wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to "
                       f"{npy_path} and names to {txt_path}")


__all__ = ["EmbeddingWriter", "output_paths"]

"""torchmetrics wrapper around the 10-fold verification protocols, safe under DDP.

Each rank appends (image index, embedding, flipped-image embedding) for the images it saw; ``compute``
gathers all ranks' states, drops the duplicates that ``DistributedSampler`` adds as padding, checks that every
image of the verification set is present exactly once, orders by index and runs
:func:`fskd.evaluation.verification.evaluate_pairs`. Every rank therefore computes the same value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fskd.evaluation.verification import PROTOCOLS, as_issame, evaluate_pairs, fold_size


class VerificationMetric(Metric):
    """Verification accuracy of one pair set (e.g. LFW) under one or more protocols.

    ``compute`` returns float64 scalar tensors (fractions in [0, 1]); for the first protocol in ``protocols``
    the keys ``"acc"`` and ``"acc_std"``, for each further one ``"<protocol>_acc"``, ``"<protocol>_acc_std"``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    indices: list[Tensor]
    embeddings: list[Tensor]
    flipped_embeddings: list[Tensor]

    def __init__(
        self,
        issame: Sequence[bool] | np.ndarray,
        protocols: Sequence[str] = PROTOCOLS,
        folds: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(protocols, str) or len(protocols) == 0:
            raise ValueError(f"protocols must be a non-empty sequence of names, got {protocols!r}")
        unknown = [name for name in protocols if name not in PROTOCOLS]
        if unknown:
            raise ValueError(f"unknown verification protocol(s) {unknown}; expected names from {PROTOCOLS}")
        self.issame = as_issame(issame)
        fold_size(self.issame.size, folds)  # fail at construction, not after a whole validation epoch
        self.protocols = tuple(protocols)
        self.folds = folds
        self.num_images = 2 * self.issame.size
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("flipped_embeddings", default=[], dist_reduce_fx="cat")

    def update(self, indices: Tensor, embeddings: Tensor, flipped_embeddings: Tensor) -> None:
        """Record a batch: image indices in ``0 .. 2P-1`` (shape ``[B]``) and both embeddings (``[B, E]``)."""
        if indices.ndim != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(
                f"indices must be a 1-D integer tensor, got {indices.dtype} of shape {tuple(indices.shape)}"
            )
        if embeddings.ndim != 2 or embeddings.shape != flipped_embeddings.shape:
            raise ValueError(
                "embeddings and flipped_embeddings must be 2-D tensors of the same shape, got "
                f"{tuple(embeddings.shape)} and {tuple(flipped_embeddings.shape)}"
            )
        if embeddings.shape[0] != indices.shape[0]:
            raise ValueError(f"{indices.shape[0]} indices but {embeddings.shape[0]} embeddings")
        self.indices.append(indices.detach().long())
        self.embeddings.append(embeddings.detach().float())
        self.flipped_embeddings.append(flipped_embeddings.detach().float())

    def compute(self) -> dict[str, Tensor]:
        """De-duplicate by index, check completeness, order by index and evaluate every protocol."""
        if isinstance(self.indices, list) and len(self.indices) == 0:
            raise RuntimeError("VerificationMetric.compute() called before any update()")
        indices = dim_zero_cat(self.indices).cpu().numpy()
        embeddings = dim_zero_cat(self.embeddings).cpu().numpy()
        flipped = dim_zero_cat(self.flipped_embeddings).cpu().numpy()

        out_of_range = (indices < 0) | (indices >= self.num_images)
        if out_of_range.any():
            raise RuntimeError(
                f"{int(out_of_range.sum())} image indices lie outside 0..{self.num_images - 1}, "
                f"e.g. {indices[out_of_range][:5].tolist()}"
            )
        # np.unique sorts the indices and gives their first occurrences (DistributedSampler pads by repeats).
        unique_indices, first_position = np.unique(indices, return_index=True)
        if unique_indices.size != self.num_images:
            missing = np.setdiff1d(np.arange(self.num_images), unique_indices)
            raise RuntimeError(
                f"{missing.size} of {self.num_images} verification images are missing "
                f"(e.g. indices {missing[:5].tolist()}); was the whole set evaluated? The 10-fold protocol needs "
                "every pair: a --trainer.limit_val_batches (or limit_test_batches, fast_dev_run) other than 0 or "
                "1.0 cuts a set short (FaceDataModule refuses one at setup)"
            )
        results = evaluate_pairs(
            embeddings[first_position], flipped[first_position], self.issame, self.protocols, self.folds
        )
        values: dict[str, Tensor] = {}
        for position, protocol in enumerate(self.protocols):
            prefix = "" if position == 0 else f"{protocol}_"
            mean, std = results[protocol]
            values[f"{prefix}acc"] = torch.tensor(mean, dtype=torch.float64)
            values[f"{prefix}acc_std"] = torch.tensor(std, dtype=torch.float64)
        return values

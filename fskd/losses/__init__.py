"""Distillation losses: F-SKD and the baselines it is compared with, plus a registry by method name.

Every loss takes (student, teacher) inputs, detaches the teacher, computes in float32 and returns the
UNWEIGHTED scalar. Each loss class declares its own metadata (`DistillationLoss`: ``name``, ``inputs``,
``needs_hint``, ``same_channels``, ``default_weight``, ``needs_positives``), which the training system reads;
`DISTILL_LOSSES` is derived from it. `CrossSampleRelationLoss` is not a method of its own: it is the second
term of ``fskd_cross``, on anchor and positive maps.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fskd.losses.base import DistillationLoss
from fskd.losses.baselines import (
    AttentionSimilarityLoss,
    AttentionTransferLoss,
    FitNetLoss,
    HintAdapters,
    LogitKDLoss,
    RelationalKDLoss,
)
from fskd.losses.cross import CrossSampleFeatureSimilarityLoss, CrossSampleRelationLoss
from fskd.losses.fskd import FeatureSimilarityLoss, HintedFeatureSimilarityLoss

#: Loss class per distillation method name, derived from each class's ``name``.
DISTILL_LOSSES: dict[str, type[DistillationLoss]] = {
    loss.name: loss
    for loss in (FeatureSimilarityLoss, HintedFeatureSimilarityLoss, AttentionSimilarityLoss, FitNetLoss,
                 AttentionTransferLoss, RelationalKDLoss, LogitKDLoss, CrossSampleFeatureSimilarityLoss)
}

DISTILL_NAMES: tuple[str, ...] = tuple(DISTILL_LOSSES)


def create_distill_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the distillation loss called ``name`` (one of ``DISTILL_NAMES``), passing ``kwargs`` on.

    The returned module carries its metadata (``inputs``, ``needs_hint``, ``default_weight``...). When
    ``needs_hint`` is set the caller also owns a ``HintAdapters`` module for the student; this factory returns
    only the loss.
    """
    if name not in DISTILL_LOSSES:
        raise ValueError(f"unknown distillation loss {name!r}; expected one of: {', '.join(DISTILL_NAMES)}")
    loss_class = DISTILL_LOSSES[name]
    try:
        return loss_class(**kwargs)
    except TypeError as error:
        raise TypeError(f"distillation loss {name!r} ({loss_class.__name__}) rejected arguments "
                        f"{sorted(kwargs)}: {error}") from error


__all__ = [
    "DISTILL_LOSSES",
    "DISTILL_NAMES",
    "AttentionSimilarityLoss",
    "AttentionTransferLoss",
    "CrossSampleFeatureSimilarityLoss",
    "CrossSampleRelationLoss",
    "DistillationLoss",
    "FeatureSimilarityLoss",
    "FitNetLoss",
    "HintAdapters",
    "HintedFeatureSimilarityLoss",
    "LogitKDLoss",
    "RelationalKDLoss",
    "create_distill_loss",
]

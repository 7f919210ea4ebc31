"""Distillation losses: F-SKD and the baselines it is compared with, plus a factory by name.

Every loss takes (student, teacher) inputs, detaches the teacher, computes in float32 and returns the
UNWEIGHTED scalar; multiply by the class attribute ``default_weight`` (the authors' value) or your own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fskd.losses.baselines import (
    AttentionSimilarityLoss,
    AttentionTransferLoss,
    FitNetLoss,
    HintAdapters,
    LogitKDLoss,
    RelationalKDLoss,
)
from fskd.losses.fskd import FeatureSimilarityLoss

#: Loss class per distillation name. "fskd_hint" is the same F-SKD loss; the caller must pass the student
#: stage maps through ``HintAdapters`` first (see ``NEEDS_HINT``).
_LOSS_CLASSES: dict[str, type[nn.Module]] = {
    "fskd": FeatureSimilarityLoss,
    "fskd_hint": FeatureSimilarityLoss,
    "askd": AttentionSimilarityLoss,
    "fitnet": FitNetLoss,
    "at": AttentionTransferLoss,
    "rkd": RelationalKDLoss,
    "hkd": LogitKDLoss,
}

DISTILL_NAMES: tuple[str, ...] = tuple(_LOSS_CLASSES)

#: Which model outputs each loss consumes: "features" = list of stage maps (B, C, H, W); "attention" = list
#: of (channel_gate, spatial_gate) pairs per CBAM block; "embedding" = (B, E); "logits" = margin-head (B, K).
DISTILL_INPUTS: dict[str, str] = {
    "fskd": "features",
    "fskd_hint": "features",
    "askd": "attention",
    "fitnet": "features",
    "at": "features",
    "rkd": "embedding",
    "hkd": "logits",
}

#: Losses whose student stage maps must first pass through ``HintAdapters`` (teacher maps stay raw).
NEEDS_HINT: frozenset[str] = frozenset({"fskd_hint", "fitnet"})


def create_distill_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the distillation loss called ``name`` (one of ``DISTILL_NAMES``), passing ``kwargs`` on.

    The returned module carries ``default_weight``. For names in ``NEEDS_HINT`` the caller also owns a
    ``HintAdapters`` module for the student; this factory returns only the loss.
    """
    if name not in _LOSS_CLASSES:
        raise ValueError(f"unknown distillation loss {name!r}; expected one of: {', '.join(DISTILL_NAMES)}")
    loss_class = _LOSS_CLASSES[name]
    try:
        return loss_class(**kwargs)
    except TypeError as error:
        raise TypeError(f"distillation loss {name!r} ({loss_class.__name__}) rejected arguments "
                        f"{sorted(kwargs)}: {error}") from error


__all__ = [
    "DISTILL_INPUTS",
    "DISTILL_NAMES",
    "NEEDS_HINT",
    "AttentionSimilarityLoss",
    "AttentionTransferLoss",
    "FeatureSimilarityLoss",
    "FitNetLoss",
    "HintAdapters",
    "LogitKDLoss",
    "RelationalKDLoss",
    "create_distill_loss",
]

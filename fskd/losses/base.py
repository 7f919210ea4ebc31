"""`DistillationLoss`: the metadata every distillation loss declares next to its formula."""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class DistillationLoss(nn.Module):
    """Base of the distillation losses; subclasses set ``name`` and ``default_weight`` and override the rest
    only where they differ.

    * ``name``: the ``distill`` method name of configs (``--model.distill``);
    * ``inputs``: what the loss compares: ``"features"`` (the stage maps), ``"attention"`` (CBAM gates),
      ``"embedding"`` or ``"logits"``;
    * ``needs_hint``: the student stage maps pass through ``HintAdapters`` first (the teacher's stay raw);
    * ``same_channels``: teacher and student stage maps must have the same channel counts;
    * ``default_weight``: the weight of the authors' scripts;
    * ``needs_positives``: training also needs a positive image per sample (another image of its identity),
      mined with the teacher (``fskd_cross``).
    """

    name: ClassVar[str]
    inputs: ClassVar[str] = "features"
    needs_hint: ClassVar[bool] = False
    same_channels: ClassVar[bool] = True
    default_weight: ClassVar[float]
    needs_positives: ClassVar[bool] = False

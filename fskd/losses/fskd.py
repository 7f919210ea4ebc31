"""F-SKD: Feature Similarity Knowledge Distillation loss (Shin, Yu, Lee 2023, arXiv 2303.04681).

For every backbone stage i and sample b, the student's and the teacher's stage outputs are flattened to one
vector each (C*H*W values) and compared by cosine similarity:

    cos_i(b) = <vec(s_i[b]), vec(t_i[b])> / (||s_i[b]|| * ||t_i[b]||)
    L_FSKD   = mean_i mean_b (1 - cos_i(b))          (in [0, 2])

The module returns this unweighted value; the training loop multiplies it by ``default_weight`` (20.0 in the
authors' shipped scripts, for every resolution). See docs/losses.md.

The small helpers below (stage checks, fp32 context, flattened cosine) are shared with ``baselines.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import ClassVar

import torch
from torch import Tensor

from fskd.losses.base import DistillationLoss

#: Lower bound of ||a|| * ||b|| in the cosine. It is the value and the formula of PyTorch 1.x
#: ``F.cosine_similarity`` (the authors' call): ``dot / sqrt(max(|a|^2 * |b|^2, eps^2))``. A zero map
#: therefore gets cosine 0 (loss 1) instead of NaN.
COSINE_EPS = 1e-8


def fp32_context(reference: Tensor) -> AbstractContextManager:
    """Disable autocast on the device of ``reference``, so that a loss is computed in float32."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


def as_tensor_list(values: Sequence[Tensor], role: str) -> list[Tensor]:
    """Check that ``values`` is a non-empty list/tuple of tensors and return it as a list.

    A bare tensor is refused: iterating it would silently treat the batch dimension as the stage list.
    """
    if isinstance(values, Tensor):
        raise TypeError(f"{role} must be a list or tuple of per-stage tensors, got a single tensor "
                        f"of shape {tuple(values.shape)}; wrap it as [tensor]")
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{role} must be a list or tuple of tensors, got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{role} is empty; at least one stage is needed")
    for index, value in enumerate(values):
        if not isinstance(value, Tensor):
            raise TypeError(f"{role}[{index}] must be a tensor, got {type(value).__name__}")
    return list(values)


def paired_stages(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Pair student and teacher stage tensors, requiring the same count and identical shapes per stage."""
    student_list = as_tensor_list(student, "student_features")
    teacher_list = as_tensor_list(teacher, "teacher_features")
    if len(student_list) != len(teacher_list):
        raise ValueError(f"student has {len(student_list)} stages but teacher has {len(teacher_list)}")
    for index, (s, t) in enumerate(zip(student_list, teacher_list, strict=True)):
        if s.shape != t.shape:
            raise ValueError(
                f"stage {index}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}"
            )
        if s.dim() < 2 or s.shape[0] == 0:
            raise ValueError(f"stage {index}: expected a non-empty batch (B, ...) with B >= 1 and at least "
                             f"2 dimensions, got shape {tuple(s.shape)}")
    return list(zip(student_list, teacher_list, strict=True))


def flattened_cosine(a: Tensor, b: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Per-sample cosine between ``a[i]`` and ``b[i]``, each flattened to one vector; shape (B,).

    The denominator is ``sqrt(|a|^2 * |b|^2)`` (one square root of the product) so that identical inputs
    give exactly 1 and negated inputs exactly -1 in floating point. In float32 the product overflows only
    when ``|a| * |b|`` exceeds about 1.8e19, far beyond any feature map.
    """
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    dot = (a * b).sum(dim=1)
    squared_norm_product = (a * a).sum(dim=1) * (b * b).sum(dim=1)
    return dot / torch.sqrt(torch.clamp(squared_norm_product, min=eps * eps))


class FeatureSimilarityLoss(DistillationLoss):
    """F-SKD loss: mean over stages of mean over batch of (1 - cosine of the flattened stage maps).

    Call ``loss(student_features, teacher_features)`` with two lists/tuples of stage outputs (B, C, H, W),
    equal shapes pairwise (any number >= 1 of stages). Gradients flow only into the student features; the
    computation runs in float32 even under autocast. Returns the unweighted scalar loss in [0, 2].
    `HintedFeatureSimilarityLoss` is the same loss for the later code's "hint" variant.
    """

    name: ClassVar[str] = "fskd"
    default_weight: ClassVar[float] = 20.0

    def __init__(self, eps: float = COSINE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
        pairs = paired_stages(student_features, teacher_features)
        with fp32_context(pairs[0][0]):
            stage_losses = [
                (1.0 - flattened_cosine(s.float(), t.detach().float(), self.eps)).mean() for s, t in pairs
            ]
            return torch.stack(stage_losses).mean()



class HintedFeatureSimilarityLoss(FeatureSimilarityLoss):
    """F-SKD of the authors' later code: the same loss, on student stage maps first passed through
    ``HintAdapters`` (1x1 convolution + BN per stage; the teacher maps stay raw)."""

    name: ClassVar[str] = "fskd_hint"
    needs_hint: ClassVar[bool] = True

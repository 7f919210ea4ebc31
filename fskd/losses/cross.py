"""Cross-sample F-SKD (``distill: fskd_cross``): the hinted F-SKD point term plus a cross-sample relational term.

The authors' final code trains students with two distillation terms: the F-SKD cosine on hint-adapted stage
maps (`HintedFeatureSimilarityLoss`, weight 20) and, on the last-stage maps of an anchor image and a *positive*
image (another image of the same identity), a term comparing spatial relation matrices (weight 4).

Relational term: each map (C, H, W) is reshaped to (C, H·W) and divided by its Frobenius norm (over C and H·W
together), x̂. ``R(x, y) = x̂ᵀ ŷ`` is the (H·W) × (H·W) matrix of the inner products between the positions of
``x`` and those of ``y``. With H = teacher, L = student, first argument the anchor and second the positive:

    R_HH = R(t_a, t_p)   R_HL = R(t_a, s_p)   R_LH = R(s_a, t_p)   R_LL = R(s_a, s_p)
    L    = mean_b { [(1 - cos(R_HH, R_HL)) + (1 - cos(R_HH, R_LH))] / 2 + (1 - cos(R_HH, R_LL)) }

with ``cos`` the cosine of the flattened matrices of one sample. See docs/losses.md.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from fskd.losses.fskd import COSINE_EPS, HintedFeatureSimilarityLoss, flattened_cosine, fp32_context

#: Lower bound of a map's Frobenius norm before dividing by it (an all-zero map stays zero instead of NaN).
NORM_EPS = 1e-12


class CrossSampleRelationLoss(nn.Module):
    """The cross-sample relational term of ``fskd_cross`` (unweighted; ``default_weight`` 4.0 in the authors'
    scripts). Not a distillation method of its own: `DistillModule` adds it to the ``fskd_cross`` point term.

    Call ``loss(student_anchor, student_positive, teacher_anchor, teacher_positive, mask=None)`` with four maps
    of one shape (B, C, H, W): the student's after the hint adapters, so that their channels match the
    teacher's. ``mask`` (B,) bool leaves out the samples where it is False (those without a positive); when no
    sample is left the loss is a zero that still depends on the student maps, so that every parameter takes
    part in the backward pass (DDP expects it). Teacher maps are detached; the computation runs in float32
    even under autocast.
    """

    default_weight: ClassVar[float] = 4.0

    def __init__(self, eps: float = COSINE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student_anchor: Tensor, student_positive: Tensor, teacher_anchor: Tensor,
                teacher_positive: Tensor, mask: Tensor | None = None) -> Tensor:
        maps = {"student_anchor": student_anchor, "student_positive": student_positive,
                "teacher_anchor": teacher_anchor, "teacher_positive": teacher_positive}
        _check_maps(maps)
        if mask is not None:
            _check_mask(mask, student_anchor.shape[0])
        with fp32_context(student_anchor):
            s_a, s_p = _unit_positions(student_anchor.float()), _unit_positions(student_positive.float())
            with torch.no_grad():
                t_a = _unit_positions(teacher_anchor.detach().float())
                t_p = _unit_positions(teacher_positive.detach().float())
                r_hh = torch.bmm(t_a.transpose(1, 2), t_p)
            r_hl = torch.bmm(t_a.transpose(1, 2), s_p)
            r_lh = torch.bmm(s_a.transpose(1, 2), t_p)
            r_ll = torch.bmm(s_a.transpose(1, 2), s_p)
            mixed = ((1.0 - flattened_cosine(r_hh, r_hl, self.eps)) + (1.0 - flattened_cosine(r_hh, r_lh, self.eps)))
            per_sample = mixed / 2 + (1.0 - flattened_cosine(r_hh, r_ll, self.eps))
            if mask is None:
                return per_sample.mean()
            # torch.where and a clamped count, not boolean indexing: no host synchronisation on a GPU, and a
            # batch without any positive gives 0 through the same graph.
            keep = mask.to(per_sample.device)
            count = keep.sum().clamp(min=1).to(per_sample.dtype)
            return torch.where(keep, per_sample, torch.zeros_like(per_sample)).sum() / count


def _check_maps(maps: dict[str, Tensor]) -> None:
    for role, value in maps.items():
        if not isinstance(value, Tensor) or value.dim() != 4 or value.shape[0] == 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{role} must be a non-empty (B, C, H, W) tensor, got {shape}")
    shapes = {role: tuple(value.shape) for role, value in maps.items()}
    student_channels = {shapes["student_anchor"][1], shapes["student_positive"][1]}
    teacher_channels = {shapes["teacher_anchor"][1], shapes["teacher_positive"][1]}
    if student_channels != teacher_channels or len(student_channels) != 1:
        raise ValueError(f"the cross-sample term compares student and teacher maps position by position and needs "
                         f"the same channel count (pass the hint-adapted student maps); got {shapes}")
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the four maps must have one shape (B, C, H, W); got {shapes}")


def _check_mask(mask: Tensor, batch: int) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch,):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor of shape ({batch},), got {got}")


def _unit_positions(feature: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H·W), each sample divided by its Frobenius norm."""
    flat = feature.reshape(feature.shape[0], feature.shape[1], -1)
    norm = flat.reshape(flat.shape[0], -1).norm(dim=1).clamp(min=NORM_EPS)
    return flat / norm[:, None, None]


class CrossSampleFeatureSimilarityLoss(HintedFeatureSimilarityLoss):
    """The point term of ``fskd_cross``: `HintedFeatureSimilarityLoss` on the anchors (weight 20).

    Its metadata tells `DistillModule` to draw a positive per sample and to add `CrossSampleRelationLoss`
    (weight 4) on the last-stage maps of anchor and positive.
    """

    name: ClassVar[str] = "fskd_cross"
    needs_positives: ClassVar[bool] = True

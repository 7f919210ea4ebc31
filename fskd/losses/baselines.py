"""Baseline distillation losses compared with F-SKD, as configured in the authors' later code.

Each loss returns an unweighted float32 scalar; ``default_weight`` is the weight of the authors' scripts.
Teacher inputs are detached inside. Formulas and the differences between code versions: docs/losses.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fskd.losses.base import DistillationLoss
from fskd.losses.fskd import as_tensor_list, flattened_cosine, fp32_context, paired_stages

#: Added to the L2 norm of an attention-transfer map before dividing (authors' value).
ATTENTION_TRANSFER_EPS = 1e-6


class HintAdapters(nn.Module):
    """Per-stage learnable adapters applied to the STUDENT stage outputs ("hint" layers).

    One 1x1 convolution without bias (same channel count) per stage, followed by BatchNorm2d when
    ``batch_norm`` (the authors' ``--hint_bn True`` default). Used by F-SKD's later "hint" variant and
    by FitNet; the teacher has no adapter.

    Initialisation: by default the conv weights are drawn from N(0, 0.1), which is what the authors' adapters
    actually get (their backbone re-initialises every Conv2d, the hint convs included, with N(0, 0.1)).
    ``identity_init=True`` starts from the identity instead, so that without BatchNorm the adapted features
    equal the raw ones at step 0.
    """

    def __init__(self, channels: Sequence[int], batch_norm: bool = True, identity_init: bool = False) -> None:
        super().__init__()
        channels = list(channels)
        if not channels or any(int(c) != c or c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive integers, got {channels}")
        self.channels = tuple(int(c) for c in channels)
        self.batch_norm = batch_norm
        adapters = []
        for count in self.channels:
            conv = nn.Conv2d(count, count, kernel_size=1, bias=False)
            with torch.no_grad():
                if identity_init:
                    conv.weight.copy_(torch.eye(count).reshape(count, count, 1, 1))
                else:
                    conv.weight.normal_(0.0, 0.1)
            layers: list[nn.Module] = [conv]
            if batch_norm:
                layers.append(nn.BatchNorm2d(count))
            adapters.append(nn.Sequential(*layers))
        self.adapters = nn.ModuleList(adapters)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, ...]:
        features = as_tensor_list(features, "features")
        if len(features) != len(self.adapters):
            raise ValueError(f"got {len(features)} stage features for {len(self.adapters)} adapters")
        for index, (feature, count) in enumerate(zip(features, self.channels, strict=True)):
            if feature.dim() != 4 or feature.shape[1] != count:
                raise ValueError(f"stage {index}: expected (B, {count}, H, W), got {tuple(feature.shape)}")
        return tuple(adapter(feature) for adapter, feature in zip(self.adapters, features, strict=True))


class AttentionSimilarityLoss(DistillationLoss):
    """A-SKD as the F-SKD repository's ``A_SKD`` option: cosine distance of CBAM attention gates.

    Inputs: per block a pair ``(channel_gate (B, C), spatial_gate (B, 1, H, W))`` for student and teacher
    (post-sigmoid gates). Per block ``[(1 - cos_channel) + (1 - cos_spatial)] / 2`` with per-sample cosines
    of the flattened gates averaged over the batch; the loss is the MEAN over blocks. (The ECCV A-SKD code
    instead SUMS over blocks, multiplies by beta = 5 and uses pre-sigmoid maps; see docs/losses.md.)
    """

    name: ClassVar[str] = "askd"
    inputs: ClassVar[str] = "attention"
    default_weight: ClassVar[float] = 80.0

    def forward(
        self,
        student_attention: Sequence[tuple[Tensor, Tensor]],
        teacher_attention: Sequence[tuple[Tensor, Tensor]],
    ) -> Tensor:
        student_blocks = _attention_blocks(student_attention, "student_attention")
        teacher_blocks = _attention_blocks(teacher_attention, "teacher_attention")
        if len(student_blocks) != len(teacher_blocks):
            raise ValueError(
                f"student has {len(student_blocks)} blocks but teacher has {len(teacher_blocks)}"
            )
        block_losses = []
        with fp32_context(student_blocks[0][0]):
            for index, (s_gates, t_gates) in enumerate(zip(student_blocks, teacher_blocks, strict=True)):
                distances = []
                for kind, s, t in zip(("channel", "spatial"), s_gates, t_gates, strict=True):
                    if s.shape != t.shape:
                        raise ValueError(f"block {index} {kind} gate: student shape {tuple(s.shape)} != "
                                         f"teacher shape {tuple(t.shape)}")
                    distances.append((1.0 - flattened_cosine(s.float(), t.detach().float())).mean())
                block_losses.append((distances[0] + distances[1]) / 2)
            return torch.stack(block_losses).mean()


def _attention_blocks(blocks: Sequence[tuple[Tensor, Tensor]], role: str) -> list[tuple[Tensor, Tensor]]:
    """Validate a list of (channel_gate, spatial_gate) pairs."""
    if isinstance(blocks, Tensor) or not isinstance(blocks, (list, tuple)) or len(blocks) == 0:
        raise TypeError(f"{role} must be a non-empty list/tuple of (channel_gate, spatial_gate) pairs")
    for index, block in enumerate(blocks):
        if (not isinstance(block, (list, tuple)) or len(block) != 2
                or not all(isinstance(gate, Tensor) for gate in block)):
            raise TypeError(f"{role}[{index}] must be a (channel_gate, spatial_gate) pair of tensors")
    return [(block[0], block[1]) for block in blocks]


class FitNetLoss(DistillationLoss):
    """FitNet: mean over stages of MSE(adapted student map, teacher map), mean reduction.

    The student maps must already have passed ``HintAdapters``; shapes must match pairwise.
    """

    name: ClassVar[str] = "fitnet"
    needs_hint: ClassVar[bool] = True
    default_weight: ClassVar[float] = 1.5

    def forward(self, student_adapted: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
        pairs = paired_stages(student_adapted, teacher_features)
        with fp32_context(pairs[0][0]):
            return torch.stack([F.mse_loss(s.float(), t.detach().float()) for s, t in pairs]).mean()


class AttentionTransferLoss(DistillationLoss):
    """Attention transfer (Zagoruyko & Komodakis): spatial energy maps compared by MSE.

    Per stage ``a = sum_c f^2`` flattened per sample to (B, H*W) and divided by (its L2 norm + 1e-6);
    ``MSE(a_student, a_teacher)`` with mean reduction; mean over stages. Channel counts may differ between
    student and teacher; batch and spatial sizes must match.
    """

    name: ClassVar[str] = "at"
    same_channels: ClassVar[bool] = False
    default_weight: ClassVar[float] = 1000.0

    def forward(self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
        student_list = as_tensor_list(student_features, "student_features")
        teacher_list = as_tensor_list(teacher_features, "teacher_features")
        if len(student_list) != len(teacher_list):
            raise ValueError(f"student has {len(student_list)} stages but teacher has {len(teacher_list)}")
        for index, (s, t) in enumerate(zip(student_list, teacher_list, strict=True)):
            if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
                raise ValueError(f"stage {index}: student shape {tuple(s.shape)} and teacher shape "
                                 f"{tuple(t.shape)} must both be (B, C, H, W) with equal B, H, W")
        with fp32_context(student_list[0]):
            stage_losses = [
                F.mse_loss(_attention_map(s.float()), _attention_map(t.detach().float()))
                for s, t in zip(student_list, teacher_list, strict=True)
            ]
            return torch.stack(stage_losses).mean()


def _attention_map(feature: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W): channel-summed squares, divided by (L2 norm + eps) per sample."""
    energy = (feature * feature).sum(dim=1).reshape(feature.shape[0], -1)
    return energy / (energy.norm(dim=1, keepdim=True) + ATTENTION_TRANSFER_EPS)


def _single_or_list(values: Tensor | Sequence[Tensor], role: str) -> list[Tensor]:
    """Accept one tensor or a list/tuple of tensors (then the loss is averaged over the entries)."""
    return [values] if isinstance(values, Tensor) else as_tensor_list(values, role)


class RelationalKDLoss(DistillationLoss):
    """Relational KD (Park et al. 2019) on embeddings (B, E): distance term + angle term.

    * distance: pairwise Euclidean distances (zero diagonal) divided by the mean of the non-zero
      distances, smooth-L1 (beta 1, mean over the B x B matrix) between student and teacher;
    * angle: for all B^3 triplets (i, j, k), the cosine between the normalised difference vectors
      ``e_j - e_i`` and ``e_k - e_i`` (a zero difference normalises to the zero vector, as in the RKD
      reference code), smooth-L1 over the B^3 values.

    ``total = distance_weight * distance + angle_weight * angle``. Student and teacher may have different
    embedding sizes; B >= 2 is required. A tensor or a list of tensors (averaged) is accepted.
    """

    name: ClassVar[str] = "rkd"
    inputs: ClassVar[str] = "embedding"
    default_weight: ClassVar[float] = 40.0

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__()
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, student_embedding: Tensor | Sequence[Tensor],
                teacher_embedding: Tensor | Sequence[Tensor]) -> Tensor:
        pairs = self._pairs(student_embedding, teacher_embedding)
        with fp32_context(pairs[0][0]):
            losses = [
                self.distance_weight * self.distance_term(s, t) + self.angle_weight * self.angle_term(s, t)
                for s, t in pairs
            ]
            return torch.stack(losses).mean()

    def distance_term(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        """Smooth-L1 between mean-normalised pairwise distance matrices (unweighted)."""
        with fp32_context(student_embedding):
            student_distances = _normalised_distances(student_embedding.float())
            with torch.no_grad():
                teacher_distances = _normalised_distances(teacher_embedding.detach().float())
            return F.smooth_l1_loss(student_distances, teacher_distances)

    def angle_term(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        """Smooth-L1 between the triplet angle cosines (unweighted)."""
        with fp32_context(student_embedding):
            student_angles = _triplet_cosines(student_embedding.float())
            with torch.no_grad():
                teacher_angles = _triplet_cosines(teacher_embedding.detach().float())
            return F.smooth_l1_loss(student_angles, teacher_angles)

    @staticmethod
    def _pairs(
        student: Tensor | Sequence[Tensor], teacher: Tensor | Sequence[Tensor]
    ) -> list[tuple[Tensor, Tensor]]:
        student_list = _single_or_list(student, "student_embedding")
        teacher_list = _single_or_list(teacher, "teacher_embedding")
        if len(student_list) != len(teacher_list):
            raise ValueError(f"got {len(student_list)} student and {len(teacher_list)} teacher embeddings")
        for index, (s, t) in enumerate(zip(student_list, teacher_list, strict=True)):
            if s.dim() != 2 or t.dim() != 2 or s.shape[0] != t.shape[0] or s.shape[0] < 2:
                raise ValueError(f"embedding {index}: expected (B, E) tensors with the same B >= 2, got "
                                 f"student {tuple(s.shape)} and teacher {tuple(t.shape)}")
        return list(zip(student_list, teacher_list, strict=True))


def _normalised_distances(embedding: Tensor) -> Tensor:
    """Pairwise Euclidean distances (B, B), zero diagonal, divided by the mean of the non-zero entries.

    Squared distances are clamped at 1e-12 before the square root (finite gradient for coincident points),
    as in the RKD reference code.
    """
    differences = embedding.unsqueeze(0) - embedding.unsqueeze(1)
    distances = differences.pow(2).sum(dim=2).clamp(min=1e-12).sqrt()
    off_diagonal = 1.0 - torch.eye(embedding.shape[0], device=embedding.device, dtype=embedding.dtype)
    distances = distances * off_diagonal
    # The mean of the positive entries as a sum over a count: boolean indexing (distances[distances > 0]) has a
    # data-dependent size and makes the host wait for a GPU; zeros add nothing to the sum.
    return distances / (distances.sum() / (distances > 0).sum())


def _triplet_cosines(embedding: Tensor) -> Tensor:
    """Flattened (B^3,) cosines of the angle at e_i between e_j and e_k, for all (i, j, k)."""
    # differences[i, j] = e_j - e_i, normalised (a zero vector stays zero)
    differences = F.normalize(embedding.unsqueeze(0) - embedding.unsqueeze(1), p=2, dim=2)
    return torch.bmm(differences, differences.transpose(1, 2)).reshape(-1)


class LogitKDLoss(DistillationLoss):
    """Hinton KD on logits: ``KL(softmax(z_t / T) || softmax(z_s / T)) * T^2``, batch-mean reduction.

    As the later F-SKD code's optional logit distillation (T = 4) on the margin-head logits. A tensor or a
    list of tensors (averaged) is accepted.
    """

    name: ClassVar[str] = "hkd"
    inputs: ClassVar[str] = "logits"
    default_weight: ClassVar[float] = 1.0

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: Tensor | Sequence[Tensor],
                teacher_logits: Tensor | Sequence[Tensor]) -> Tensor:
        student_list = _single_or_list(student_logits, "student_logits")
        teacher_list = _single_or_list(teacher_logits, "teacher_logits")
        if len(student_list) != len(teacher_list):
            raise ValueError(f"got {len(student_list)} student and {len(teacher_list)} teacher logit tensors")
        for index, (s, t) in enumerate(zip(student_list, teacher_list, strict=True)):
            if s.dim() != 2 or s.shape != t.shape or s.shape[0] == 0:
                raise ValueError(f"logits {index}: expected equal non-empty (B, K) shapes, got student "
                                 f"{tuple(s.shape)} and teacher {tuple(t.shape)}")
        temperature = self.temperature
        with fp32_context(student_list[0]):
            losses = [
                F.kl_div(F.log_softmax(s.float() / temperature, dim=1),
                         F.softmax(t.detach().float() / temperature, dim=1),
                         reduction="batchmean") * temperature * temperature
                for s, t in zip(student_list, teacher_list, strict=True)
            ]
            return torch.stack(losses).mean()

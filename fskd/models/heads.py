"""Classification heads for face-recognition training: margin softmax variants and plain softmax.

Every head maps embeddings (B, E) and integer labels (B,) to logits (B, num_classes) meant for
``torch.nn.functional.cross_entropy``; the margin is applied on the target column only and the result
is already multiplied by the scale ``s``. ``logits(embeddings)`` gives the margin-free scaled cosine
(what evaluation or logit distillation should use).

All arithmetic runs in float32 even inside ``torch.autocast``: margin formulas (acos, sqrt(1 - cos^2),
``s * cos`` with s = 64) lose too much precision in bf16/fp16.

Heads (defaults as in the F-SKD paper-era code, see docs/fskd-method.md section 2):

* :class:`CosFace`  ``s * (cos - m)`` on the target, s=30, m=0.25.
* :class:`ArcFace`  ``s * cos(theta + m)`` on the target with the usual monotonic fallback, s=30, m=0.5.
* :class:`AdaFace`  norm-adaptive margin (Kim et al. 2022, mk-minchul/AdaFace), s=64, m=0.4, h=0.333.
  Needs the *unnormalised* embeddings because the margin depends on their norm.
* :class:`SoftmaxHead` plain linear layer with bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _labels_as_tensor(labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(f"labels must have shape ({batch_size},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.long()


class ClassificationHead(nn.Module):
    """Common base: holds ``weight`` (num_classes, embedding_size) and validates inputs.

    Subclasses implement :meth:`forward` (training logits with margin) and :meth:`logits` (no margin).

    Args:
        embedding_size: dimension of the embeddings.
        num_classes: number of identities.
        check_labels: verify ``0 <= label < num_classes`` on every call. This reads the labels' min/max
            back to the host (a device sync on GPU); disable it in hot loops once the data are trusted.
    """

    def __init__(self, embedding_size: int, num_classes: int, check_labels: bool = True) -> None:
        super().__init__()
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.check_labels = check_labels
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)

    def _check_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}"
            )

    def _validate_labels(self, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        labels = _labels_as_tensor(labels, batch_size)
        if self.check_labels and labels.numel() > 0:
            invalid = (labels < 0) | (labels >= self.num_classes)
            if bool(invalid.any()):
                bad = int(labels[invalid][0])
                raise ValueError(f"label {bad} is out of range [0, {self.num_classes})")
        return labels

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """fp32 cosine between each embedding and each class weight, shape (B, num_classes).

        Call inside an autocast-disabled region (the public methods do).
        """
        self._check_embeddings(embeddings)
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free logits (B, num_classes) in fp32; implemented by subclasses."""
        raise NotImplementedError

    def _one_hot(self, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.num_classes).to(like.dtype)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"


class _ScaledCosineHead(ClassificationHead):
    """Base of the normalised-softmax heads: ``logits()`` = ``s * cos``."""

    def __init__(self, embedding_size: int, num_classes: int, s: float, check_labels: bool = True) -> None:
        super().__init__(embedding_size, num_classes, check_labels)
        if not s > 0:
            raise ValueError(f"scale s must be > 0, got {s}")
        self.s = float(s)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Scaled cosine without margin, fp32, shape (B, num_classes)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.s * self.cosine(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin logits (B, num_classes), fp32, scaled by ``s``, for cross entropy."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = self.cosine(embeddings)
            labels = self._validate_labels(labels, embeddings.shape[0])
            return self.s * self._apply_margin(cosine, labels, embeddings)

    def _apply_margin(self, cosine: Tensor, labels: Tensor, embeddings: Tensor) -> Tensor:
        raise NotImplementedError


class CosFace(_ScaledCosineHead):
    """Large-margin cosine loss head: ``s * (cos - m * onehot)``.

    Defaults s=30, m=0.25 are the F-SKD paper-era values (m hard-coded there).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 30.0,
        m: float = 0.25,
        check_labels: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, check_labels)
        self.m = float(m)

    def _apply_margin(self, cosine: Tensor, labels: Tensor, embeddings: Tensor) -> Tensor:
        return cosine - self.m * self._one_hot(labels, cosine)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


class ArcFace(_ScaledCosineHead):
    """Additive angular margin head: ``s * cos(theta + m)`` on the target column.

    Guards: the target cosine is clamped to [-1+eps, 1-eps] before ``sine = sqrt(clamp(1 - cos^2, min=0))``
    so the gradient stays finite at cos = +-1. Without ``easy_margin``, where ``theta + m`` would pass pi
    (cos <= cos(pi - m)) the logit becomes ``cos - sin(pi - m) * m`` to keep it decreasing in theta; with
    ``easy_margin`` the margin is only applied where cos > 0. Non-target columns are the plain cosine.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 30.0,
        m: float = 0.5,
        easy_margin: bool = False,
        eps: float = 1e-6,
        check_labels: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, check_labels)
        if not 0.0 <= m < math.pi:
            raise ValueError(f"ArcFace margin m must be in [0, pi), got {m}")
        self.m = float(m)
        self.easy_margin = easy_margin
        self.eps = float(eps)
        self.cos_m = math.cos(m)
        self.sin_m = math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def _apply_margin(self, cosine: Tensor, labels: Tensor, embeddings: Tensor) -> Tensor:
        target = cosine.gather(1, labels[:, None]).clamp(-1.0 + self.eps, 1.0 - self.eps)
        sine = torch.sqrt(torch.clamp(1.0 - target * target, min=0.0))
        phi = target * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = torch.where(target > 0, phi, target)
        else:
            phi = torch.where(target > self.th, phi, target - self.mm)
        return cosine.scatter(1, labels[:, None], phi)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, easy_margin={self.easy_margin}"


class AdaFace(_ScaledCosineHead):
    """Quality-adaptive margin head (AdaFace, mk-minchul/AdaFace).

    ``forward`` takes the raw, unnormalised embeddings: their L2 norm (clipped to [0.001, 100], detached)
    is the image-quality proxy. A running mean/std of the clipped norms (buffers ``batch_mean``,
    ``batch_std``, initialised to 20 and 100 as in the reference) is updated with momentum ``t_alpha``
    in training mode only (before being used, as in the reference). With
    ``scaler = clip((norm - mean) / (std + eps) * h, -1, 1)`` the target logit is
    ``s * (cos(clip(theta - m * scaler, eps, pi - eps)) - (m + m * scaler))`` where
    ``theta = acos(clamp(cos, -1 + eps, 1 - eps))`` and eps = 1e-3. Non-target columns are ``s * cos``
    (the reference also clamps those cosines to +-(1 - 1e-3); that difference is omitted).
    The std update needs at least two samples; with a batch of one only the mean is updated.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        check_labels: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, check_labels)
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"t_alpha must be in [0, 1], got {t_alpha}")
        self.m = float(m)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.eps = float(eps)
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def _apply_margin(self, cosine: Tensor, labels: Tensor, embeddings: Tensor) -> Tensor:
        norms = embeddings.float().norm(dim=1, keepdim=True)
        safe_norms = norms.clamp(min=0.001, max=100.0).detach()
        if self.training:
            self._update_statistics(safe_norms)
        scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps) * self.h
        scaler = scaler.clamp(-1.0, 1.0)
        g_angle = -self.m * scaler
        g_add = self.m + self.m * scaler
        target = cosine.gather(1, labels[:, None]).clamp(-1.0 + self.eps, 1.0 - self.eps)
        theta = torch.acos(target)
        target_logit = torch.cos((theta + g_angle).clamp(self.eps, math.pi - self.eps)) - g_add
        return cosine.scatter(1, labels[:, None], target_logit)

    @torch.no_grad()
    def _update_statistics(self, safe_norms: torch.Tensor) -> None:
        alpha = self.t_alpha
        self.batch_mean.mul_(1.0 - alpha).add_(alpha * safe_norms.mean())
        if safe_norms.numel() > 1:
            self.batch_std.mul_(1.0 - alpha).add_(alpha * safe_norms.std())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


class SoftmaxHead(ClassificationHead):
    """Plain softmax classifier: ``embeddings @ weight.T + bias`` (no normalisation, no margin)."""

    def __init__(self, embedding_size: int, num_classes: int, check_labels: bool = True) -> None:
        super().__init__(embedding_size, num_classes, check_labels)
        self.bias = nn.Parameter(torch.empty(num_classes))
        # nn.Linear's default initialisation, so the head behaves like a stock linear classifier.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(embedding_size)
        nn.init.uniform_(self.bias, -bound, bound)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Linear logits (B, num_classes), fp32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            self._check_embeddings(embeddings)
            return F.linear(embeddings.float(), self.weight.float(), self.bias.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`logits` (labels are only validated)."""
        self._validate_labels(labels, embeddings.shape[0])
        return self.logits(embeddings)


_HEADS: dict[str, type[ClassificationHead]] = {
    "cosface": CosFace,
    "arcface": ArcFace,
    "adaface": AdaFace,
    "softmax": SoftmaxHead,
}


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`."""
    return list(_HEADS)


def create_head(name: str, embedding_size: int, num_classes: int, **kwargs: object) -> ClassificationHead:
    """Build a head by name (``cosface``, ``arcface``, ``adaface``, ``softmax``); kwargs go to its class."""
    key = name.lower()
    if key not in _HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[key](embedding_size, num_classes, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "AdaFace",
    "ArcFace",
    "ClassificationHead",
    "CosFace",
    "SoftmaxHead",
    "create_head",
    "list_heads",
]

"""Closed-set face identification (TinyFace protocol): embedding extraction and CMC scores.

Protocol (``docs/fskd-method.md`` section 5.2, AdaFace's / F-SKD's TinyFace helper): every probe and
gallery image is embedded with flip test-time augmentation (the mean of the features of the image and of its
mirror), L2-normalised, and compared by cosine similarity with the whole gallery (matching identities plus
distractors, which carry the label `DISTRACTOR_LABEL` and never match). A probe is correct at rank k when its
label is among the labels of the k most similar gallery *items* (the CMC curve).

`cmc_scores` never builds the probe x gallery matrix: it walks over blocks of probes and blocks of gallery
items and keeps a running top-k per probe, so a TinyFace-sized gallery (~160k items) needs memory
O(chunk x chunk + probes x k). Ranking is deterministic: features are L2-normalised in float64 and stored as
float32, similarities are computed in float64 and rounded to float32, then ordered by (similarity descending,
gallery index ascending), so ties go to the lower gallery index whatever the chunk sizes (see `rank_gallery`).

The ranking always runs on the CPU, whatever device embedded the images (`embed_images` returns numpy arrays):
float64 runs at 1/32-1/64 of the float32 rate on most GPUs, and float32 similarities would order near-ties
differently from one device or BLAS to another. TinyFace's 3,728 probes x 157,871 gallery items x 512
dimensions are 0.6 TFLOP of float64, seconds on a few CPU cores, against minutes of embedding.

Gallery layouts on disk (TinyFace, identity folders) are read by `fskd.data.layouts`. Plain PyTorch and
numpy; no Lightning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from fskd.data.degrade import MODES, degrade_fixed
from fskd.data.images import IMAGE_SIZE, normalize
from fskd.data.layouts import DISTRACTOR_LABEL
from fskd.data.sources import EncodedImages

DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10, 20)
"""Ranks reported by the TinyFace protocol."""

FUSIONS: tuple[str, ...] = ("mean", "concat")

_INDEX_BITS = 32
_INDEX_SPAN = 1 << _INDEX_BITS


# ---------------------------------------------------------------------------------------------------------
# Ranking and CMC
# ---------------------------------------------------------------------------------------------------------


def _as_features(features: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """L2-normalised rows on the CPU (computed in float64, stored as float32 to halve the memory of a large
    gallery)."""
    tensor = torch.as_tensor(features).detach().cpu()
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, E) feature matrix, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return torch.nn.functional.normalize(tensor.to(torch.float64), dim=1).to(torch.float32)


def _as_labels(labels: np.ndarray | torch.Tensor | Sequence[int], count: int, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(labels))
    if tensor.ndim != 1 or tensor.shape[0] != count:
        raise ValueError(f"{name} must be a 1-D array of {count} labels, got shape {tuple(tensor.shape)}")
    if tensor.numel() and (tensor.is_floating_point() or tensor.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer labels, got {tensor.dtype}")
    return tensor.to(torch.int64)


def _ordering_keys(scores: torch.Tensor, first_index: int) -> torch.Tensor:
    """Unique int64 keys whose descending order is (score descending, gallery index ascending).

    The float32 score's bits are mapped to an int32 with the same order (negative floats have their magnitude
    bits flipped), shifted up 32 bits, and the complement of the gallery index fills the low bits: ``topk`` on
    distinct integers has exactly one answer, so ties are broken the same way whatever the chunking.
    """
    scores = scores.to(torch.float32) + 0.0  # -0.0 + 0.0 == +0.0: equal scores get equal bits
    bits = scores.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    index = torch.arange(first_index, first_index + scores.shape[1], device=scores.device, dtype=torch.int64)
    return ordered * _INDEX_SPAN + (_INDEX_SPAN - 1 - index)


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `_ordering_keys`: (gallery index, float32 score)."""
    index = _INDEX_SPAN - 1 - torch.remainder(keys, _INDEX_SPAN)
    ordered = torch.div(keys, _INDEX_SPAN, rounding_mode="floor").to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return index, bits.view(torch.float32)


def rank_gallery(probe: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int,
                 chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar gallery items of every probe, by cosine similarity of L2-normalised features.

    Returns ``(indices, scores)``, both (N, min(k, M)): gallery indices (int64) and float32 similarities,
    best first; ties go to the lower gallery index. Probes and gallery are processed in blocks of
    ``chunk_size`` rows, merging each block's candidates into a running top-k per probe; the similarities are
    float64 products on the CPU (tensors on a device are copied there first, see the module doc).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    probe_t = _as_features(probe, "probe")
    gallery_t = _as_features(gallery, "gallery")
    if probe_t.shape[1] != gallery_t.shape[1]:
        raise ValueError(f"probe features have {probe_t.shape[1]} dimensions, gallery {gallery_t.shape[1]}")
    if gallery_t.shape[0] >= _INDEX_SPAN:
        raise ValueError(f"galleries of {_INDEX_SPAN} items or more are not supported")
    keep = min(k, gallery_t.shape[0])
    best_keys: list[torch.Tensor] = []
    for probe_start in range(0, probe_t.shape[0], chunk_size):
        probe_block = probe_t[probe_start:probe_start + chunk_size].to(torch.float64)
        running: torch.Tensor | None = None
        for gallery_start in range(0, gallery_t.shape[0], chunk_size):
            scores = probe_block @ gallery_t[gallery_start:gallery_start + chunk_size].to(torch.float64).T
            keys = _ordering_keys(scores, gallery_start)
            candidates = keys if running is None else torch.cat((running, keys), dim=1)
            running = torch.topk(candidates, min(keep, candidates.shape[1]), dim=1, sorted=True).values
        best_keys.append(running)
    indices, scores = _decode_keys(torch.cat(best_keys))
    return indices.numpy(), scores.numpy()


def cmc_scores(probe: np.ndarray | torch.Tensor, probe_labels: np.ndarray | Sequence[int],
               gallery: np.ndarray | torch.Tensor, gallery_labels: np.ndarray | Sequence[int],
               ranks: Sequence[int] = DEFAULT_RANKS, chunk_size: int = 4096) -> dict[int, float | None]:
    """Closed-set CMC: for each rank r, the fraction of probes whose label is among the top-r gallery items
    (ranked on the CPU in float64 by `rank_gallery`).

    Features need not be normalised (they are L2-normalised here). Gallery items labelled `DISTRACTOR_LABEL`
    never match. A rank larger than the gallery (its number of items) is not applicable and maps to ``None``:
    the top r of a smaller gallery would be the whole gallery, a trivial figure (100 % without distractors)
    that would read like a result (`ranks_beyond_gallery` lists them). Probes whose identity is not in the
    gallery count as misses (closed-set protocol).
    """
    ranks = [int(r) for r in ranks]
    if not ranks or min(ranks) < 1:
        raise ValueError(f"ranks must be positive integers, got {ranks}")
    probe_count = torch.as_tensor(probe).shape[0]
    gallery_count = torch.as_tensor(gallery).shape[0]
    probe_labels_t = _as_labels(probe_labels, probe_count, "probe_labels")
    gallery_labels_t = _as_labels(gallery_labels, gallery_count, "gallery_labels")
    indices, _ = rank_gallery(probe, gallery, max(ranks), chunk_size)
    top_labels = gallery_labels_t[torch.from_numpy(indices)]
    hits = (top_labels == probe_labels_t[:, None]) & (top_labels != DISTRACTOR_LABEL)
    first_hit_within = torch.cumsum(hits.to(torch.int64), dim=1) > 0
    results: dict[int, float | None] = {}
    for rank in ranks:
        if rank > gallery_count:
            results[rank] = None
            continue
        results[rank] = float(first_hit_within[:, rank - 1].to(torch.float64).mean())
    return results


def ranks_beyond_gallery(ranks: Sequence[int], gallery_size: int) -> list[int]:
    """The ranks of ``ranks`` that exceed a gallery of ``gallery_size`` items (not applicable in a CMC)."""
    return [int(rank) for rank in ranks if int(rank) > gallery_size]


# ---------------------------------------------------------------------------------------------------------
# Embedding extraction
# ---------------------------------------------------------------------------------------------------------


def _embedding_of(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    output = model(images)
    return output.embedding if hasattr(output, "embedding") else output


@torch.no_grad()
def embed_images(backbone: torch.nn.Module, paths_or_bytes: Sequence[str | os.PathLike | bytes],
                 batch_size: int = 64, resolution: int = IMAGE_SIZE, interpolation: str = "nearest",
                 flip: bool = True, device: str | torch.device = "cpu", fusion: str = "mean",
                 num_workers: int = 0) -> np.ndarray:
    """Embed images for identification: float32 (N, E) L2-normalised rows, in input order.

    Each image is decoded to 112x112 RGB, normalised to [-1, 1] and, when ``resolution`` is below 112,
    degraded on ``device`` (down to ``resolution`` and back up with ``interpolation``, `degrade_fixed`). With
    ``flip`` the mirror image of the (degraded) face is embedded too and fused with it: ``"mean"`` (TinyFace
    protocol) or ``"concat"`` (2E columns, the F-SKD verification protocol). The backbone is used in eval mode
    without gradients (its training flag is restored afterwards) and moved to ``device``. Any module that
    returns an embedding tensor, or an object with an ``embedding`` attribute, works.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
    if interpolation not in MODES:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= resolution <= IMAGE_SIZE:
        raise ValueError(f"resolution must be in 1..{IMAGE_SIZE}, got {resolution}")
    if len(paths_or_bytes) == 0:
        raise ValueError("no images to embed")
    device = torch.device(device)
    was_training = backbone.training
    backbone.to(device).eval()
    loader = DataLoader(EncodedImages(paths_or_bytes), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    rows: list[np.ndarray] = []
    try:
        for batch in loader:
            images = normalize(batch.to(device, non_blocking=True))
            images = degrade_fixed(images, resolution, interpolation)
            features = _embedding_of(backbone, images).float()
            if flip:
                flipped = _embedding_of(backbone, torch.flip(images, dims=(3,))).float()
                features = (features + flipped) / 2 if fusion == "mean" else torch.cat((features, flipped), 1)
            rows.append(torch.nn.functional.normalize(features, dim=1).cpu().numpy())
    finally:
        backbone.train(was_training)
    return np.concatenate(rows).astype(np.float32, copy=False)


__all__ = ["DEFAULT_RANKS", "cmc_scores", "embed_images", "rank_gallery", "ranks_beyond_gallery"]

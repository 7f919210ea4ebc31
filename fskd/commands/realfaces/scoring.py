"""Scoring one model on one fold's test people: verification at every resolution and cross (HR vs 14 px), both
10-fold protocols, and closed-set identification (one HR gallery face per person, degraded probes), with the
project's own evaluation functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fskd.data.degrade import degrade_fixed
from fskd.data.images import normalize
from fskd.evaluation.identification import cmc_scores
from fskd.evaluation.verification import evaluate_pairs

CROSS = "cross14"
"""The cross-resolution condition: first image of each pair at 112 px, second at 14 px."""


@torch.no_grad()
def embed(backbone: torch.nn.Module, faces: torch.Tensor, resolution: int, batch_size: int = 64,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of uint8 faces (N, 3, 112, 112) degraded to ``resolution`` (nearest, as validation), and of
    their mirror images (the flip of the degraded face)."""
    backbone.eval()
    plain, mirrored = [], []
    for start in range(0, faces.shape[0], batch_size):
        views = degrade_fixed(normalize(faces[start:start + batch_size]), resolution, "nearest")
        plain.append(backbone(views).embedding.float())
        mirrored.append(backbone(views.flip(-1)).embedding.float())
    return torch.cat(plain).numpy(), torch.cat(mirrored).numpy()


def score(backbone: torch.nn.Module, faces: torch.Tensor, labels: Sequence[int], pairs: Sequence[tuple[int, int]],
          issame: np.ndarray, gallery: Sequence[int], resolutions: Sequence[int]) -> list[dict[str, Any]]:
    """One row per resolution (and `CROSS`): ``acc``/``acc_std`` (authors' protocol), ``insightface_acc``,
    ``rank1`` (probes at that resolution against the HR gallery; for `CROSS` the 14 px probes)."""
    index = np.asarray(pairs).reshape(-1)
    labels = np.asarray(labels)
    gallery = np.asarray(gallery)
    probes = np.setdiff1d(np.arange(faces.shape[0]), gallery)
    views = {r: embed(backbone, faces, r) for r in sorted({*resolutions, 112, 14}, reverse=True)}
    rows = []
    for condition in [*resolutions, CROSS]:
        if condition == CROSS:
            left, right = views[112], views[14]
            # pair i: image 2i at 112 px, image 2i+1 at 14 px
            plain = np.where((np.arange(index.size) % 2 == 0)[:, None], left[0][index], right[0][index])
            flipped = np.where((np.arange(index.size) % 2 == 0)[:, None], left[1][index], right[1][index])
            probe_view = views[14]
        else:
            plain, flipped = views[condition][0][index], views[condition][1][index]
            probe_view = views[condition]
        accuracy = evaluate_pairs(plain, flipped, issame)
        probe_features = probe_view[0][probes] + probe_view[1][probes]
        gallery_features = views[112][0][gallery] + views[112][1][gallery]
        rank1 = cmc_scores(probe_features, labels[probes], gallery_features, labels[gallery], ranks=(1,))[1]
        rows.append({"resolution": str(condition), "acc": accuracy["fskd"][0], "acc_std": accuracy["fskd"][1],
                     "insightface_acc": accuracy["insightface"][0], "rank1": rank1})
    return rows

"""Mining the positives of ``fskd_cross``: the frozen teacher embeds every training image once, and the table of
`fskd.data.positives` is built from those embeddings and the labels, then kept next to the teacher checkpoint.

`refresh_positives` reuses the file when it fits the run (same images, labels, margin and teacher) and mines it
again otherwise, saying why. `DistillModule` calls it on process 0 at the start of a fit; the other processes
wait, then every process loads the same file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fskd.data.images import normalize
from fskd.data.positives import (
    PositiveKey,
    build_positive_table,
    dataset_labels,
    file_fingerprint,
    labels_hash,
    save_positives,
    stale_reason,
)


@torch.no_grad()
def teacher_embeddings(teacher: nn.Module, dataset: Dataset, device: torch.device | str, batch_size: int = 256,
                       num_workers: int = 0,
                       forward_context: Callable[[], AbstractContextManager] = nullcontext,
                       as_input: Callable[[torch.Tensor], torch.Tensor] = lambda images: images,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length float32 teacher embeddings (N, E) of every image of ``dataset`` (uint8 ``image`` items, as
    `fskd.data.datasets.open_training_set` gives), in dataset order, with the labels (N,) read alongside.

    The images are normalised as the DataModule normalises them (HR, no flip); the teacher must be in eval mode.
    ``forward_context`` wraps each forward pass (the trainer's precision, e.g. bf16 autocast); ``as_input``
    puts a batch in the teacher's memory format.
    """
    if teacher.training:
        raise ValueError("the teacher must be in eval mode to mine positives (BatchNorm running statistics)")
    # An own generator: an iterator draws its base seed from it, not from the global torch RNG, so a run that
    # mines and one that reuses the file continue with the same global random state (dropout, exact resumes).
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    embeddings, labels = [], []
    for batch in loader:
        images = normalize(batch["image"].to(device, non_blocking=True))
        with forward_context():
            embedding = teacher(as_input(images)).embedding
        embeddings.append(F.normalize(embedding.float(), dim=1).cpu())
        labels.append(torch.as_tensor(batch["label"]).long())
    return torch.cat(embeddings).numpy(), torch.cat(labels).numpy()


def refresh_positives(path: str | os.PathLike, teacher_ckpt: str | os.PathLike, dataset: Dataset,
                      cross_margin: float, embed: Callable[[Dataset], tuple[np.ndarray, np.ndarray]]) -> bool:
    """Make ``path`` hold the positives of ``dataset`` for this teacher and margin: keep the file when its key
    matches, else mine (``embed(dataset)`` gives the embeddings and labels) and write it atomically.

    Returns True when it mined. Prints one line either way (why it mines, or which file it reuses).
    """
    labels = dataset_labels(dataset)
    key = PositiveKey(num_images=len(labels), labels_hash=labels_hash(labels), cross_margin=float(cross_margin),
                      teacher_fingerprint=file_fingerprint(teacher_ckpt))
    reason = stale_reason(path, key)
    if reason is None:
        rank_zero_info(f"fskd_cross: reusing the positives in {path}")
        return False
    rank_zero_info(f"fskd_cross: mining positives with the teacher ({reason})")
    embeddings, mined_labels = embed(dataset)
    if not np.array_equal(mined_labels, labels):
        raise ValueError(f"the labels read while embedding the training set differ from its stored labels "
                         f"({len(mined_labels)} vs {len(labels)} items); is the dataset changing under the run?")
    table = build_positive_table(embeddings, labels, cross_margin)
    save_positives(path, table, key)
    counts = table.counts()
    rank_zero_info(f"fskd_cross: wrote {Path(path)}: {int((counts > 0).sum())} of {len(table)} images have a "
                   f"positive, {float(counts.mean()):.1f} candidates per image on average")
    return True

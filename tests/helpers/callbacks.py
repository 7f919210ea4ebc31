"""Callbacks that tests attach to a run through ``--trainer.callbacks+=tests.helpers.callbacks.NAME``."""

from __future__ import annotations

from typing import Any

import lightning as L

#: What `HeldFeaturesProbe` saw, one entry per evaluation batch: (loader, finished loaders, loaders holding
#: features). A module-level list, because LightningCLI builds the callback itself.
HELD: list[tuple[int, list[int], list[int]]] = []


class HeldFeaturesProbe(L.Callback):
    """After every validation batch, records which loaders' accuracies are computed and which still hold
    features in their metric."""

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        holding = [position for position, metric in enumerate(module.val_metrics) if len(metric.embeddings)]
        HELD.append((dataloader_idx, sorted(module._computed_sets), holding))

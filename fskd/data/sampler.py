"""`ResumableSampler`: a training order that does not depend on the number of processes and resumes mid-epoch.

The order is defined for the *global* batch: epoch ``e`` is a permutation of the dataset seeded by
``seed + e`` (as `torch.utils.data.DistributedSampler`), cut into global batches of ``B`` samples. The last,
partial global batch is completed with the first samples of the same permutation (or dropped with
``drop_last``), so every global batch is full. Process ``r`` of ``W`` takes positions ``r, r + W, ...`` of
each global batch, i.e. its per-process batch of ``B / W`` samples is one slice of the same global batch: the
global batches are the same for any number of processes.

The position is ``(epoch, consumed)``: the epoch and the number of *global* samples of it already trained on.
It is advanced by its owner (the DataModule, once per batch that reaches the model, see `advance`) rather
than by iteration, because loaders and Lightning fetch batches ahead of training. Each ``iter()`` yields the
rest of the epoch from the current position, so a sampler restored with `load_state_dict` continues exactly
where the checkpointed run stopped, whatever Lightning believes about epochs.

It subclasses `DistributedSampler` only so that Lightning (``use_distributed_sampler``) leaves it in place.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Per-epoch shuffled, world-size-independent, resumable training order.

    Args:
        dataset: anything with a length (only ``len`` is used).
        global_batch_size: ``B``, the batch summed over all processes; a multiple of ``num_replicas``.
        num_replicas, rank: ``W`` processes and this one's rank (explicit: no process group is needed).
        seed: seed of the permutations (epoch ``e`` uses ``seed + e``).
        shuffle: ``False`` keeps the dataset order in every epoch (tests, debugging).
        drop_last: drop the last partial global batch instead of completing it.
        with_epoch: yield ``(index, epoch)`` pairs instead of indices, for datasets whose per-sample
            randomness is seeded from them (see ``fskd.data.datamodule``).
    """

    def __init__(self, dataset: Sized, global_batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 with_epoch: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        if global_batch_size < 1 or global_batch_size % num_replicas:
            raise ValueError(f"global batch size {global_batch_size} is not a positive multiple of "
                             f"{num_replicas} processes")
        self.size = len(dataset)
        if self.size == 0:
            raise ValueError("cannot sample from an empty dataset")
        if drop_last and self.size < global_batch_size:
            raise ValueError(f"drop_last with {self.size} samples and a global batch of {global_batch_size}: "
                             "an epoch would have no batch")
        self.global_batch_size = global_batch_size
        self.with_epoch = with_epoch
        self.consumed = 0
        # Overrides DistributedSampler's per-rank sizes: one full epoch of this rank's samples.
        self.total_size = self.epoch_length(0)
        self.num_samples = self.total_size // num_replicas

    # -- order -------------------------------------------------------------------------------------------
    def epoch_length(self, consumed: int) -> int:
        """Global positions of the epoch once ``consumed`` of them are done: whole global batches only."""
        remaining, batch = self.size - consumed, self.global_batch_size
        batches = remaining // batch if self.drop_last else math.ceil(remaining / batch)
        return consumed + max(batches, 0) * batch

    def global_order(self, epoch: int) -> torch.Tensor:
        """Dataset indices in the order of epoch ``epoch``, `epoch_length(0)` long (padded by wrapping)."""
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.size)
        length = self.epoch_length(0)
        if length > self.size:
            order = order.repeat(math.ceil(length / self.size))
        return order[:length]

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        # A generator: the position is read at the first next(), i.e. when the loader starts fetching.
        epoch, consumed = self.epoch, self.consumed
        end = self.epoch_length(consumed)
        order = self.global_order(epoch)
        if end > len(order):
            # A resumed position after a change of batch size may need more padding than epoch 0 did.
            order = order.repeat(math.ceil(end / len(order)))
        indices = order[consumed + self.rank:end:self.num_replicas].tolist()
        if self.with_epoch:
            yield from ((index, epoch) for index in indices)
        else:
            yield from indices

    def __len__(self) -> int:
        """This process's samples in a whole epoch (Lightning derives the batches per epoch from it)."""
        return self.num_samples

    # -- position ----------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Ignored: Lightning calls it with its own epoch count; the epoch here follows `advance` so that the
        order cannot drift from what was trained (for example after a resume from a mid-epoch checkpoint)."""

    def advance(self, global_samples: int) -> None:
        """Record that ``global_samples`` more samples (one global batch) reached the model; moves to the next
        epoch when this one is complete."""
        self.consumed += global_samples
        if self.consumed >= self.epoch_length(0) or self.epoch_length(self.consumed) == self.consumed:
            self.epoch += 1
            self.consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position. One saved for another dataset size cannot continue the same order: then the
        saved epoch restarts from its beginning, with a warning."""
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        if "size" in state and int(state["size"]) != self.size:
            warnings.warn(f"the training set has {self.size} samples, the checkpoint's position was saved "
                          f"with {int(state['size'])}: epoch {self.epoch} restarts from its first batch",
                          stacklevel=2)
            self.consumed = 0

"""`FaceDataModule`: face-recognition training images, verification pairs, and on-device degradation.

The loader workers only decode (and optionally run albumentations); flipping, normalisation and the
low-resolution degradation run in `on_after_batch_transfer`, batched on whatever device the batch reaches, with
draws from a generator owned by the DataModule so that they are reproducible from the seed.

The training order comes from `fskd.data.sampler.ResumableSampler`: defined for the global batch, so it does not
depend on the number of processes, and resumable mid-epoch. Its position and the flip/degradation generator are
the DataModule's state (saved in checkpoints) and advance together, once per training batch that reaches the
model (`on_after_batch_transfer`). The generator draws for the whole global batch on every process, each process
keeping the draws of its own samples, so these draws do not depend on the number of processes either. Optional
albumentations augmentations (in the workers) are seeded per sample from ``(seed, epoch, index)``.

Training batches become ``{"hr", "lr", "label"}``: ``hr`` the (flipped) normalised image, ``lr`` the same image
degraded by the training resolution policy (``lr is hr`` for policy 112). The teacher and the no-distillation
baselines train on ``lr``; the distillation student sees ``lr`` while its teacher sees ``hr``.

With a positives table (`set_positives`, for ``fskd_cross``) each training sample also brings a positive image
(another image of its identity, `fskd.data.positives`), and batches gain ``hr_positive``, ``lr_positive`` and
``has_positive``. The positives get the same flip rule and degradation policy with their own draws, made after
the anchors' from the same generator, so the anchors' views are exactly those of a run without positives.

Evaluation batches become ``{"image", "flipped", "index"}`` for one (verification set, resolution) pair per
dataloader; `val_specs` lists them in dataloader order.

Checks at setup, before the first training step: the verification sets are found (a file that differs from the
expected name only in case, ``LFW.bin`` for ``lfw``, is an error naming both) and listed once in the log; every
one of their images is read and decoded (`PairImageDataset.check_images`, a few seconds for the three standard
sets; skipped when the trainer's limit below is 0); the listed files of the folder layout exist; an empty
evaluation grid (``val_resolutions: []`` or ``val_sets: []``) and a ``limit_val_batches``/``limit_test_batches``
that would cut a set short are refused unless the limit is 0, which turns evaluation off (the 10-fold protocol
needs every pair of a set). A verification set without pairs is left out with a warning.

Suspicious inputs are warned about once per data set, with their count and the first one: images decoded
smaller than `fskd.data.images.SMALL_IMAGE_SIDE` pixels on a side (before the size rule scales them up), for a
verification set at setup, for the training set over the first epoch this process trains on (counted on the
host as the batches go by, from the sizes the datasets report, before the batch reaches the device).

Loader processes: only the training loader keeps persistent workers (``num_workers``, prefetch 4). Evaluation
loaders (validation, test, predict) start ``val_num_workers`` workers (default ``min(num_workers, 2)``, prefetch
2) when they are iterated and stop them at their end; Lightning iterates the dataloaders of one validation one
after another, so at most one evaluation loader has workers at a time, however many (set, resolution) pairs
there are. docs/benchmarks.md ("Loader processes and shared memory") gives the figures for the real config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from fskd.data.datasets import (
    PairImageDataset,
    has_verification_set,
    miscased_verification_files,
    open_training_set,
    open_verification_set,
    read_property,
)
from fskd.data.degrade import MODES, RANDOM_MODES, Degradation, DegradationPlan, degrade_fixed
from fskd.data.errors import DataFormatError
from fskd.data.folder import VERIFICATION_SETS
from fskd.data.images import IMAGE_SIZE, SMALL_IMAGE_SIDE, normalize
from fskd.data.positives import PositiveTable
from fskd.data.sampler import ResumableSampler
from fskd.data.transfer import to_device_async

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation dataloader: a verification set at one resolution.

    ``cross`` pairs keep the first image of each pair in HR and degrade the second (the authors' later
    cross-resolution protocol).
    """

    name: str
    resolution: int
    cross: bool
    issame: np.ndarray

    @property
    def tag(self) -> str:
        return f"cross{self.resolution}" if self.cross else str(self.resolution)


def _parse_resolution(value: int | str, image_size: int) -> tuple[int, bool]:
    text = str(value).strip().lower()
    cross = text.startswith("cross")
    number = text.removeprefix("cross")
    if not number.isdigit() or not 1 <= int(number) <= image_size:
        raise ValueError(f"evaluation resolution {value!r}: expected 1..{image_size} or 'cross<N>'")
    return int(number), cross


class _Augmented(Dataset):
    """Applies an albumentations pipeline to the uint8 (3, H, W) image of each item (in the worker).

    Keys are ``(index, epoch)`` pairs (`ResumableSampler` with ``with_epoch``) or plain indices (epoch 0). Every
    transform of the pipeline is seeded from ``(seed, epoch, index)`` before each sample, so the augmentation of
    a sample depends neither on the worker that loads it nor on what that worker loaded before: exact after a
    resume, with any number of workers.
    """

    def __init__(self, dataset: Dataset, transform: Any, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def _reseed(self, words: Sequence[int]) -> None:
        transforms = list(self.transform.transforms)
        seeds = np.random.SeedSequence([self.seed, *words]).generate_state(len(transforms) + 1)
        self.transform.set_random_seed(int(seeds[0]))
        # Distinct seeds per transform: one shared seed would make their random draws identical (correlated).
        for transform, seed in zip(transforms, seeds[1:], strict=True):
            transform.set_random_seed(int(seed))

    def augmented(self, index: int, words: Sequence[int]) -> dict[str, Any]:
        """Item ``index`` with the pipeline seeded from ``(seed, *words)``."""
        self._reseed([int(word) for word in words])
        item = dict(self.dataset[index])
        image = item["image"].permute(1, 2, 0).numpy()
        item["image"] = torch.from_numpy(self.transform(image=image)["image"]).permute(2, 0, 1).contiguous()
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        return self.augmented(index, (epoch, index))


#: Last seed word of a positive's augmentation (an anchor's seed words are ``(seed, epoch, index)``).
POSITIVE_AUGMENTATION_STREAM = 1


class _WithPositives(Dataset):
    """Adds a positive image to each training item: ``{"image", "label", "positive", "has_positive"}``.

    Keys are ``(index, epoch)`` pairs as for `_Augmented`. The positive is `PositiveTable.draw` of the index:
    uniform over its candidates and a function of ``(seed, epoch, index)``; an image without a candidate is
    paired with itself and ``has_positive`` False. With augmentation, the positive is augmented independently
    of its anchor, seeded from ``(seed, epoch, index, POSITIVE_AUGMENTATION_STREAM)``.
    """

    def __init__(self, dataset: Dataset, table: PositiveTable, seed: int = 0) -> None:
        if len(table) != len(dataset):
            raise ValueError(f"the positives table covers {len(table)} images, the training set has {len(dataset)}")
        self.dataset = dataset
        self.table = table
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(k) for k in key) if isinstance(key, tuple) else (int(key), 0)
        augmented = isinstance(self.dataset, _Augmented)
        item = dict(self.dataset[(index, epoch)] if augmented else self.dataset[index])
        positive = self.table.draw(index, self.seed, epoch)
        if positive is None:
            item["positive"], item["has_positive"] = item["image"], False
        elif augmented:
            words = (epoch, index, POSITIVE_AUGMENTATION_STREAM)
            item["positive"], item["has_positive"] = self.dataset.augmented(positive, words)["image"], True
        else:
            item["positive"], item["has_positive"] = self.dataset[positive]["image"], True
        return item


class _TrainLoader(DataLoader):
    """The training DataLoader, resumable through its `ResumableSampler`.

    Lightning saves ``state_dict()`` with the fit loop and recognises the loader as resumable (no mid-epoch
    warning). The same position is also in the DataModule's state, restored earlier, so loading it here again is
    a no-op kept for consistency.
    """

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class FaceDataModule(L.LightningDataModule):
    """CASIA-WebFace-style training data, verification pairs and low-resolution degradation.

    Args:
        root: folder with ``train.rec``/``train.idx`` (+ ``property``) and ``<set>.bin`` files (insightface
            layout), or with ``train.list``/``image/`` and ``evaluation/`` (the authors' extracted layout).
        batch_size: global training batch, split evenly over the processes of a multi-GPU run so that the
            recipe does not change with the number of GPUs.
        train_resolution: resolution policy of the training input: 112 (none), 14/28/56, ``multi`` or
            ``multi_hr50`` (see `fskd.data.degrade`).
        train_interpolation: ``nearest`` (paper-era code), ``random`` (per sample from ``interpolation_modes``,
            the authors' later code) or any single mode of `fskd.data.degrade.MODES`.
        flip: random horizontal flip with probability 0.5, the authors' only augmentation.
        photometric_p / crop_p: probabilities of optional albumentations colour jitter and random resized crop.
        val_sets: verification sets to evaluate; ``None`` = those of agedb_30, lfw, cfp_fp that exist in root.
        val_resolutions: evaluation resolutions, e.g. ``[112, 56, 28, 14]``; ``cross14`` for HR-vs-14 pairs.
        val_interpolation: fixed degradation mode for evaluation (``nearest`` as the paper-era code).
        val_batch_size: images per evaluation batch and process.
        val_num_workers: loader workers of each evaluation (validation, test, predict) loader, started when it is
            iterated and stopped at its end (not persistent); ``None`` = ``min(num_workers, 2)``.
        drop_last: drop the last, partial global batch of each epoch; by default it is completed with the first
            samples of the same epoch's order, so that every batch is full whatever the number of processes.
        seed: seed of the training order (`fskd.data.sampler.ResumableSampler`), of the flip/degradation generator
            and of the per-sample albumentations draws.
        predict_source: for ``predict``: a folder of images (recursive) or a ``.rec`` file; ``None`` = the
            verification images. Use with ``fskd.callbacks.EmbeddingWriter`` to write ``.npy`` + names.
        predict_resolution: degrade the ``predict`` images to this size and back (112 = as they are).
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 256,
        num_workers: int = 4,
        train_resolution: int | str = 112,
        train_interpolation: str = "nearest",
        interpolation_modes: Sequence[str] = RANDOM_MODES,
        flip: bool = True,
        photometric_p: float = 0.0,
        crop_p: float = 0.0,
        val_sets: Sequence[str] | None = None,
        val_resolutions: Sequence[int | str] = (112, 56, 28, 14),
        val_interpolation: str = "nearest",
        val_batch_size: int = 256,
        val_num_workers: int | None = None,
        drop_last: bool = False,
        pin_memory: bool = True,
        image_size: int = IMAGE_SIZE,
        seed: int = 0,
        predict_source: str | None = None,
        predict_resolution: int = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.degradation = Degradation(train_resolution, train_interpolation, interpolation_modes, image_size)
        self.flip = flip
        self.photometric_p = photometric_p
        self.crop_p = crop_p
        self.val_sets = list(val_sets) if val_sets is not None else None
        self.val_resolutions = [_parse_resolution(r, image_size) for r in val_resolutions]
        if val_interpolation not in MODES:
            raise ValueError(f"val_interpolation {val_interpolation!r} not in {MODES}")
        self.val_interpolation = val_interpolation
        self.val_batch_size = val_batch_size
        if val_num_workers is not None and val_num_workers < 0:
            raise ValueError(f"val_num_workers must be >= 0, got {val_num_workers}")
        # 12 evaluation loaders (3 sets x 4 resolutions) of num_workers persistent processes each held ~100
        # processes; two per loader, one loader at a time, cost ~10-20 s of decoding per validation instead.
        self.val_num_workers = min(num_workers, 2) if val_num_workers is None else val_num_workers
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.image_size = image_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.train_set: Dataset | None = None
        self.val_datasets: list = []
        self.val_specs: list[EvalSpec] = []
        self._verification_opened = False
        self._verification_checked = False
        self.predict_source = predict_source
        self.predict_resolution, _ = _parse_resolution(predict_resolution, image_size)
        self.predict_set: Dataset | None = None
        self._num_classes: int | None = None
        self._opened_train_set: Dataset | None = None
        self.train_sampler: ResumableSampler | None = None
        self._pending_position: dict[str, int] | None = None
        # Small training images seen so far: [count, images seen, first (index, height, width) or None].
        self._small_training: list[Any] = [0, 0, None]
        self._small_training_reported = False

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of training identities (from ``property``, else from the training set), for the model's head.

        A ``property`` that contradicts the training set fails here, before the model (and its head) is built.
        """
        if self._num_classes is None:
            prop = read_property(self.root)
            if prop is not None:
                self._num_classes = prop[0]
                try:
                    train_set = self._base_training_set()
                except FileNotFoundError:
                    train_set = None  # evaluation-only folder: property + verification sets
                if train_set is not None:
                    self._check_classes(train_set)
            else:
                self._num_classes = self._base_training_set().num_classes
                self._check_classes(self._base_training_set())
        return self._num_classes

    def _base_training_set(self) -> Dataset:
        if self._opened_train_set is None:
            self._opened_train_set = open_training_set(self.root, self.image_size)
        return self._opened_train_set

    def training_images(self) -> Dataset:
        """The training set as stored (`open_training_set`: uint8 ``image`` and ``label`` items, no augmentation,
        no positives): what a teacher embeds to mine positives."""
        return self._base_training_set()

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_rank if trainer is not None else 0

    def per_device_batch_size(self) -> int:
        world = self._world_size()
        if self.batch_size % world:
            raise ValueError(f"global batch_size {self.batch_size} is not divisible by {world} processes")
        return self.batch_size // world

    # -- setup -------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        # The same draws on every process (each keeps those of its samples); a resume restores the state after
        # this (Lightning calls setup before loading the checkpoint).
        self.generator = torch.Generator().manual_seed(self.seed)
        if stage in (None, "fit"):
            self.train_sampler, self._pending_position = None, None
            self._small_training, self._small_training_reported = [0, 0, None], False
        if stage in (None, "fit") and self.train_set is None:
            train_set = self._base_training_set()
            self._check_classes(train_set)
            self.train_set = self._with_augmentation(train_set)
        if stage == "predict" and self.predict_source is not None:
            return  # embedding a folder or .rec: the verification sets are not read
        if not self._verification_opened:
            self._setup_verification()
        evaluates = self._check_evaluation_limit(stage)
        if evaluates and not self._verification_checked:
            for dataset in dict.fromkeys(self.val_datasets):
                small = dataset.check_images()
                if small:
                    index, height, width = small[0]
                    self._warn("%s: %d of the %d images of verification set %s are smaller than %d pixels on a "
                               "side before resizing (the first: %s, %dx%d); each is scaled up to %dx%d: broken "
                               "crops or placeholders?", dataset.source, len(small), len(dataset), dataset.name,
                               SMALL_IMAGE_SIDE, dataset.describe(index), height, width, self.image_size,
                               self.image_size)
            self._verification_checked = True

    def _warn(self, message: str, *args: Any) -> None:
        """A warning about the data, once per run (from global rank 0)."""
        if self._rank() == 0:
            log.warning(message, *args)

    def _check_classes(self, train_set: Dataset) -> None:
        """Fail before training when ``property`` contradicts the training set: fewer classes than the record
        header lists (labels past the model's head would fail only when drawn) or more classes than images (an
        absurd count would allocate a huge head)."""
        num_classes = self._num_classes if self._num_classes is not None else self.num_classes
        property_path = f"{self.root}/property"
        if num_classes != train_set.num_classes:
            log.warning("property says %d classes, the training set %d", num_classes, train_set.num_classes)
        records = getattr(train_set, "records", None)
        ranges = getattr(records, "identity_ranges", None)
        if ranges is not None and len(ranges) > num_classes:
            raise DataFormatError(property_path, f"says {num_classes} classes but the header of "
                                  f"{getattr(train_set, 'rec_path', 'train.rec')} lists {len(ranges)} identities; "
                                  "labels past the model's head would fail in the middle of training")
        if num_classes > len(train_set):
            source = "says" if read_property(self.root) is not None else "(absent; labels counted) gives"
            raise DataFormatError(property_path, f"{source} {num_classes} classes for {len(train_set)} training "
                                  "images (more classes than images: a wrong property file or label?)")

    def _setup_verification(self) -> None:
        names = self.val_sets
        if names is None:
            names = []
            for name in VERIFICATION_SETS:
                if has_verification_set(self.root, name):
                    names.append(name)
                elif miscased_verification_files(self.root, name):
                    open_verification_set(self.root, name, self.image_size)  # raises, naming the file found
            if not names:
                log.warning("no verification set (%s) in %s: validation is skipped", VERIFICATION_SETS, self.root)
        datasets = []
        for name in names:
            dataset = open_verification_set(self.root, name, self.image_size)
            if dataset.num_pairs == 0:
                self._warn("%s: verification set %s has no pairs: it is left out of validation", dataset.source,
                           name)
                continue
            datasets.append(dataset)
        if names and not datasets:
            self._warn("no verification set with pairs in %s: validation is skipped", self.root)
        for dataset in datasets:
            if dataset.num_pairs % 10:
                raise ValueError(f"{dataset.source}: {dataset.num_pairs} pairs cannot form 10 folds")
            for resolution, cross in self.val_resolutions:
                self.val_datasets.append(dataset)
                self.val_specs.append(EvalSpec(dataset.name, resolution, cross, dataset.issame))
        self._verification_opened = True
        if datasets:
            rank_zero_info(self._verification_summary(datasets))

    def _verification_summary(self, datasets: Sequence[PairImageDataset]) -> str:
        """One line: the sets evaluated (file, pairs), the resolutions, and verification files left out."""
        root = Path(self.root)
        sets = ", ".join(f"{d.name} ({Path(d.source).relative_to(root).as_posix()}, {d.num_pairs} pairs)"
                         for d in datasets)
        tags = ", ".join(f"cross{r}" if cross else str(r) for r, cross in self.val_resolutions)
        line = f"verification sets in {root}: {sets}; resolutions: {tags or 'none'}"
        used = {d.name for d in datasets}
        others = sorted({p.name for p in root.glob("*.bin") if p.stem not in used}
                        | {f"evaluation/{p.name}" for p in root.glob("evaluation/*.txt") if p.stem not in used})
        if others:
            line += f"; not evaluated: {', '.join(others)} (add them to --data.val_sets)"
        return line

    def _check_evaluation_limit(self, stage: str | None) -> bool:
        """Refuse, before training, an evaluation that Lightning would run but could not complete: an empty
        (set, resolution) grid, or a batch limit that cuts a set short (its 10-fold protocol needs every pair,
        and the metric would fail at the first validation). A limit of 0 turns evaluation off and is accepted:
        False then (the verification images need no decoding check), else True."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or stage == "predict":
            return True  # no evaluation loop to check (without a trainer the sets are read directly)
        option = "limit_test_batches" if stage == "test" else "limit_val_batches"
        limit = getattr(trainer, option, 1.0)
        if limit == 0:
            return False
        if self.val_sets == [] or not self.val_resolutions:
            empty = "val_sets" if self.val_sets == [] else "val_resolutions"
            raise ValueError(f"--data.{empty} is empty, so there is nothing to evaluate; pass --trainer.{option} 0 "
                             "to run without evaluation")
        fast_dev_run = " (set by --trainer.fast_dev_run)" if getattr(trainer, "fast_dev_run", False) else ""
        world = self._world_size()
        for dataset in dict.fromkeys(self.val_datasets):
            # Lightning's DistributedSampler gives each process ceil(N / world) images (padding by repeats).
            batches = math.ceil(math.ceil(len(dataset) / world) / self.val_batch_size)
            if isinstance(limit, float):
                kept = batches if limit >= 1.0 else int(batches * limit)  # Lightning's rounding of a fraction
            else:
                kept = min(int(limit), batches)
            if kept < batches:
                raise ValueError(f"--trainer.{option} {limit}{fast_dev_run} would evaluate {kept} of the {batches} "
                                 f"batches of verification set {dataset.name} per process, and its 10-fold protocol "
                                 f"needs every pair: pass --trainer.{option} 0 to run without evaluation, or 1.0 "
                                 "for the whole sets")
        return True

    # -- positives ---------------------------------------------------------------------------------------------
    @property
    def positives(self) -> PositiveTable | None:
        """The positives table set by `set_positives` (None: batches carry no positive)."""
        return self.train_set.table if isinstance(self.train_set, _WithPositives) else None

    def set_positives(self, table: PositiveTable | None) -> None:
        """Pair every training sample with a positive drawn from ``table`` (global dataset indices, so every
        process reads the same table); None removes the pairing. Call before the training loader is made (the
        fit-start step of `fskd.systems.DistillModule` does)."""
        if self.train_set is None:
            train_set = self._base_training_set()
            self._check_classes(train_set)
            self.train_set = self._with_augmentation(train_set)
        base = self.train_set.dataset if isinstance(self.train_set, _WithPositives) else self.train_set
        self.train_set = base if table is None else _WithPositives(base, table, seed=self.seed)
        if self.train_sampler is not None:
            # A loader made earlier: its next iterator must yield (index, epoch) keys for the positives' draws.
            self.train_sampler.with_epoch = self._keys_with_epoch()

    def _keys_with_epoch(self) -> bool:
        return isinstance(self.train_set, (_Augmented, _WithPositives))

    def _with_augmentation(self, dataset: Dataset) -> Dataset:
        if not (self.photometric_p or self.crop_p):
            return dataset
        import albumentations as A

        transforms = []
        if self.photometric_p:
            transforms.append(A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=self.photometric_p))
        if self.crop_p:
            transforms.append(A.RandomResizedCrop(size=(self.image_size, self.image_size), scale=(0.8, 1.0),
                                                  ratio=(0.9, 1.1), p=self.crop_p))
        return _Augmented(dataset, A.Compose(transforms), seed=self.seed)

    # -- loaders -----------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, sampler: ResumableSampler | None = None,
                loader_class: type[DataLoader] = DataLoader, training: bool = False) -> DataLoader:
        # Only the training loader keeps its workers between epochs; an evaluation loader's workers live while it
        # is iterated, so one validation holds one loader's workers at a time (see the module docstring).
        workers = self.num_workers if training else self.val_num_workers
        prefetch = 4 if training else 2
        # An own generator: creating an iterator then draws worker seeds from it, not from the global torch RNG,
        # so validation and new epochs leave the global RNG (dropout) exactly where an uninterrupted run has it.
        return loader_class(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                            pin_memory=self.pin_memory and torch.cuda.is_available(),
                            persistent_workers=training and workers > 0,
                            prefetch_factor=prefetch if workers else None,
                            generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        batch_size = self.per_device_batch_size()
        sampler = ResumableSampler(self.train_set, batch_size * self._world_size(), self._world_size(),
                                   self._rank(), seed=self.seed, drop_last=self.drop_last,
                                   with_epoch=self._keys_with_epoch())
        position = self.train_sampler.state_dict() if self.train_sampler is not None else self._pending_position
        if position is not None:
            sampler.load_state_dict(position)
        self.train_sampler, self._pending_position = sampler, None
        return self._loader(self.train_set, batch_size, sampler, loader_class=_TrainLoader, training=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.val_batch_size) for d in self.val_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> list[DataLoader] | DataLoader:
        if self.predict_source is None:
            return self.val_dataloader()
        if self.predict_set is None:
            from fskd.data.sources import PredictionImages

            self.predict_set = PredictionImages(self.predict_source, self.image_size)
        world = self._world_size()
        if len(self.predict_set) < world:
            # Lightning's predict sampler splits the images without repeats and asserts that every process gets
            # one; say so with the numbers instead.
            raise ValueError(f"{self.predict_source}: {len(self.predict_set)} image(s) to embed over {world} "
                             f"processes, and every process needs at least one: run at most "
                             f"{len(self.predict_set)} processes")
        return self._loader(self.predict_set, self.val_batch_size)

    @property
    def predict_names(self) -> list[str] | None:
        """Names of the ``predict_source`` images in index order (read by `fskd.callbacks.EmbeddingWriter`)."""
        return None if self.predict_set is None else list(self.predict_set.names)

    # -- suspicious training images ----------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the small images of a training batch on the host (the sizes go no further than here)."""
        if isinstance(batch, dict) and "decoded_size" in batch:
            heights, widths = (torch.as_tensor(side).numpy() for side in batch.pop("decoded_size"))
            self._count_small_images(np.minimum(heights, widths), heights, widths,
                                     torch.as_tensor(batch.pop("index")).numpy())
        return batch

    def _count_small_images(self, sides: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                            indices: np.ndarray) -> None:
        if self._small_training_reported:
            return
        small = sides < SMALL_IMAGE_SIDE
        record = self._small_training
        if small.any():
            record[0] += int(small.sum())
            if record[2] is None:
                first = int(np.argmax(small))
                record[2] = (int(indices[first]), int(heights[first]), int(widths[first]))
        record[1] += len(sides)
        if self.train_sampler is not None and record[1] >= len(self.train_sampler):
            self._report_small_images("in the first epoch")

    def _report_small_images(self, scope: str) -> None:
        """Warn once about the small training images counted (if any), then stop counting."""
        self._small_training_reported = True
        count, seen, first = self._small_training
        if not count:
            return
        dataset = self._base_training_set()
        describe = getattr(dataset, "describe", lambda index: f"image {index}")
        index, height, width = first
        world = self._world_size()
        reader = f" by process {self._rank()} of {world}" if world > 1 else ""
        # Every process counts its own share of the images, so under DDP each one that met small images says so
        # (not only rank 0, which sees 1/W of them).
        log.warning("%d of the %d training images read %s%s are smaller than %d pixels on a side before resizing "
                    "(the first: %s, %dx%d); each is scaled up to %dx%d: broken crops or placeholders?", count,
                    seen, scope, reader, SMALL_IMAGE_SIDE, describe(index), height, width, self.image_size,
                    self.image_size)

    def teardown(self, stage: str) -> None:
        if stage == "fit" and not self._small_training_reported:
            self._report_small_images("so far")  # a fit that ended before its first epoch did

    # -- on-device transforms ----------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        if "label" in batch:
            views = self.training_views(batch["image"], batch["label"], batch.get("positive"),
                                        batch.get("has_positive"))
            if self.train_sampler is not None:
                # This batch reaches the model: the position moves with the generator that just drew for it.
                self.train_sampler.advance(batch["label"].shape[0] * self._world_size())
            return views
        trainer = getattr(self, "trainer", None)
        if self.predict_source is not None and trainer is not None and trainer.predicting:
            image = degrade_fixed(normalize(batch["image"]), self.predict_resolution, self.val_interpolation)
            return {"image": image, "index": batch["index"]}
        return self.evaluation_views(batch["image"], batch["index"], self.val_specs[dataloader_idx])

    def training_views(self, images: torch.Tensor, labels: torch.Tensor, positives: torch.Tensor | None = None,
                       has_positive: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Flip, normalise and degrade one training batch; HR and LR views share the same flip.

        The draws are made for the global batch (this batch times the number of processes) and this process
        keeps those of its slots ``rank, rank + W, ...``, the slots `ResumableSampler` gives it. ``positives``
        (uint8, like ``images``) get the same treatment with their own draws, made after all of the anchors'
        (``has_positive`` defaults to all True).
        """
        hr, lr = self._flip_and_degrade(images)
        views = {"hr": hr, "lr": lr, "label": labels.long()}
        if positives is not None:
            views["hr_positive"], views["lr_positive"] = self._flip_and_degrade(positives)
            views["has_positive"] = (torch.ones(positives.shape[0], dtype=torch.bool, device=positives.device)
                                     if has_positive is None else has_positive.to(positives.device, torch.bool))
        return views

    def _flip_and_degrade(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hr, lr) of a uint8 batch, drawing its flips and then its degradation plan from the generator."""
        world, rank = self._world_size(), self._rank()
        total = images.shape[0] * world
        if self.flip:
            # Flip the uint8 pixels before normalising: a quarter of the bytes of a float flip, same result.
            # torch.where (not boolean indexing) and a non-blocking copy of the mask drawn on the CPU generator,
            # so that the host never waits for a GPU here.
            flip = to_device_async(torch.rand(total, generator=self.generator)[rank::world] < 0.5, images.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        hr = normalize(images)
        if self.degradation.is_identity:
            return hr, hr
        plan = self.degradation.sample(total, self.generator)
        mine = DegradationPlan(plan.resolution[rank::world], plan.down_mode[rank::world],
                               plan.up_mode[rank::world])
        return hr, self.degradation.apply(hr, mine)

    def evaluation_views(self, images: torch.Tensor, index: torch.Tensor, spec: EvalSpec) -> dict[str, torch.Tensor]:
        """Degrade a verification batch deterministically; the flipped copy is the flip of the degraded image."""
        x = normalize(images)
        degraded = degrade_fixed(x, spec.resolution, self.val_interpolation)
        if spec.cross:
            # First image of each pair (even index) stays HR.
            degraded = torch.where((index % 2 == 0)[:, None, None, None], x, degraded)
        return {"image": degraded, "flipped": degraded.flip(-1), "index": index}

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Generator and training position; the same on every process and independent of their number."""
        if self.train_sampler is not None:
            position = self.train_sampler.state_dict()
        else:
            position = self._pending_position or {"epoch": 0, "consumed": 0}
        return {"generator": self.generator.get_state(), "position": dict(position)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])
        if "position" in state_dict:
            if self.train_sampler is not None:
                self.train_sampler.load_state_dict(state_dict["position"])
            else:
                self._pending_position = dict(state_dict["position"])

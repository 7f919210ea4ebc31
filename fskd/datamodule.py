"""`FaceDataModule`: face-recognition training images, verification pairs, and on-device degradation.

The loader workers only decode (and optionally run albumentations); flipping, normalisation and the
low-resolution degradation run in `on_after_batch_transfer`, batched on whatever device the batch reaches, with
draws from a generator owned by the DataModule so that they are reproducible from the seed.

Training batches become ``{"hr", "lr", "label"}``: ``hr`` the (flipped) normalised image, ``lr`` the same image
degraded by the training resolution policy (``lr is hr`` for policy 112). The teacher and the no-distillation
baselines train on ``lr``; the distillation student sees ``lr`` while its teacher sees ``hr``.

Evaluation batches become ``{"image", "flipped", "index"}`` for one (verification set, resolution) pair per
dataloader; `val_specs` lists them in dataloader order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fskd.data.datasets import has_verification_set, open_training_set, open_verification_set, read_property
from fskd.data.degrade import MODES, RANDOM_MODES, Degradation, degrade_fixed
from fskd.data.folder import VERIFICATION_SETS
from fskd.data.images import IMAGE_SIZE, normalize

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
    """Applies an albumentations pipeline to the uint8 (3, H, W) image of each item (in the worker)."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        image = item["image"].permute(1, 2, 0).numpy()
        item["image"] = torch.from_numpy(self.transform(image=image)["image"]).permute(2, 0, 1).contiguous()
        return item


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
        seed: seed of the flip/degradation generator (offset by the process rank).
        predict_source: for ``predict``: a folder of images (recursive) or a ``.rec`` file; ``None`` = the
            verification images. Use with ``fskd.prediction.EmbeddingWriter`` to write ``.npy`` + names.
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
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.image_size = image_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.train_set: Dataset | None = None
        self.val_datasets: list = []
        self.val_specs: list[EvalSpec] = []
        self.predict_source = predict_source
        self.predict_resolution, _ = _parse_resolution(predict_resolution, image_size)
        self.predict_set: Dataset | None = None
        self._num_classes: int | None = None

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of training identities (from ``property``, else from the training set), for the model's head."""
        if self._num_classes is None:
            prop = read_property(self.root)
            if prop is not None:
                self._num_classes = prop[0]
            else:
                self._num_classes = open_training_set(self.root, self.image_size).num_classes
        return self._num_classes

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
        # Different draws on each process, reproducible from the seed.
        self.generator = torch.Generator().manual_seed(self.seed + self._rank())
        if stage in (None, "fit") and self.train_set is None:
            train_set = open_training_set(self.root, self.image_size)
            if self.num_classes != train_set.num_classes:
                log.warning("property says %d classes, the training set %d", self.num_classes,
                            train_set.num_classes)
            self.train_set = self._with_augmentation(train_set)
        if not self.val_specs:
            self._setup_verification()

    def _setup_verification(self) -> None:
        names = self.val_sets
        if names is None:
            names = [n for n in VERIFICATION_SETS if has_verification_set(self.root, n)]
            if not names:
                log.warning("no verification set (%s) in %s: validation is skipped", VERIFICATION_SETS, self.root)
        for name in names:
            dataset = open_verification_set(self.root, name, self.image_size)
            if dataset.num_pairs % 10:
                raise ValueError(f"{dataset.source}: {dataset.num_pairs} pairs cannot form 10 folds")
            for resolution, cross in self.val_resolutions:
                self.val_datasets.append(dataset)
                self.val_specs.append(EvalSpec(name, resolution, cross, dataset.issame))

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
        return _Augmented(dataset, A.Compose(transforms))

    # -- loaders -----------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, pin_memory=self.pin_memory and torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, prefetch_factor=4 if self.num_workers else None)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.per_device_batch_size(), shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.val_batch_size, shuffle=False) for d in self.val_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> list[DataLoader] | DataLoader:
        if self.predict_source is None:
            return self.val_dataloader()
        if self.predict_set is None:
            from fskd.prediction import PredictionImages

            self.predict_set = PredictionImages(self.predict_source, self.image_size)
        return self._loader(self.predict_set, self.val_batch_size, shuffle=False)

    @property
    def predict_names(self) -> list[str] | None:
        """Names of the ``predict_source`` images in index order (read by `fskd.prediction.EmbeddingWriter`)."""
        return None if self.predict_set is None else list(self.predict_set.names)

    # -- on-device transforms ----------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        if "label" in batch:
            return self.training_views(batch["image"], batch["label"])
        trainer = getattr(self, "trainer", None)
        if self.predict_source is not None and trainer is not None and trainer.predicting:
            image = degrade_fixed(normalize(batch["image"]), self.predict_resolution, self.val_interpolation)
            return {"image": image, "index": batch["index"]}
        return self.evaluation_views(batch["image"], batch["index"], self.val_specs[dataloader_idx])

    def training_views(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flip, normalise and degrade one training batch; HR and LR views share the same flip."""
        hr = normalize(images)
        if self.flip:
            flip = (torch.rand(hr.shape[0], generator=self.generator) < 0.5).to(hr.device)
            hr = torch.where(flip[:, None, None, None], hr.flip(-1), hr)
        lr = self.degradation(hr, self.generator)
        return {"hr": hr, "lr": lr, "label": labels.long()}

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
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])

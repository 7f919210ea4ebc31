"""Training-loader throughput per core: our .rec pipeline against a re-creation of the authors' pipeline.

Both read the SAME synthetic images (written by `fskd.data.synthetic.generate_dataset`, then extracted to one
JPEG file per image with the bytes copied verbatim) through a ``torch.utils.data.DataLoader`` with the same
settings (shuffle, persistent workers, prefetch 4), with ``num_workers`` 0 (everything in this process) and 1
(one worker process feeding this one). Torch and OpenCV are limited to one thread so the figures are per core.

* authors: ``cv2.imread`` of a .jpg, random horizontal flip, ``cv2.resize`` INTER_NEAREST to 14x14 and back
  to 112x112 (the student's LR view) plus the HR copy, torchvision ``ToTensor`` + ``Normalize(0.5, 0.5)`` on
  both, default collate (two float32 tensors per sample), as the paper-era F-SKD ``Dataset.__getitem__``.
* ours (worker): `FaceDataModule.train_dataloader` on ``train.rec`` (`RecordFaceDataset`: pread + JPEG decode
  to uint8, default collate). This is all a worker does in training; flip/normalise/degrade run on the GPU.
* ours (worker + CPU views): the same plus `FaceDataModule.training_views` (flip, normalise, 14 px nearest)
  run on the CPU in this process: our whole pipeline on the CPU, output equivalent to the authors'.
* ours (worker + CPU views, proposed): `proposed_training_views`, an independent implementation of the same
  output (flip the uint8 rows in place, nearest by slicing; see docs/benchmarks.md). Both ideas are now
  applied in `fskd`, so this row and the previous one should agree; ``--no-proposed`` drops it.
* ours (folder): `FaceDataModule` on the extracted JPEG files (`FolderFaceDataset`), to separate the file
  layout from the decoder.

Run: ``python benchmarks/data.py [--size smoke|small|default] [--json out.json]``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from benchmarks.common import (  # noqa: E402
    Timings,
    base_parser,
    fmt,
    interleaved,
    machine_info,
    markdown_table,
    report,
)
from benchmarks.degradation import nearest_integer_degrade  # noqa: E402
from fskd.data.datamodule import FaceDataModule  # noqa: E402
from fskd.data.images import normalize  # noqa: E402
from fskd.data.recordio import FaceRecordFile  # noqa: E402
from fskd.data.synthetic import generate_dataset  # noqa: E402

SIZES = {  # identities, images per identity, batch size, timed rounds
    "smoke": (10, 10, 32, 1),
    "small": (50, 20, 128, 3),
    "default": (75, 20, 256, 3),
}
LOW_RESOLUTION = 14
IMAGE_SIZE = 112
OUR_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE  # one uint8 image
AUTHORS_BYTES = 2 * 4 * OUR_BYTES  # HR and LR float32 tensors


class AuthorsTrainDataset(Dataset):
    """The paper-era F-SKD training Dataset, re-created: per sample file read, flip, cv2 resizes, ToTensor."""

    def __init__(self, paths: list[str], labels: list[int], down_size: int = LOW_RESOLUTION) -> None:
        self.paths = paths
        self.labels = labels
        self.down_size = down_size
        self.transform = transforms.Compose([transforms.ToTensor(),
                                             transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = cv2.imread(self.paths[index])
        if np.random.rand() < 0.5:
            image = cv2.flip(image, 1)
        small = cv2.resize(image, (self.down_size, self.down_size), interpolation=cv2.INTER_NEAREST)
        low = cv2.resize(small, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_NEAREST)
        return self.transform(image), self.transform(low), self.labels[index]


def proposed_training_views(module: FaceDataModule, images: torch.Tensor,
                            labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """`FaceDataModule.training_views` for one process and a fixed nearest policy with an integer factor, with
    less memory traffic.

    Same random draws in the same order and bit-identical output: the flip is applied in place to the chosen
    uint8 rows (a quarter of the bytes, half the rows) instead of ``torch.where`` over a flipped float copy,
    and the degradation keeps every f-th pixel and repeats it (`nearest_integer_degrade`) instead of clone +
    interpolate down + interpolate up + scatter. ``images`` is modified (the loader's batch belongs to us).
    """
    degradation = module.degradation
    if degradation.interpolation != "nearest" or len(degradation.resolutions) != 1:
        raise ValueError("proposed_training_views covers fixed nearest policies only")
    if module.flip:
        flip = torch.rand(images.shape[0], generator=module.generator) < 0.5
        images[flip] = images[flip].flip(-1)
    hr = normalize(images)
    if degradation.is_identity:
        lr = hr
    else:
        degradation.sample(images.shape[0], module.generator)  # the same draws as training_views
        lr = nearest_integer_degrade(hr, degradation.resolutions[0])
    return {"hr": hr, "lr": lr, "label": labels.long()}


def check_proposed_views(module: FaceDataModule, batch: dict[str, torch.Tensor]) -> None:
    """Fail unless `proposed_training_views` reproduces `FaceDataModule.training_views` exactly."""
    state = module.generator.get_state()
    expected = module.training_views(batch["image"].clone(), batch["label"])
    module.generator.set_state(state)
    actual = proposed_training_views(module, batch["image"].clone(), batch["label"])
    if not all(torch.equal(actual[key], expected[key]) for key in expected):
        raise AssertionError("proposed_training_views differs from FaceDataModule.training_views")


def extract_to_files(root: Path, out: Path) -> tuple[list[str], list[int]]:
    """Write every image of ``root/train.rec`` to ``out/image/<label>/<index>.jpg`` (bytes verbatim) and a
    ``train.list``; return the absolute paths and labels."""
    paths: list[str] = []
    labels: list[int] = []
    lines = []
    with FaceRecordFile(root / "train.rec", root / "train.idx") as records:
        for index in range(len(records)):
            label, payload = records.read_image(index)
            relative = Path("image") / f"{label:06d}" / f"{index + 1:08d}.jpg"
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            (out / relative).write_bytes(payload)
            paths.append(str(out / relative))
            labels.append(label)
            lines.append(f"{relative.as_posix()}  {label}\n")
    (out / "train.list").write_text("".join(lines))
    return paths, labels


def loader_like_ours(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    """A DataLoader with `FaceDataModule`'s settings (on CPU: no pinned memory)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


def _consume(loader: DataLoader) -> int:
    seen = 0
    for batch in loader:
        seen += len(batch[-1]) if isinstance(batch, list) else len(batch["label"])
    return seen


def _consume_with_views(loader: DataLoader, views_of: Callable[[torch.Tensor, torch.Tensor], dict]) -> int:
    seen = 0
    for batch in loader:
        seen += len(views_of(batch["image"], batch["label"])["label"])
    return seen


def measure(rec_root: Path, file_root: Path, paths: list[str], labels: list[int], batch_size: int,
            workers: int, rounds: int, proposed: bool = True) -> tuple[Timings, dict[str, int]]:
    """Interleaved epochs of every pipeline with ``workers`` loader processes (persistent, warmed up).

    Returns the timings and the images per epoch of each pipeline (ours completes the last partial batch of
    an epoch with samples from its start, see `fskd.data.sampler.ResumableSampler`, so it can see a few more).
    """
    ours_module = FaceDataModule(str(rec_root), batch_size=batch_size, num_workers=workers,
                                 train_resolution=LOW_RESOLUTION, pin_memory=False)
    folder_module = FaceDataModule(str(file_root), batch_size=batch_size, num_workers=workers,
                                   train_resolution=LOW_RESOLUTION, pin_memory=False)
    authors = loader_like_ours(AuthorsTrainDataset(paths, labels), batch_size, workers)
    ours, folder = ours_module.train_dataloader(), folder_module.train_dataloader()
    candidates: dict[str, Callable[[], int]] = {
        "authors": lambda: _consume(authors),
        "ours (worker)": lambda: _consume(ours),
        "ours (folder)": lambda: _consume(folder),
    }
    if workers == 0:
        # With a worker the views would run on the other core, in parallel: no longer a per-core figure.
        candidates["ours (worker + CPU views)"] = lambda: _consume_with_views(ours,
                                                                              ours_module.training_views)
        if proposed:
            check_proposed_views(ours_module, next(iter(ours)))
            candidates["ours (worker + CPU views, proposed)"] = lambda: _consume_with_views(
                ours, lambda images, labels: proposed_training_views(ours_module, images, labels))
    samples: dict[str, int] = {}

    def counted(name: str, epoch: Callable[[], int]) -> Callable[[], None]:
        def run() -> None:
            samples[name] = epoch()
        return run

    timings = interleaved({name: counted(name, epoch) for name, epoch in candidates.items()}, rounds=rounds)
    return timings, samples  # the loaders (and their workers) end with this frame


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], device=False)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="num_workers values")
    parser.add_argument("--no-proposed", action="store_true", help="leave out the proposed CPU views")
    args = parser.parse_args(argv)
    logging.getLogger("fskd.data.datamodule").setLevel(logging.ERROR)  # "no verification set": expected here
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    identities, per_identity, batch_size, rounds = SIZES[args.size]
    results: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fskd-bench-data-") as tmp:
        rec_root, file_root = Path(tmp) / "rec", Path(tmp) / "files"
        generate_dataset(rec_root, identities=identities, images_per_identity=per_identity, pairs=20, seed=0)
        file_root.mkdir()
        paths, labels = extract_to_files(rec_root, file_root)
        count = len(paths)
        jpeg_bytes = sum(Path(p).stat().st_size for p in paths) / count

        for workers in args.workers:
            timings, samples = measure(rec_root, file_root, paths, labels, batch_size, workers, rounds,
                                       proposed=not args.no_proposed)
            for name in timings.seconds:
                rate = samples[name] / timings.median(name)
                # Per-image speed ratio: time ratio scaled by the images each epoch delivered.
                ratio = timings.ratio(name, "authors") * samples[name] / samples["authors"]
                out_bytes = AUTHORS_BYTES if name == "authors" else OUR_BYTES
                results[f"{name}, workers={workers}"] = {"images_per_second": rate, "ratio_vs_authors": ratio,
                                                         "seconds_per_epoch": timings.seconds[name],
                                                         "images_per_epoch": samples[name],
                                                         "bytes_per_image_from_dataset": out_bytes}
                rows.append([name, workers, fmt(rate), fmt(ratio), f"{out_bytes:,}"])

    table = markdown_table(["pipeline", "num_workers", "img/s", "ours/authors (same run)",
                            "bytes/img out of the Dataset"], rows)
    notes = [f"{count} synthetic images ({identities} ids x {per_identity}), {jpeg_bytes:.0f} B mean JPEG, "
             f"batch {batch_size}, median of {rounds} interleaved epochs; torch and cv2 limited to 1 thread; "
             "img/s counts the images each epoch delivered (ours completes its last batch).",
             "ratio > 1: faster than the authors' pipeline. 'bytes/img out of the Dataset' is what a worker "
             "hands to the main process through shared memory (and what is later copied to the GPU): one "
             "uint8 image for ours, two float32 views for theirs."]
    report("Training loader throughput per core", table, machine_info(), args, results, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

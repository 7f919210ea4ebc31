"""The authors' extracted layout, read and written without mxnet.

Layout (what their ``load_images_from_bin.py`` produced, with its bugs fixed)::

    <root>/train.list                     "<path>  <class>" per image (two spaces in theirs; any whitespace here)
    <root>/image/<class:06d>/<key:08d>.jpg
    <root>/evaluation/<name>.txt          "00001.jpg 00002.jpg 1" per pair (1 same, -1 different), no header
    <root>/evaluation/<name>/00001.jpg

Differences from the authors' utility (docs/fskd-method.md section 7.2): no hard-coded dataset folder name (paths in
``train.list`` are written relative to the root and resolved relative to it, or after their last ``image/``
component for lists written elsewhere); no header line is dropped from pair lists; class labels keep the record
labels instead of being renumbered in ``os.listdir`` order; and image bytes are copied verbatim, not re-encoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fskd.data.binfile import load_bin
from fskd.data.errors import DataFormatError
from fskd.data.recordio import FaceRecordFile

TRAIN_LIST = "train.list"
VERIFICATION_SETS = ("agedb_30", "lfw", "cfp_fp")


def _resolve(root: Path, text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        return root / path
    if path.exists():
        return path
    # A list written on another machine: keep what follows the last "image/" component.
    parts = path.parts
    if "image" in parts:
        last = len(parts) - 1 - parts[::-1].index("image")
        return root.joinpath(*parts[last:])
    return path


def read_train_list(root: str | os.PathLike, check_files: bool = False) -> tuple[list[Path], np.ndarray]:
    """Read ``<root>/train.list`` -> (image paths, int64 labels).

    With ``check_files`` every listed file must exist (one ``stat`` each): a missing one raises `DataFormatError`
    naming the list, the line of the first missing file and how many are missing, before any training step.
    """
    root = Path(root)
    list_path = root / TRAIN_LIST
    if not list_path.is_file():
        raise FileNotFoundError(f"{list_path}: no training list (expected '<path> <class>' lines)")
    paths: list[Path] = []
    labels: list[int] = []
    lines: list[int] = []
    with open(list_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DataFormatError(list_path, f"line {number} is not '<path> <class>': {line.rstrip()!r}")
            label = int(fields[1])
            if label < 0:
                raise DataFormatError(list_path, f"line {number} has a negative class {label}")
            paths.append(_resolve(root, fields[0].strip()))
            labels.append(label)
            lines.append(number)
    if not paths:
        raise DataFormatError(list_path, "the training list is empty")
    if check_files:
        missing = [position for position, path in enumerate(paths) if not path.is_file()]
        if missing:
            first = missing[0]
            raise DataFormatError(list_path, f"line {lines[first]}: listed image {paths[first]} does not exist "
                                  f"({len(missing)} of {len(paths)} listed images are missing)")
    return paths, np.asarray(labels, dtype=np.int64)


def read_pair_list(root: str | os.PathLike, name: str,
                   check_files: bool = False) -> tuple[list[Path], np.ndarray]:
    """Read ``<root>/evaluation/<name>.txt`` -> (2P image paths, pair i = 2i and 2i+1; P bools).

    ``check_files``: as for `read_pair_list_with_lines`.
    """
    images, issame, _ = read_pair_list_with_lines(root, name, check_files)
    return images, issame


def read_pair_list_with_lines(root: str | os.PathLike, name: str,
                              check_files: bool = False) -> tuple[list[Path], np.ndarray, list[int]]:
    """`read_pair_list` plus the line of the list that holds each pair (blank lines are skipped, so pair i is not
    always line i + 1).

    With ``check_files`` both images of every pair must exist: a missing one raises `DataFormatError` naming the
    list, the line and image of the first missing file and how many are missing.
    """
    evaluation = Path(root) / "evaluation"
    list_path = evaluation / f"{name}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"{list_path}: no pair list for verification set {name!r}")
    images: list[Path] = []
    issame: list[bool] = []
    lines: list[int] = []
    with open(list_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[2] not in ("1", "-1", "0"):
                raise DataFormatError(list_path, f"line {number} is not '<a> <b> 1|-1': {line.rstrip()!r}")
            images += [evaluation / name / fields[0], evaluation / name / fields[1]]
            issame.append(fields[2] == "1")
            lines.append(number)
    if not issame:
        raise DataFormatError(list_path, "the pair list is empty")
    if check_files:
        missing = [position for position, path in enumerate(images) if not path.is_file()]
        if missing:
            first = missing[0]
            raise DataFormatError(list_path, f"line {lines[first // 2]}: image {first} (pair {first // 2}) "
                                  f"{images[first]} does not exist ({len(missing)} of {len(images)} listed images "
                                  "are missing)")
    return images, np.asarray(issame, dtype=bool), lines


def _image_suffix(data: bytes) -> str:
    # Named by content, so that image folders (fskd.data.layouts.IMAGE_SUFFIXES) list the extracted files.
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return {b"P2": ".pgm", b"P5": ".pgm", b"P3": ".ppm", b"P6": ".ppm"}.get(bytes(data[:2]), ".jpg")


def _write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def extract_training_set(rec_path: str | os.PathLike, idx_path: str | os.PathLike,
                         out: str | os.PathLike, progress: bool = False) -> int:
    """Write every image record as ``image/<class:06d>/<key:08d>.jpg`` plus ``train.list``; return the count."""
    out = Path(out)
    lines: list[str] = []
    with FaceRecordFile(rec_path, idx_path) as records:
        total = len(records)
        for i in range(total):
            label, payload = records.read_image(i)
            key = records.key_of(i)
            relative = Path("image") / f"{label:06d}" / f"{key:08d}{_image_suffix(payload)}"
            (out / relative.parent).mkdir(parents=True, exist_ok=True)
            _write_bytes(out / relative, payload)
            lines.append(f"{relative.as_posix()}  {label}\n")
            if progress and (i + 1) % 10000 == 0:
                print(f"  {i + 1}/{total} training images", flush=True)
    _write_bytes(out / TRAIN_LIST, "".join(lines).encode())
    return len(lines)


def extract_verification_set(bin_path: str | os.PathLike, out: str | os.PathLike, name: str) -> int:
    """Write a .bin set as ``evaluation/<name>/<n>.jpg`` (1-based) plus ``evaluation/<name>.txt``; return P."""
    images, issame = load_bin(bin_path)
    folder = Path(out) / "evaluation" / name
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(images))))
    names = []
    for number, payload in enumerate(images, start=1):
        file_name = f"{number:0{digits}d}{_image_suffix(payload)}"
        _write_bytes(folder / file_name, payload)
        names.append(file_name)
    lines = [f"{names[2 * i]} {names[2 * i + 1]} {1 if same else -1}\n" for i, same in enumerate(issame)]
    _write_bytes(folder.parent / f"{name}.txt", "".join(lines).encode())
    return len(issame)


def prepare(source: str | os.PathLike, out: str | os.PathLike, sets: Sequence[str] | None = None,
            progress: bool = True) -> dict[str, int]:
    """Convert an insightface folder (train.rec/.idx, property, <set>.bin) to the extracted layout.

    ``sets`` defaults to every verification .bin found in ``source``. Returns counts per part.
    """
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise ValueError("prepare writes a separate folder; choose --out different from the source")
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    rec, idx = source / "train.rec", source / "train.idx"
    if rec.is_file() and idx.is_file():
        if progress:
            print(f"extracting {rec} ...", flush=True)
        counts["train"] = extract_training_set(rec, idx, out, progress=progress)
        if (source / "property").is_file():
            _write_bytes(out / "property", (source / "property").read_bytes())
    names: Iterable[str] = sets if sets is not None else sorted(p.stem for p in source.glob("*.bin"))
    for name in names:
        bin_path = source / f"{name}.bin"
        if not bin_path.is_file():
            raise FileNotFoundError(f"{bin_path}: verification set {name!r} not found")
        if progress:
            print(f"extracting {bin_path} ...", flush=True)
        counts[name] = extract_verification_set(bin_path, out, name)
    if not counts:
        raise FileNotFoundError(f"{source}: neither train.rec/train.idx nor any .bin file to prepare")
    return counts

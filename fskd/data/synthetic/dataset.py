"""A synthetic dataset in the insightface layout: ``train.rec``/``.idx``, ``property``, the verification
``*.bin`` files and ``synthetic.json``.

The pair plan of a verification set comes from ``SeedSequence([seed, first_id, 0, 2])``; the trailing tag
keeps it apart from the identity and image streams of `fskd.data.synthetic.faces` (numpy's SeedSequence
ignores trailing zero words). Rendering can be spread over spawned worker processes; the output does not
depend on how many.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fskd.data.binfile import save_bin
from fskd.data.recordio import write_face_records
from fskd.data.synthetic.config import SynthConfig
from fskd.data.synthetic.faces import check_id, render_face_jpeg

VERIFICATION_SETS: tuple[str, ...] = ("agedb_30", "lfw", "cfp_fp")
VERIFICATION_ID_BASE: dict[str, int] = {
    "agedb_30": 1_000_000_000, "lfw": 2_000_000_000, "cfp_fp": 3_000_000_000,
}
"""First identity id of each verification set; training ids are 0..N-1 (N < 1e9), so all sets are disjoint."""

META_FILE = "synthetic.json"
_PLAN_STREAM_TAG = 2
_COUNTS_STREAM_TAG = 3
_GENERATOR_NAME = "fskd.data.synthetic"
"""Recorded in `META_FILE`: the public name of the generator, whichever module writes the file."""

CASIA_IDENTITIES = 10_572
CASIA_IMAGES = 494_414
CASIA_IMAGES_RANGE = (2, 804)
"""CASIA-WebFace's size (identities of insightface's faces_webface_112x112 release, images of the original
release) and the range of its images per identity."""
CASIA_PAIRS: dict[str, int] = {"agedb_30": 6000, "lfw": 6000, "cfp_fp": 7000}
"""Pairs of the real verification sets: AgeDB-30 and LFW 6,000, CFP-FP 7,000."""

RenderJob = tuple[int, int, tuple[int, ...], SynthConfig]
"""(seed, identity, samples, config): the images of one identity, rendered together."""


def casia_image_counts(identities: int = CASIA_IDENTITIES, images: int = CASIA_IMAGES, seed: int = 0,
                       low: int = CASIA_IMAGES_RANGE[0], high: int = CASIA_IMAGES_RANGE[1]) -> np.ndarray:
    """Images per identity skewed like CASIA-WebFace's: ``identities`` counts in ``[low, high]`` summing to
    ``images``, the quantiles of a log-normal (sigma 1) scaled to that total, in a seeded random order.

    With the defaults: mean 46.8, median 28, 268 identities above 200 images, the largest 4 at ``high`` (804).
    Deterministic: the same arguments give the same counts.
    """
    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high, got low={low}, high={high}")
    if not identities * low <= images <= identities * high:
        raise ValueError(f"{images} images cannot be spread over {identities} identities with {low}..{high} "
                         "images each")
    from statistics import NormalDist

    quantiles = (np.arange(identities) + 0.5) / identities
    shape = np.exp(np.array([NormalDist().inv_cdf(q) for q in quantiles]))  # increasing
    # Stretch the tail so that the largest identity holds `high`, then scale the rest to the total (bisection
    # on the scale; the clipping makes the sum monotonic in it).
    lo, hi = 0.0, float(high) / shape[0] * 4
    for _ in range(100):
        scale = (lo + hi) / 2
        if np.clip(shape * scale, low, high).sum() < images:
            lo = scale
        else:
            hi = scale
    counts = np.clip(np.floor(shape * lo), low, high).astype(np.int64)
    # Hand the remainder out one image each to the largest fractional parts still below `high`.
    remainder = images - int(counts.sum())
    fractions = np.where(counts < high, shape * lo - np.floor(shape * lo), -1.0)
    order = np.argsort(-fractions, kind="stable")
    while remainder > 0:
        room = order[counts[order] < high][:remainder]
        counts[room] += 1
        remainder -= room.size
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0, 0, _COUNTS_STREAM_TAG])))
    return counts[rng.permutation(identities)]


def _render_identity_jpegs(job: RenderJob) -> list[bytes]:
    seed, identity, samples, config = job
    return [render_face_jpeg(seed, identity, sample, config) for sample in samples]


def _verification_plan(seed: int, name: str, pairs: int,
                       identities: int) -> tuple[list[tuple[int, int]], list[bool]]:
    """(identity, sample) of the ``2 * pairs`` images of set ``name`` and the pair labels.

    Ten contiguous folds; each fold holds ``pairs / 20`` same-identity pairs followed by as many
    different-identity pairs (the order of LFW's pairs.txt). Every image is a distinct sample.
    """
    base = VERIFICATION_ID_BASE[name]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), base, 0, _PLAN_STREAM_TAG])))
    per_fold = pairs // 20
    same_order = np.concatenate([rng.permutation(identities) for _ in range(-(-pairs // 2 // identities))])
    next_sample = [0] * identities

    def take(local: int) -> tuple[int, int]:
        sample = next_sample[local]
        next_sample[local] += 1
        return base + local, sample

    images: list[tuple[int, int]] = []
    issame: list[bool] = []
    for fold in range(10):
        for local in same_order[fold * per_fold:(fold + 1) * per_fold]:
            images += [take(int(local)), take(int(local))]
            issame.append(True)
        for _ in range(per_fold):
            first, second = rng.choice(identities, size=2, replace=False)
            images += [take(int(first)), take(int(second))]
            issame.append(False)
    return images, issame


def _group_jobs(seed: int, keys: Sequence[tuple[int, int]], config: SynthConfig) -> list[RenderJob]:
    """Render jobs, one per identity (so each job reuses the identity's cached assets)."""
    by_identity: dict[int, list[int]] = {}
    for identity, sample in keys:
        by_identity.setdefault(identity, []).append(sample)
    return [(seed, identity, tuple(samples), config) for identity, samples in by_identity.items()]


class _Renderer:
    """Ordered rendering of jobs, in process or in a pool of spawned workers (safe beside torch threads)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(workers)

    def map(self, jobs: list[RenderJob]) -> Iterator[list[bytes]]:
        if self.pool is None:
            return map(_render_identity_jpegs, jobs)
        return self.pool.imap(_render_identity_jpegs, jobs, chunksize=max(1, min(16, len(jobs) // 64)))

    def close(self, failed: bool) -> None:
        if self.pool is not None:
            if failed:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()


def dataset_matches(out_dir: str | os.PathLike, identities: int, images_per_identity: int, pairs: int,
                    seed: int, config: SynthConfig) -> bool:
    """``out_dir`` holds a finished `generate_dataset` output made with exactly these arguments (its
    ``synthetic.json``, written last), so a command can reuse it instead of rendering again."""
    meta_path = Path(out_dir) / META_FILE
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return (meta.get("seed") == seed and meta.get("config") == json.loads(json.dumps(asdict(config)))
            and meta.get("train") == {"identity_range": [0, identities], "images_per_identity": images_per_identity}
            and all(v.get("pairs") == pairs for v in meta.get("verification", {}).values()))


def _pairs_per_set(pairs: int | Mapping[str, int]) -> dict[str, int]:
    per_set = {name: pairs for name in VERIFICATION_SETS} if isinstance(pairs, int) else dict(pairs)
    if sorted(per_set) != sorted(VERIFICATION_SETS):
        raise ValueError(f"pairs must name every verification set {list(VERIFICATION_SETS)}, got {sorted(per_set)}")
    for name, count in per_set.items():
        if count < 20 or count % 20:
            raise ValueError(f"pairs must be a positive multiple of 20, got {count} for {name}: each of the 10 "
                             "folds needs an equal number of same and different pairs (pairs / 20 of each)")
    return {name: per_set[name] for name in VERIFICATION_SETS}


def _images_per_identity(identities: int, images_per_identity: int | Sequence[int]) -> list[int]:
    if isinstance(images_per_identity, int):
        counts = [images_per_identity] * identities
    else:
        counts = [int(count) for count in images_per_identity]
        if len(counts) != identities:
            raise ValueError(f"images_per_identity has {len(counts)} counts for {identities} identities")
    if min(counts) < 1:
        raise ValueError(f"images_per_identity must be >= 1, got {min(counts)}")
    return counts


class _Progress:
    """``synthetic: train 120000/494414 images (24 %), 1,420 img/s, about 4 min 23 s left`` on stderr, at most
    every ``every`` seconds and at the end of each part; the rate and the time left count every image still to
    render (training and verification)."""

    def __init__(self, enabled: bool, total: int, every: float = 2.0) -> None:
        self.enabled, self.total, self.every = enabled, total, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def advance(self, count: int, what: str, part_done: int, part_total: int) -> None:
        self.done += count
        now = time.perf_counter()
        if not self.enabled or (part_done < part_total and now - self.last < self.every):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / max(rate, 1e-9)
        eta = f", about {int(left // 60)} min {int(left % 60)} s left" if self.done < self.total else ""
        print(f"synthetic: {what} {part_done}/{part_total} images ({100 * part_done // part_total} %), "
              f"{rate:,.0f} img/s{eta}", file=sys.stderr, flush=True)


def generate_dataset(out_dir: str | os.PathLike, identities: int, images_per_identity: int | Sequence[int],
                     pairs: int | Mapping[str, int], seed: int = 0, size: int = 112,
                     config: SynthConfig | None = None, workers: int = 1, progress: bool = False) -> dict:
    """Write a synthetic dataset in the insightface layout to ``out_dir`` and return a summary.

    Files: ``train.rec``/``train.idx`` (``identities`` classes 0..N-1, ``images_per_identity`` each, or
    ``images_per_identity[i]`` for identity ``i`` when a sequence (e.g. `casia_image_counts`); contiguous per
    identity), ``property`` ("N,size,size"), ``agedb_30.bin``, ``lfw.bin``, ``cfp_fp.bin`` (``pairs`` pairs
    each, or ``pairs[name]`` when a mapping, in 10 folds with equal same/different counts) and
    ``synthetic.json`` (the config, and the identity id and sample of every verification image). Verification
    identities are disjoint from the training identities and from each other (id ranges starting at
    `VERIFICATION_ID_BASE`). The same arguments give byte-identical files, whatever ``workers`` is. ``size``
    must equal ``config.image_size`` when both are given. ``workers > 1`` renders in spawned processes, so a
    calling script needs the usual ``if __name__ == "__main__":`` guard. ``progress`` prints the images
    done, the rate and the time left on stderr.
    """
    if config is None:
        config = SynthConfig(image_size=size)
    elif config.image_size != size:
        raise ValueError(f"size={size} disagrees with config.image_size={config.image_size}; "
                         "pass matching values")
    check_id("seed", seed)
    first_verification_id = min(VERIFICATION_ID_BASE.values())
    if not 1 <= identities < first_verification_id:
        raise ValueError(f"identities must be in 1..{first_verification_id - 1}, got {identities}")
    counts = _images_per_identity(identities, images_per_identity)
    pairs_of = _pairs_per_set(pairs)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    renderer = _Renderer(workers)
    total_train = sum(counts)
    progress_line = _Progress(progress, total_train + 2 * sum(pairs_of.values()))
    rendered = 0
    failed = True

    try:
        def training_samples() -> Iterable[tuple[int, bytes]]:
            nonlocal rendered
            jobs = [(seed, identity, tuple(range(count)), config) for identity, count in enumerate(counts)]
            for (_, identity, _, _), jpegs in zip(jobs, renderer.map(jobs), strict=True):
                for jpeg in jpegs:
                    rendered += 1
                    yield identity, jpeg
                progress_line.advance(len(jpegs), "train", rendered, total_train)

        write_face_records(out / "train.rec", out / "train.idx", training_samples())
        (out / "property").write_text(f"{identities},{size},{size}")

        meta_sets = {}
        for name, set_pairs in pairs_of.items():
            verification_identities = max(set_pairs // 4, 20)
            keys, issame = _verification_plan(seed, name, set_pairs, verification_identities)
            jobs = _group_jobs(seed, keys, config)
            by_key: dict[tuple[int, int], bytes] = {}
            for (_, identity, samples, _), jpegs in zip(jobs, renderer.map(jobs), strict=True):
                by_key.update({(identity, sample): jpeg for sample, jpeg in zip(samples, jpegs, strict=True)})
                progress_line.advance(len(jpegs), name, len(by_key), len(keys))
            rendered += len(keys)
            save_bin(out / f"{name}.bin", [by_key[key] for key in keys], np.asarray(issame, dtype=bool))
            base = VERIFICATION_ID_BASE[name]
            meta_sets[name] = {"identity_range": [base, base + verification_identities], "pairs": set_pairs,
                               "images": [list(key) for key in keys]}
        failed = False
    finally:
        renderer.close(failed)

    uniform = isinstance(images_per_identity, int)
    meta = {"generator": _GENERATOR_NAME, "seed": seed, "image_size": size, "config": asdict(config),
            "train": {"identity_range": [0, identities], "images_per_identity": images_per_identity if uniform
                      else counts},
            "verification": meta_sets}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    seconds = time.perf_counter() - start
    return {
        "out_dir": str(out), "seed": seed, "image_size": size, "workers": workers,
        "identities": identities, "train_images": total_train,
        "images_per_identity": images_per_identity if uniform else
        f"{min(counts)}..{max(counts)} (mean {total_train / identities:.1f})",
        "pairs_per_set": pairs_of,
        "verification_identities_per_set": {name: meta_sets[name]["identity_range"][1] - VERIFICATION_ID_BASE[name]
                                            for name in VERIFICATION_SETS},
        "identity_ranges": {"train": (0, identities),
                            **{name: tuple(meta_sets[name]["identity_range"]) for name in VERIFICATION_SETS}},
        "images_rendered": rendered, "seconds": seconds, "images_per_second": rendered / max(seconds, 1e-9),
    }

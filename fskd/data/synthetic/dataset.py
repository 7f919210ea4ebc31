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
from collections.abc import Iterable, Iterator, Sequence
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
_GENERATOR_NAME = "fskd.data.synthetic"
"""Recorded in `META_FILE`: the public name of the generator, whichever module writes the file."""

RenderJob = tuple[int, int, tuple[int, ...], SynthConfig]
"""(seed, identity, samples, config): the images of one identity, rendered together."""


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


def generate_dataset(out_dir: str | os.PathLike, identities: int, images_per_identity: int, pairs: int,
                     seed: int = 0, size: int = 112, config: SynthConfig | None = None, workers: int = 1,
                     progress: bool = False) -> dict:
    """Write a synthetic dataset in the insightface layout to ``out_dir`` and return a summary.

    Files: ``train.rec``/``train.idx`` (``identities`` classes 0..N-1, ``images_per_identity`` each,
    contiguous), ``property`` ("N,size,size"), ``agedb_30.bin``, ``lfw.bin``, ``cfp_fp.bin`` (``pairs`` pairs
    each, in 10 folds with equal same/different counts) and ``synthetic.json`` (the config, and the identity
    id and sample of every verification image). Verification identities are disjoint from the training
    identities and from each other (id ranges starting at `VERIFICATION_ID_BASE`). The same arguments give
    byte-identical files, whatever ``workers`` is. ``size`` must equal ``config.image_size`` when both are
    given. ``workers > 1`` renders in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
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
    if images_per_identity < 1:
        raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
    if pairs < 20 or pairs % 20:
        raise ValueError(f"pairs must be a positive multiple of 20, got {pairs}: each of the 10 folds needs "
                         "an equal number of same and different pairs (pairs / 20 of each)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    verification_identities = max(pairs // 4, 20)
    renderer = _Renderer(workers)
    rendered = 0
    failed = True

    def report(what: str, done: int, total: int, every: int = 1000) -> None:
        if progress and (done == total or done // every != (done - images_per_identity) // every):
            print(f"synthetic: {what} {done}/{total} images", file=sys.stderr, flush=True)

    try:
        train_keys = [(identity, sample) for identity in range(identities)
                      for sample in range(images_per_identity)]
        total_train = len(train_keys)

        def training_samples() -> Iterable[tuple[int, bytes]]:
            nonlocal rendered
            jobs = _group_jobs(seed, train_keys, config)
            for (_, identity, _, _), jpegs in zip(jobs, renderer.map(jobs), strict=True):
                for jpeg in jpegs:
                    rendered += 1
                    yield identity, jpeg
                report("train", rendered, total_train)

        write_face_records(out / "train.rec", out / "train.idx", training_samples())
        (out / "property").write_text(f"{identities},{size},{size}")

        meta_sets = {}
        for name in VERIFICATION_SETS:
            keys, issame = _verification_plan(seed, name, pairs, verification_identities)
            jobs = _group_jobs(seed, keys, config)
            by_key: dict[tuple[int, int], bytes] = {}
            for (_, identity, samples, _), jpegs in zip(jobs, renderer.map(jobs), strict=True):
                by_key.update({(identity, sample): jpeg for sample, jpeg in zip(samples, jpegs, strict=True)})
            rendered += len(keys)
            report(name, len(keys), len(keys))
            save_bin(out / f"{name}.bin", [by_key[key] for key in keys], np.asarray(issame, dtype=bool))
            base = VERIFICATION_ID_BASE[name]
            meta_sets[name] = {"identity_range": [base, base + verification_identities], "pairs": pairs,
                               "images": [list(key) for key in keys]}
        failed = False
    finally:
        renderer.close(failed)

    meta = {"generator": _GENERATOR_NAME, "seed": seed, "image_size": size, "config": asdict(config),
            "train": {"identity_range": [0, identities], "images_per_identity": images_per_identity},
            "verification": meta_sets}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    seconds = time.perf_counter() - start
    return {
        "out_dir": str(out), "seed": seed, "image_size": size, "workers": workers,
        "identities": identities, "images_per_identity": images_per_identity, "train_images": total_train,
        "pairs_per_set": pairs, "verification_identities_per_set": verification_identities,
        "identity_ranges": {"train": (0, identities),
                            **{name: tuple(meta_sets[name]["identity_range"]) for name in VERIFICATION_SETS}},
        "images_rendered": rendered, "seconds": seconds, "images_per_second": rendered / max(seconds, 1e-9),
    }

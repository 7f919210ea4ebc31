"""Scoring one demo model: its validate run's metrics, per-pair scores for ROC curves, sample views, and a
cache of all of it beside the checkpoint (``--resume``)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fskd.commands.demo.results import ResultRow, rows_from_metrics

SAMPLE_SET = "lfw"

SAMPLE_PAIRS_PER_KIND = 3

EVALUATION_FILE = "evaluation.json"

EVALUATION_ARRAYS = "evaluation.npz"


def lightning(args: list[str]) -> Any:
    from fskd.commands.lightning import lightning_main

    with warnings.catch_warnings():
        # The demo loads in the main process unless --workers is given: Lightning's hint says so each run.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        return lightning_main(args)


def _decoded(dataset: Any) -> torch.Tensor:
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def pair_score_table(checkpoint: str | os.PathLike, datamodule: Any, bf16: bool,
                     batch_size: int = 200) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, float]]:
    """Per (set, resolution) of the DataModule's evaluation specs: cosine score of every pair, embedded under
    bf16 autocast when ``bf16`` (as the validate run embedded: see `FaceRecognitionModule`'s ``eval_fp32``).

    The backbone comes from ``checkpoint`` (`load_backbone`); images go through the DataModule's own
    `evaluation_views` (so exactly the validation degradation), image and flip embeddings are summed
    (insightface fusion). Also returns the insightface 10-fold accuracy recomputed from these embeddings,
    keyed ``<set>/<res>``, to check against the validate run.
    """
    from fskd.evaluation.verification import evaluate_pairs, fuse_flip, pair_scores
    from fskd.models.loading import load_backbone

    backbone = load_backbone(checkpoint, allow_student=True)
    images_by_set: dict[int, torch.Tensor] = {}
    scores: dict[tuple[str, int], np.ndarray] = {}
    accuracies: dict[str, float] = {}
    for dataset, spec in zip(datamodule.val_datasets, datamodule.val_specs, strict=True):
        if spec.cross:
            continue
        images = images_by_set.setdefault(id(dataset), _decoded(dataset))
        embeddings, flipped = [], []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, images.shape[0], batch_size):
                index = torch.arange(start, min(start + batch_size, images.shape[0]))
                views = datamodule.evaluation_views(images[index], index, spec)
                count = index.numel()
                out = backbone(torch.cat([views["image"], views["flipped"]])).embedding.float()
                embeddings.append(out[:count])
                flipped.append(out[count:])
        embedding, mirrored = torch.cat(embeddings), torch.cat(flipped)
        fused = fuse_flip(embedding, mirrored, "sum")
        scores[(spec.name, spec.resolution)] = pair_scores(fused[0::2], fused[1::2], "insightface")
        accuracies[f"{spec.name}/{spec.resolution}"] = evaluate_pairs(embedding, mirrored, spec.issame,
                                                                      ("insightface",))["insightface"][0]
    return scores, accuracies


def _sample_views(datamodule: Any, name: str, resolutions: Sequence[int],
                  pairs: Sequence[int]) -> dict[str, Any]:
    """uint8 HWC views (HR, then each resolution) of both images of ``pairs`` in set ``name``."""
    from fskd.data.images import denormalize

    for dataset, spec in zip(datamodule.val_datasets, datamodule.val_specs, strict=True):
        if spec.name != name:
            continue
        index = torch.tensor([i for p in pairs for i in (2 * p, 2 * p + 1)])
        images = torch.stack([dataset[int(i)]["image"] for i in index])
        views = []
        for resolution in resolutions:
            same_spec = next(s for s in datamodule.val_specs if s.name == name and s.resolution == resolution
                             and not s.cross)
            degraded = datamodule.evaluation_views(images, index, same_spec)["image"]
            views.append(denormalize(degraded).permute(0, 2, 3, 1).numpy())
        return {"set": name, "pairs": list(pairs), "resolutions": list(resolutions),
                "views": np.stack(views, axis=1)}  # (2 * len(pairs), len(resolutions), H, W, 3)
    raise KeyError(f"verification set {name!r} is not evaluated")


def _sample_pair_indices(issame: np.ndarray, per_kind: int) -> list[int]:
    same = [int(i) for i in np.flatnonzero(issame)[:per_kind]]
    different = [int(i) for i in np.flatnonzero(~issame)[:per_kind]]
    return same + different


def run_evaluation(validate: list[str], checkpoint: Path, seed: int, model: str,
              want_samples: bool) -> dict[str, Any]:
    """Run the validate command, read its metrics, and score every pair with the loaded backbone."""
    cli = lightning(validate)
    datamodule = cli.datamodule
    specs = [s for s in datamodule.val_specs if not s.cross]
    sets = list(dict.fromkeys(s.name for s in specs))
    resolutions = list(dict.fromkeys(s.resolution for s in specs))
    metrics = cli.trainer.callback_metrics
    rows = rows_from_metrics(metrics, seed, model, sets, resolutions)
    issame = {s.name: np.asarray(s.issame, dtype=bool) for s in specs}
    # As the validate run embedded: under bf16 autocast only if the model evaluates in the trainer's precision.
    bf16 = "bf16" in str(cli.trainer.precision) and not cli.model.hparams.get("eval_fp32", True)
    scores, accuracies = pair_score_table(checkpoint, datamodule, bf16, batch_size=datamodule.val_batch_size)
    checks = {key: abs(float(metrics[f"val/{key}/insightface_acc"]) - value)
              for key, value in accuracies.items()}
    samples: dict[str, Any] = {}
    if want_samples and SAMPLE_SET in sets:
        pairs = _sample_pair_indices(issame[SAMPLE_SET], SAMPLE_PAIRS_PER_KIND)
        samples = _sample_views(datamodule, SAMPLE_SET, resolutions, pairs)
    return {"rows": rows, "issame": issame, "scores": scores, "checks": checks, "samples": samples}


def _checkpoint_stamp(checkpoint: Path) -> list[int]:
    stat = checkpoint.stat()
    return [stat.st_size, stat.st_mtime_ns]


def save_evaluation(model_dir: Path, validate: list[str], checkpoint: Path,
                     evaluation: dict[str, Any]) -> None:
    """Keep a model's evaluation beside its checkpoint, so that ``--resume`` can reuse it."""
    arrays = {f"scores/{n}/{r}": v for (n, r), v in evaluation["scores"].items()}
    arrays.update({f"issame/{n}": v for n, v in evaluation["issame"].items()})
    samples = evaluation["samples"]
    if samples:
        arrays.update({"samples/views": samples["views"], "samples/pairs": np.asarray(samples["pairs"]),
                       "samples/resolutions": np.asarray(samples["resolutions"])})
    np.savez_compressed(model_dir / EVALUATION_ARRAYS, **arrays)
    meta = {"args": validate, "checkpoint": _checkpoint_stamp(checkpoint),
            "rows": [asdict(r) for r in evaluation["rows"]], "checks": evaluation["checks"],
            "sample_set": samples.get("set") if samples else None}
    (model_dir / EVALUATION_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def load_evaluation(model_dir: Path, validate: list[str], checkpoint: Path,
                     want_samples: bool) -> dict[str, Any] | None:
    """The saved evaluation of the same validate command on the same checkpoint file, else None."""
    meta_path, arrays_path = model_dir / EVALUATION_FILE, model_dir / EVALUATION_ARRAYS
    if not (meta_path.is_file() and arrays_path.is_file() and checkpoint.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("args") != validate or meta.get("checkpoint") != _checkpoint_stamp(checkpoint):
        return None
    if want_samples and not meta.get("sample_set"):
        return None
    with np.load(arrays_path) as arrays:
        scores = {(k.split("/")[1], int(k.split("/")[2])): arrays[k] for k in arrays.files
                  if k.startswith("scores/")}
        issame = {k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("issame/")}
        samples: dict[str, Any] = {}
        if want_samples:
            samples = {"set": meta["sample_set"], "views": arrays["samples/views"],
                       "pairs": [int(p) for p in arrays["samples/pairs"]],
                       "resolutions": [int(r) for r in arrays["samples/resolutions"]]}
    return {"rows": [ResultRow(**r) for r in meta["rows"]], "issame": issame, "scores": scores,
            "checks": meta["checks"], "samples": samples}

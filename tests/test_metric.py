"""Tests of fskd.systems.metric.VerificationMetric (single process and 2-process gloo DDP)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fskd.evaluation.verification import evaluate_pairs
from fskd.systems.metric import VerificationMetric

SCRIPT = Path(__file__).parent / "helpers" / "ddp_metric_script.py"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_set(pairs: int = 60, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    issame = torch.rand(pairs, generator=generator) < 0.5
    base = torch.randn(pairs, dim, generator=generator)
    embeddings = torch.randn(2 * pairs, dim, generator=generator)
    embeddings[0::2] += 1.5 * base
    embeddings[1::2] += 1.5 * base * issame[:, None]
    flipped = embeddings + 0.5 * torch.randn(embeddings.shape, generator=generator)
    return embeddings, flipped, issame.numpy()


def expected_values(embeddings, flipped, issame, protocols=("fskd", "insightface"), folds=10):
    results = evaluate_pairs(embeddings.numpy(), flipped.numpy(), issame, protocols, folds)
    values = {}
    for position, protocol in enumerate(protocols):
        prefix = "" if position == 0 else f"{protocol}_"
        values[f"{prefix}acc"], values[f"{prefix}acc_std"] = results[protocol]
    return values


def as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: value.item() for name, value in values.items()}


def test_shuffled_batches_with_duplicates_equal_evaluate_pairs():
    embeddings, flipped, issame = make_set()
    order = torch.randperm(embeddings.shape[0], generator=torch.Generator().manual_seed(1))
    order = torch.cat((order, order[:7]))  # padding-style repeats of some indices
    metric = VerificationMetric(issame)
    for batch in order.split(16):
        metric.update(batch, embeddings[batch], flipped[batch])
    values = metric.compute()
    assert set(values) == {"acc", "acc_std", "insightface_acc", "insightface_acc_std"}
    assert all(value.dtype == torch.float64 and value.ndim == 0 for value in values.values())
    expected = expected_values(embeddings, flipped, issame)
    assert as_floats(values) == expected
    assert 0.6 < expected["acc"] < 1.0 and 0.6 < expected["insightface_acc"] < 1.0


def test_first_protocol_gets_the_plain_names():
    embeddings, flipped, issame = make_set(seed=3)
    metric = VerificationMetric(issame, protocols=("insightface", "fskd"))
    metric.update(torch.arange(embeddings.shape[0]), embeddings, flipped)
    expected = expected_values(embeddings, flipped, issame, protocols=("insightface", "fskd"))
    assert set(expected) == {"acc", "acc_std", "fskd_acc", "fskd_acc_std"}
    assert as_floats(metric.compute()) == expected


def test_reset_and_reuse():
    embeddings, flipped, issame = make_set(seed=2)
    metric = VerificationMetric(issame, protocols=("fskd",))
    metric.update(torch.arange(embeddings.shape[0]), embeddings, flipped)
    first = as_floats(metric.compute())
    metric.reset()
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="before any update"):
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        metric.compute()
    metric.update(torch.arange(embeddings.shape[0]).flip(0), embeddings.flip(0), flipped.flip(0))
    assert as_floats(metric.compute()) == first == expected_values(embeddings, flipped, issame, ("fskd",))


def test_missing_and_out_of_range_indices_raise():
    embeddings, flipped, issame = make_set()
    metric = VerificationMetric(issame)
    keep = torch.tensor([index for index in range(120) if index not in (5, 77)])
    metric.update(keep, embeddings[keep], flipped[keep])
    with pytest.raises(
        RuntimeError, match=r"2 of 120 verification images are missing \(e\.g\. indices \[5, 77\]\)"
    ):
        metric.compute()
    metric = VerificationMetric(issame)
    metric.update(torch.arange(120), embeddings, flipped)
    metric.update(torch.tensor([120]), embeddings[:1], flipped[:1])
    with pytest.raises(RuntimeError, match=r"1 image indices lie outside 0\.\.119"):
        metric.compute()


def test_missing_images_name_the_batch_limits_that_cut_a_set_short():
    embeddings, flipped, issame = make_set()
    metric = VerificationMetric(issame)
    metric.update(torch.arange(40), embeddings[:40], flipped[:40])
    with pytest.raises(RuntimeError, match=r"80 of 120 verification images are missing \(e\.g\. indices "
                                           r"\[40, 41, 42, 43, 44\]\); was the whole set evaluated\? The 10-fold "
                                           r"protocol needs every pair: a --trainer\.limit_val_batches \(or "
                                           r"limit_test_batches, fast_dev_run\) other than 0 or 1\.0 cuts a set "
                                           r"short \(FaceDataModule refuses one at setup\)$"):
        metric.compute()


def test_constructor_and_update_validation():
    issame = np.zeros(60, dtype=bool)
    with pytest.raises(ValueError, match=r"number of pairs \(55\) must be a positive multiple of folds"):
        VerificationMetric(issame[:55])
    with pytest.raises(ValueError, match="unknown verification protocol"):
        VerificationMetric(issame, protocols=("fskd", "lfw"))
    metric = VerificationMetric(issame)
    embeddings = torch.zeros(4, 8)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        metric.update(torch.zeros(4), embeddings, embeddings)
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.arange(4), embeddings, embeddings[:, :4])
    with pytest.raises(ValueError, match="4 indices but 3 embeddings"):
        metric.update(torch.arange(4), embeddings[:3], embeddings[:3])


def test_half_precision_inputs_are_stored_as_float32():
    embeddings, flipped, issame = make_set(seed=4)
    metric = VerificationMetric(issame)
    metric.update(torch.arange(120), embeddings.half(), flipped.half())
    assert metric.embeddings[0].dtype == torch.float32
    assert as_floats(metric.compute()) == expected_values(
        embeddings.half().float(), flipped.half().float(), issame
    )


def _load_script_module():
    spec = importlib.util.spec_from_file_location("ddp_metric_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_process_gloo_gives_identical_values_on_both_ranks(tmp_path):
    script = _load_script_module()
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    # DistributedSampler(shuffle=False) sharding with padding: rank r gets r, r+2, ...; rank 1 repeats pair 0
    num_pairs = script.NUM_PAIRS
    assert records[0]["pair_indices"] == list(range(0, num_pairs, 2))
    assert records[1]["pair_indices"] == list(range(1, num_pairs, 2)) + [0]
    # each rank alone misses the other rank's images, so the synced result really combined both ranks
    for record in records:
        assert "verification images are missing" in record["local_error"]

    embeddings, flipped, issame = script.make_data()
    expected = expected_values(embeddings, flipped, np.asarray(issame), folds=script.FOLDS)
    assert records[0]["values"] == expected
    assert records[1]["values"] == expected


def test_a_module_validated_with_another_datamodule_scores_that_datamodules_loaders(tiny_root: Path) -> None:
    # Found by review: the metrics were rebuilt only when the number of loaders changed, so the same module
    # validated again with as many loaders in another order logged agedb_30's accuracy under lfw's name.
    import lightning as L

    from fskd.data.datamodule import FaceDataModule
    from fskd.systems.base import FaceRecognitionModule

    def datamodule(sets: list[str], resolutions: list[int]) -> FaceDataModule:
        return FaceDataModule(str(tiny_root), batch_size=8, num_workers=0, val_sets=sets,
                              val_resolutions=resolutions, val_batch_size=16, pin_memory=False)

    def accuracies(module: FaceRecognitionModule, data: FaceDataModule) -> dict[str, float]:
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.validate(module, datamodule=data, verbose=False)
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("/acc")}

    torch.manual_seed(0)
    module = FaceRecognitionModule(num_classes=10, backbone="iresnet18", width=1 / 16, embedding_size=32)
    fresh = FaceRecognitionModule(num_classes=10, backbone="iresnet18", width=1 / 16, embedding_size=32)
    fresh.load_state_dict(module.state_dict())
    accuracies(module, datamodule(["agedb_30", "lfw"], [112, 14]))
    again = accuracies(module, datamodule(["lfw", "agedb_30"], [14, 112]))
    expected = accuracies(fresh, datamodule(["lfw", "agedb_30"], [14, 112]))
    assert len(expected) == 4 and again == expected
    assert [(spec.name, spec.resolution) for spec in module.val_specs] == [
        ("lfw", 14), ("lfw", 112), ("agedb_30", 14), ("agedb_30", 112)]


def test_evaluation_embeds_in_float32_under_mixed_precision(tiny_root: Path) -> None:
    # With bf16 autocast a real MobileFaceNet's embeddings moved by 1.5-2 % and accuracies by up to 0.75 points at
    # 14 px (docs/reliability.md): validation, test and predict now leave the trainer's autocast (eval_fp32).
    import lightning as L

    from fskd.data.datamodule import FaceDataModule
    from fskd.systems.base import FaceRecognitionModule

    torch.manual_seed(0)
    module = FaceRecognitionModule(num_classes=10, backbone="iresnet18", width=1 / 16, embedding_size=32).eval()
    images = torch.rand(6, 3, 112, 112) * 2 - 1
    batch = {"image": images, "index": torch.arange(6)}
    with torch.no_grad():
        reference = module(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert module(images).dtype == torch.bfloat16  # what evaluation used before
            assert torch.equal(module.predict_step(batch, 0)["embedding"], reference)
            module.hparams.eval_fp32 = False
            assert not torch.allclose(module.predict_step(batch, 0)["embedding"], reference, atol=1e-4)
    module.hparams.eval_fp32 = True

    def accuracies(precision: str) -> dict[str, float]:
        data = FaceDataModule(str(tiny_root), batch_size=8, num_workers=0, val_sets=["agedb_30", "lfw"],
                              val_resolutions=[112, 14], val_batch_size=16, pin_memory=False)
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, precision=precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.validate(module, datamodule=data, verbose=False)
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    assert accuracies("bf16-mixed") == accuracies("32-true")

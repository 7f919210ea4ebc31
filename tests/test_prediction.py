"""Tests of the prediction image source and the embedding writer (trainer-free, Trainer.predict, and DDP)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from fskd.callbacks.embeddings import EmbeddingWriter, output_paths
from fskd.data.errors import DataFormatError
from fskd.data.images import decode_face, normalize
from fskd.data.recordio import write_face_records
from fskd.data.sources import PredictionImages
from fskd.data.synthetic import render_face_jpeg

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def png_bytes(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_folder(root: Path) -> dict[str, bytes]:
    files = {"b/2.jpg": render_face_jpeg(0, 1, 0), "a.PNG": png_bytes(1),
             "b/1.jpeg": render_face_jpeg(0, 2, 0),
             "c/d/e.png": png_bytes(2), "a0.jpg": render_face_jpeg(0, 3, 0)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "b" / "notes.txt").write_text("not an image")
    return files


# ---------------------------------------------------------------------------------------------------------
# PredictionImages
# ---------------------------------------------------------------------------------------------------------


def test_prediction_images_over_a_folder(tmp_path):
    files = make_folder(tmp_path)
    dataset = PredictionImages(tmp_path)
    assert dataset.names == ["a.PNG", "a0.jpg", "b/1.jpeg", "b/2.jpg", "c/d/e.png"]
    assert len(dataset) == 5
    for index, name in enumerate(dataset.names):
        item = dataset[index]
        assert item["index"] == index
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 112, 112)
        assert torch.equal(item["image"], decode_face(files[name], name))
    with pytest.raises(IndexError):
        dataset[5]


def test_prediction_images_over_a_rec_file(tmp_path):
    payloads = [render_face_jpeg(1, i // 2, i % 2) for i in range(5)]
    samples = [(i // 2, payload) for i, payload in enumerate(payloads)]
    write_face_records(tmp_path / "faces.rec", tmp_path / "faces.idx", samples)
    dataset = PredictionImages(tmp_path / "faces.rec")
    # face2rec2 layout: record 0 is the header, images are keys 1..5.
    assert dataset.names == ["rec:1", "rec:2", "rec:3", "rec:4", "rec:5"]
    for index, payload in enumerate(payloads):
        assert torch.equal(dataset[index]["image"], decode_face(payload, "x"))
        assert dataset[index]["index"] == index


def test_prediction_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prediction source not found"):
        PredictionImages(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no images"):
        PredictionImages(tmp_path / "empty")
    (tmp_path / "lonely.rec").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"lonely\.idx: index file not found"):
        PredictionImages(tmp_path / "lonely.rec")
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="expected an image folder or a .rec file"):
        PredictionImages(tmp_path / "file.bin")


# ---------------------------------------------------------------------------------------------------------
# EmbeddingWriter without a trainer
# ---------------------------------------------------------------------------------------------------------


def batch(indices: list[int], embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"index": torch.tensor(indices), "embedding": embeddings[indices]}


def test_writer_orders_rows_by_index(tmp_path):
    table = torch.randn(6, 4)
    names = [f"img{i}.jpg" for i in range(6)]
    predictions = [batch([4, 1], table), batch([0, 5, 3], table), batch([2, 4], table)]  # 4 twice (padding)
    writer = EmbeddingWriter(tmp_path / "out" / "emb", names=names)
    writer.write_on_epoch_end(None, None, predictions, [])
    array = np.load(tmp_path / "out" / "emb.npy")
    assert array.dtype == np.float32 and array.shape == (6, 4)
    np.testing.assert_array_equal(array, table.numpy())
    assert (tmp_path / "out" / "emb.txt").read_text().splitlines() == names


def test_writer_names_from_datamodule_and_nested_predictions(tmp_path):
    table = torch.randn(3, 2)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(predict_names=["x", "y", "z"]), world_size=1,
                              is_global_zero=True)
    writer = EmbeddingWriter(tmp_path / "e.npy")  # a trailing .npy is not doubled
    writer.write_on_epoch_end(trainer, None, [[batch([2], table)], [batch([0, 1], table)]], [])
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), table.numpy())
    assert (tmp_path / "e.txt").read_text() == "x\ny\nz\n"
    assert output_paths("run/emb") == (Path("run/emb.npy"), Path("run/emb.txt"))


def test_writer_errors(tmp_path):
    table = torch.randn(4, 2)
    writer = EmbeddingWriter(tmp_path / "e", names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"1 of 4 images have no embedding \(first missing index 2\)"):
        writer.write_on_epoch_end(None, None, [batch([0, 1, 3], table)], [])
    with pytest.raises(ValueError, match="predicted index out of range 0..3"):
        writer.write_on_epoch_end(None, None, [{"index": torch.tensor([4]), "embedding": table[:1]}], [])
    with pytest.raises(KeyError, match="'index' and 'embedding'"):
        writer.write_on_epoch_end(None, None, [{"embedding": table}], [])
    with pytest.raises(ValueError, match="needs the image names"):
        EmbeddingWriter(tmp_path / "e").write_on_epoch_end(None, None, [batch([0], table)], [])
    assert not (tmp_path / "e.npy").exists()


# ---------------------------------------------------------------------------------------------------------
# EmbeddingWriter with Trainer.predict (single process and two-process DDP)
# ---------------------------------------------------------------------------------------------------------


class TinyEmbedder(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.Flatten(), nn.LazyLinear(6))
        self.net(torch.zeros(1, 3, 112, 112))

    def predict_step(self, batch, batch_idx):
        return {"index": batch["index"], "embedding": self.net(batch["image"])}


class FolderData(lightning.LightningDataModule):
    def __init__(self, source: str, batch_size: int = 2) -> None:
        super().__init__()
        self.dataset = PredictionImages(source)
        self.batch_size = batch_size

    @property
    def predict_names(self) -> list[str]:
        return self.dataset.names

    def predict_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return {"image": normalize(batch["image"]), "index": batch["index"]}


def expected_embeddings(model: TinyEmbedder, dataset: PredictionImages) -> np.ndarray:
    images = normalize(torch.stack([dataset[i]["image"] for i in range(len(dataset))]))
    with torch.no_grad():
        return model.net(images).numpy()


def test_writer_with_trainer_predict(tmp_path):
    make_folder(tmp_path / "faces")
    model = TinyEmbedder()
    data = FolderData(str(tmp_path / "faces"))
    writer = EmbeddingWriter(tmp_path / "pred" / "faces")
    trainer = lightning.Trainer(accelerator="cpu", logger=False, callbacks=[writer],
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(model, datamodule=data)
    array = np.load(tmp_path / "pred" / "faces.npy")
    np.testing.assert_allclose(array, expected_embeddings(model, data.dataset), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "pred" / "faces.txt").read_text().splitlines() == data.predict_names


DDP_SCRIPT = """
import sys
import lightning
from test_prediction import EmbeddingWriter, FolderData, TinyEmbedder
from fskd.commands.lightning import release_process_group

if __name__ == "__main__":
    data = FolderData(sys.argv[1], batch_size=2)
    trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                                callbacks=[EmbeddingWriter(sys.argv[2])], enable_progress_bar=False,
                                enable_model_summary=False)
    trainer.predict(TinyEmbedder(), datamodule=data)
    release_process_group()
"""


@pytest.mark.slow
def test_writer_gathers_all_ranks_under_ddp(tmp_path):
    """Two CPU processes (gloo): 5 images, so the DistributedSampler pads rank 1 with a repeat of image 0."""
    make_folder(tmp_path / "faces")
    script = tmp_path / "ddp_predict.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(PROJECT_ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, str(script), str(tmp_path / "faces"), str(tmp_path / "emb")],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    dataset = PredictionImages(tmp_path / "faces")
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), expected_embeddings(TinyEmbedder(), dataset),
                               rtol=1e-5, atol=1e-5)
    assert (tmp_path / "emb.txt").read_text().splitlines() == dataset.names


def test_predict_without_a_writer_is_refused_before_any_work(synth_root: Path) -> None:
    """Lightning would embed every image, keep none and exit 0; fskd says what to add instead."""
    from fskd.commands.lightning import lightning_main

    with pytest.raises(ValueError, match=r"predict writes nothing without a prediction writer: add "
                                         r"--trainer\.callbacks\+=fskd\.callbacks\.EmbeddingWriter"):
        lightning_main(["predict", "--model", "fskd.systems.TeacherModule", "--model.backbone", "iresnet18",
                        "--model.width", "0.0625", "--data.root", str(synth_root),
                        "--data.predict_source", str(synth_root / "train.rec"), "--trainer.logger", "false"])


class _TwoRankStrategy:
    """all_gather of this rank's tensor with another rank's, which ran the same code on ``other``."""

    root_device = torch.device("cpu")

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.int64 and tensor.ndim == 1 and tensor.shape[0] == self.other.ndim:  # the shapes
            return torch.stack([tensor, torch.tensor(self.other.shape)])
        other = torch.zeros_like(tensor)
        other[: self.other.shape[0]] = self.other
        return torch.stack([tensor, other])


def test_a_rank_without_images_pads_to_the_other_ranks_width() -> None:
    """An empty rank's (0, 0) embeddings are gathered as (0, D): the all-gather shapes agree on every rank."""
    from fskd.callbacks.embeddings import _gather_padded

    rows = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    trainer = SimpleNamespace(world_size=2, strategy=_TwoRankStrategy(rows))
    torch.testing.assert_close(_gather_padded(torch.zeros(0, 0), trainer), rows)
    indices = torch.tensor([4, 5, 6])
    trainer = SimpleNamespace(world_size=2, strategy=_TwoRankStrategy(indices))
    assert _gather_padded(torch.zeros(0, dtype=torch.int64), trainer).tolist() == [4, 5, 6]

"""``fskd import-teacher`` for PyTorch formats: arcface_torch and the F-SKD authors' checkpoints (built here
from their layout with random weights), and what the written checkpoint is accepted by."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from fskd.cli import main
from fskd.models import load_backbone, load_head
from fskd.models.importers.torch_formats import import_arcface_torch, import_authors
from fskd.models.loading import IMPORT_KEY, read_checkpoint
from tests.conftest import CONFIGS, FAST
from tests.helpers.authors_models import AuthorsIResNet, randomise

IRESNET18 = (2, 2, 2, 2)


def _images(seed: int = 1) -> torch.Tensor:
    return torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def test_a_bare_arcface_torch_state_dict_gives_the_same_embedding(tmp_path: Path) -> None:
    # arcface_torch's iresnet is this layout with the BN-Dropout-FC-BN neck, fed RGB in [-1, 1].
    reference = randomise(AuthorsIResNet((3, 4, 14, 3), "ir", pooling="E"))
    path = tmp_path / "backbone.pth"
    torch.save(reference.state_dict(), path)
    backbone, architecture, source = import_arcface_torch(path, arch="iresnet50")
    assert architecture == {"backbone": "iresnet50", "mode": "ir", "neck": "fc", "width": 1.0,
                            "embedding_size": 512, "dropout": 0.0}
    images = _images()
    with torch.no_grad():
        assert _relative_difference(backbone(images).embedding, reference(images)) < 1e-5
    assert source["format"] == "arcface_torch"
    with pytest.raises(ValueError, match="--arch iresnet100 but the weights hold"):
        import_arcface_torch(path, arch="iresnet100")


@pytest.mark.parametrize("mode", ["ir", "se", "cbam"])
@pytest.mark.parametrize("pooling", ["A", "E"])
def test_the_authors_checkpoints_import_and_match_their_own_forward(tmp_path: Path, mode: str, pooling: str) -> None:
    """Paper-era teachers (GAP, "A") and later-code ones ("E"); the BGR input is folded into conv1."""
    reference = randomise(AuthorsIResNet(IRESNET18, mode, pooling=pooling, student=pooling == "E"), seed=3)
    path = tmp_path / "last_net.ckpt"
    torch.save({"iters": 47000, "net_state_dict": reference.state_dict()}, path)
    backbone, architecture, source = import_authors(path)
    assert architecture["mode"] == mode and architecture["neck"] == ("fc" if pooling == "E" else "gap")
    images = _images()
    with torch.no_grad():
        ours = backbone(images).embedding
        theirs = reference(images[:, [2, 1, 0]])  # they read BGR
    assert _relative_difference(ours, theirs) < 1e-5
    assert "BGR" in source["input"] and source["dropped"] == (["hint_layer1", "hint_layer2", "hint_layer3",
                                                               "hint_layer4"] if pooling == "E" else [])


def test_import_teacher_writes_a_checkpoint_every_loader_accepts(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    reference = randomise(AuthorsIResNet(IRESNET18, "cbam"), seed=4)
    net, margin = tmp_path / "last_net.ckpt", tmp_path / "last_margin.ckpt"
    torch.save({"iters": 10, "net_state_dict": reference.state_dict()}, net)
    head_weight = torch.randn(7, 512)
    torch.save({"iters": 10, "net_state_dict": {"weight": head_weight}}, margin)
    out = tmp_path / "teacher.ckpt"
    assert main(["import-teacher", str(net), "--format", "authors", "--head", str(margin), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "iresnet18 (cbam, neck gap, 512-d)" in printed and "max |embedding difference| 0" in printed
    checkpoint = read_checkpoint(out)
    assert checkpoint[IMPORT_KEY]["format"] == "authors" and checkpoint[IMPORT_KEY]["head"] == str(margin)
    backbone = load_backbone(out)
    images = _images()
    with torch.no_grad():
        assert _relative_difference(backbone(images).embedding, reference(images[:, [2, 1, 0]])) < 1e-5
    head = load_head(out)
    assert torch.equal(head.weight, head_weight) and head.s == 30.0 and head.m == 0.25


def test_bad_sources_are_refused_naming_the_file(tmp_path: Path) -> None:
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(print))  # a callable: weights-only loading refuses it
    with pytest.raises(ValueError, match=r"evil\.ckpt: refused to load"):
        import_authors(evil)
    strange = tmp_path / "strange.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "layer1.0.bn1.weight": torch.zeros(64),
                "layer1.1.bn1.weight": torch.zeros(64), "layer1.2.bn1.weight": torch.zeros(64)}, strange)
    with pytest.raises(ValueError, match=r"strange\.pth: blocks per stage \[3, 0, 0, 0\] match no iResNet"):
        import_arcface_torch(strange)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        import_arcface_torch(tmp_path / "missing.pth")
    with pytest.raises(SystemExit):  # --head with another format is a usage error
        main(["import-teacher", str(strange), "--format", "arcface_torch", "--head", "x", "--out", "y"])


@pytest.mark.slow
def test_an_imported_teacher_validates_teaches_and_initialises_a_student(tiny_root: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from fskd.commands.lightning import lightning_main

    reference = randomise(AuthorsIResNet(IRESNET18, "ir"), seed=5)
    net = tmp_path / "last_net.ckpt"
    torch.save({"iters": 10, "net_state_dict": reference.state_dict()}, net)
    teacher = tmp_path / "teacher.ckpt"
    assert main(["import-teacher", str(net), "--format", "authors", "--out", str(teacher)]) == 0
    monkeypatch.chdir(tmp_path)
    small = ["--data.root", str(tiny_root), "--data.val_resolutions", "[112]", "--data.val_batch_size", "40",
             "--data.batch_size", "8", "--trainer.logger", "false", *FAST]
    # validate: the architecture comes from the checkpoint; the missing margin head is not needed
    cli = lightning_main(["validate", "--config", str(CONFIGS / "synthetic.yaml"), "--ckpt_path", str(teacher),
                          *small])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/lfw/112/acc"]) <= 1.0
    assert cli.model.backbone.embedding_size == 512 and cli.model.backbone.width == 1.0
    # the teacher of a 14 px F-SKD student, which starts from the teacher's weights
    cli = lightning_main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--config",
                          str(CONFIGS / "method/fskd.yaml"), "--config", str(CONFIGS / "resolution/14.yaml"),
                          "--model.teacher_ckpt", str(teacher), "--model.init_from_teacher", "true",
                          "--model.width", "1.0", "--model.embedding_size", "512", "--trainer.max_steps", "1",
                          "--trainer.limit_val_batches", "0", *small])
    assert cli.trainer.global_step == 1


@pytest.mark.slow
def test_the_imported_real_mobilefacenet_identifies_orl_faces(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's end-to-end check, as a user runs it: import the real insightface MobileFaceNet, then closed-set
    identification on AT&T/ORL (Olivetti Research Laboratory) with one gallery image per person."""
    from tests.helpers.real_faces import MOBILEFACENET_PREFIX, ORL

    if not ORL.is_dir() or not MOBILEFACENET_PREFIX.with_name("model-symbol.json").is_file():
        pytest.skip("real faces not present: ../shared/data/real-faces from the repository root")
    teacher, table = tmp_path / "mobilefacenet.ckpt", tmp_path / "orl.csv"
    assert main(["import-teacher", str(MOBILEFACENET_PREFIX), "--format", "mxnet", "--out", str(teacher)]) == 0
    assert main(["identify", "--ckpt", str(teacher), "--root", str(ORL), "--layout", "folder",
                 "--gallery-per-identity", "1", "--out", str(table)]) == 0
    assert "360 probes, 40 gallery items" in capsys.readouterr().out
    rank1 = next(float(line.split(",")[1]) for line in table.read_text().splitlines()[1:] if line.startswith("1,"))
    assert rank1 >= 0.95  # measured 0.9944

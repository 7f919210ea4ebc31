"""Cross-sample F-SKD (``fskd_cross``): the relational loss, the positives table and its file, the DataModule's
anchor/positive pairs, the training step, the logit switch, and a fit through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fskd.commands.lightning import lightning_main
from fskd.data.datamodule import FaceDataModule
from fskd.data.degrade import degrade_fixed
from fskd.data.images import normalize
from fskd.data.positives import (
    MAX_POSITIVE_COSINE,
    PositiveKey,
    PositiveTable,
    build_positive_table,
    dataset_labels,
    file_fingerprint,
    index_dtype,
    labels_hash,
    load_positives,
    positives_path,
    save_positives,
    stale_reason,
)
from fskd.losses import CrossSampleRelationLoss, FeatureSimilarityLoss, LogitKDLoss
from fskd.systems import DistillModule, TeacherModule
from fskd.systems.positives import refresh_positives, teacher_embeddings
from tests.conftest import CONFIGS, FAST
from tests.helpers.reliability import (
    TEACHER_CONFIG,
    checkpoint_path,
    fit,
    single_thread,
    training_state_differences,
)

TINY = {"backbone": "iresnet18", "width": 0.125, "embedding_size": 32, "num_classes": 7}


# -- the relational loss -----------------------------------------------------------------------------------------
def _reference(s_a: np.ndarray, s_p: np.ndarray, t_a: np.ndarray, t_p: np.ndarray) -> float:
    """The formula of the brief, in float64 NumPy, sample by sample."""
    def unit(x: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
        return flat / np.sqrt((flat * flat).sum())

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel(), b.ravel()
        return float(a @ b / np.sqrt((a @ a) * (b @ b)))

    losses = []
    for b in range(s_a.shape[0]):
        sa, sp, ta, tp = unit(s_a[b]), unit(s_p[b]), unit(t_a[b]), unit(t_p[b])
        r_hh, r_hl, r_lh, r_ll = ta.T @ tp, ta.T @ sp, sa.T @ tp, sa.T @ sp
        losses.append(((1 - cosine(r_hh, r_hl)) + (1 - cosine(r_hh, r_lh))) / 2 + (1 - cosine(r_hh, r_ll)))
    return float(np.mean(losses))


def _maps(batch: int = 5, channels: int = 8, size: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, size, size, generator=generator) for _ in range(4)]


def test_cross_loss_equals_an_independent_numpy_implementation() -> None:
    for seed, shape in enumerate([(5, 8, 4), (3, 16, 7), (1, 4, 2)]):
        maps = _maps(*shape, seed=seed)
        value = CrossSampleRelationLoss()(*maps)
        expected = _reference(*(m.numpy() for m in maps))
        assert value.dtype == torch.float32 and value.dim() == 0
        assert float(value) == pytest.approx(expected, rel=1e-6)


def test_cross_loss_is_zero_when_the_student_maps_are_the_teacher_maps() -> None:
    _, _, t_a, t_p = _maps()
    assert float(CrossSampleRelationLoss()(t_a.clone(), t_p.clone(), t_a, t_p)) == pytest.approx(0.0, abs=1e-6)
    # Scale does not matter (each map is divided by its norm).
    assert float(CrossSampleRelationLoss()(3 * t_a, 0.5 * t_p, t_a, t_p)) == pytest.approx(0.0, abs=1e-6)


def test_cross_loss_symmetries() -> None:
    s_a, s_p, t_a, t_p = _maps()
    loss = CrossSampleRelationLoss()
    # Anchor and positive play symmetric roles: R transposes and the two mixed terms swap.
    torch.testing.assert_close(loss(s_p, s_a, t_p, t_a), loss(s_a, s_p, t_a, t_p), rtol=1e-6, atol=0)
    # The batch order does not matter.
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(loss(s_a[order], s_p[order], t_a[order], t_p[order]), loss(s_a, s_p, t_a, t_p),
                               rtol=1e-6, atol=0)
    # Student anchor = teacher anchor: R_LH = R_HH and R_HL = R_LL, so the loss is 1.5 (1 - cos(R_HH, R_LL)).
    both = loss(t_a, s_p, t_a, t_p)
    only_ll = _reference(t_a.numpy(), s_p.numpy(), t_a.numpy(), t_p.numpy())
    assert float(both) == pytest.approx(only_ll, rel=1e-6)
    r_hh = np.einsum("bci,bcj->bij", *(m.reshape(5, 8, -1).numpy() for m in (t_a, t_p)))
    r_ll = np.einsum("bci,bcj->bij", *(m.reshape(5, 8, -1).numpy() for m in (t_a, s_p)))
    cos = [(a.ravel() @ b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(r_hh, r_ll, strict=True)]
    assert float(both) == pytest.approx(1.5 * np.mean(1 - np.array(cos)), rel=1e-5)


def test_cross_loss_mask_leaves_samples_out() -> None:
    s_a, s_p, t_a, t_p = _maps(batch=6)
    mask = torch.tensor([True, False, True, True, False, True])
    kept = CrossSampleRelationLoss()(s_a[mask], s_p[mask], t_a[mask], t_p[mask])
    masked = CrossSampleRelationLoss()(s_a, s_p, t_a, t_p, mask=mask)
    torch.testing.assert_close(masked, kept, rtol=1e-6, atol=0)
    everything = CrossSampleRelationLoss()(s_a, s_p, t_a, t_p, mask=torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(everything, CrossSampleRelationLoss()(s_a, s_p, t_a, t_p), rtol=1e-6, atol=0)
    # No valid sample: a zero that still reaches the student maps (every parameter gets a gradient, DDP's need).
    s_a.requires_grad_(True)
    none = CrossSampleRelationLoss()(s_a, s_p, t_a, t_p, mask=torch.zeros(6, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad
    none.backward()
    assert s_a.grad is not None and torch.count_nonzero(s_a.grad) == 0


def test_cross_loss_runs_in_float32_and_leaves_the_teacher_without_gradient() -> None:
    s_a, s_p, t_a, t_p = (m.requires_grad_(True) for m in _maps())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = CrossSampleRelationLoss()(s_a.bfloat16(), s_p.bfloat16(), t_a.bfloat16(), t_p.bfloat16())
    assert value.dtype == torch.float32
    value = CrossSampleRelationLoss()(s_a, s_p, t_a, t_p)
    value.backward()
    assert s_a.grad is not None and s_p.grad is not None
    assert t_a.grad is None and t_p.grad is None


def test_cross_loss_refuses_mismatched_inputs() -> None:
    s_a, s_p, t_a, t_p = _maps()
    with pytest.raises(ValueError, match="same channel count .*hint-adapted"):
        CrossSampleRelationLoss()(s_a[:, :4], s_p[:, :4], t_a, t_p)
    with pytest.raises(ValueError, match="one shape"):
        CrossSampleRelationLoss()(s_a[:, :, :2], s_p, t_a, t_p)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(5,\)"):
        CrossSampleRelationLoss()(s_a, s_p, t_a, t_p, mask=torch.ones(5))
    with pytest.raises(ValueError, match=r"non-empty \(B, C, H, W\)"):
        CrossSampleRelationLoss()(s_a.flatten(2), s_p, t_a, t_p)


# -- the positives table ---------------------------------------------------------------------------------------
def _hand_made() -> tuple[np.ndarray, np.ndarray]:
    root3 = np.sqrt(3) / 2
    embeddings = np.array([[1, 0], [0.5, root3], [-1, 0], [1, 0], [2, 0], [0, 1], [0, 1]], dtype=np.float64)
    labels = np.array([0, 0, 0, 1, 1, 2, 0])
    return embeddings, labels


def _as_lists(table: PositiveTable) -> list[list[int]]:
    return [table.candidates_of(i).tolist() for i in range(len(table))]


def test_table_from_hand_made_embeddings() -> None:
    embeddings, labels = _hand_made()
    table = build_positive_table(embeddings, labels)
    # 0-1: cos 0.5; 0-2: -1; 0-6: exactly 0 (not > 0); 1-2: -0.5; 1-6: 0.866; 3-4: 1.0 (a duplicate, >= 0.99);
    # 5 is the only image of identity 2; never the image itself.
    assert _as_lists(table) == [[1], [0, 6], [], [], [], [], [1]]
    assert table.offsets.tolist() == [0, 1, 3, 3, 3, 3, 3, 4]
    assert table.offsets.dtype == np.int64 and table.candidates.dtype == np.int32  # half the bytes of int64
    assert _as_lists(build_positive_table(embeddings, labels, cross_margin=0.6)) == [[], [6], [], [], [], [], [1]]
    assert _as_lists(build_positive_table(embeddings, labels, cross_margin=-1.0)) == \
        [[1, 6], [0, 2, 6], [1, 6], [], [], [], [0, 1, 2]]  # cos(0, 2) = -1 is not above -1
    assert MAX_POSITIVE_COSINE == 0.99


def test_table_matches_a_brute_force_search() -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(60, 5))
    embeddings[7] = embeddings[3] * 2  # a duplicate
    labels = rng.integers(0, 6, size=60)
    labels[7] = labels[3]
    table = build_positive_table(torch.from_numpy(embeddings).float(), labels, cross_margin=0.1)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    for i in range(60):
        expected = [j for j in range(60) if j != i and labels[j] == labels[i]
                    and 0.1 < float(unit[i] @ unit[j]) < 0.99]
        assert table.candidates_of(i).tolist() == expected, i
    assert 7 not in table.candidates_of(3)


def test_draws_are_candidates_deterministic_and_uniform() -> None:
    table = build_positive_table(*_hand_made(), cross_margin=-1.0)
    draws = [table.draw(1, seed=0, epoch=e) for e in range(300)]
    assert set(draws) == {0, 2, 6} and min(draws.count(c) for c in (0, 2, 6)) > 70
    assert draws == [table.draw(1, seed=0, epoch=e) for e in range(300)]
    assert [table.draw(1, seed=1, epoch=e) for e in range(300)] != draws
    assert table.draw(3, seed=0, epoch=0) is None


def test_table_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="offsets must start at 0"):
        PositiveTable(np.array([0, 2, 1]), np.array([0]))
    with pytest.raises(ValueError, match=r"indices in \[0, 2\)"):
        PositiveTable(np.array([0, 1, 1]), np.array([5]))


def test_file_round_trip_and_staleness(tmp_path: Path) -> None:
    embeddings, labels = _hand_made()
    table = build_positive_table(embeddings, labels)
    teacher = tmp_path / "last.ckpt"
    teacher.write_bytes(b"teacher weights")
    path = positives_path(teacher)
    assert path == tmp_path / "last.positives.npz"
    key = PositiveKey(len(labels), labels_hash(labels), 0.0, file_fingerprint(teacher))
    assert stale_reason(path, key).startswith("no positives file")
    save_positives(path, table, key)
    assert {p.name for p in tmp_path.iterdir()} == {"last.ckpt", "last.positives.npz"}  # no partial file left
    loaded, stored = load_positives(path)
    assert stored == key and _as_lists(loaded) == _as_lists(table)
    assert stale_reason(path, key) is None
    assert labels_hash(labels.astype(np.int32)) == key.labels_hash  # the dtype does not matter
    changed = labels.copy()
    changed[0] = 5
    assert "training labels changed" in stale_reason(path, PositiveKey(7, labels_hash(changed), 0.0,
                                                                       key.teacher_fingerprint))
    assert "8 training images" not in stale_reason(path, PositiveKey(8, "x", 0.0, key.teacher_fingerprint))
    assert "mined for 7 training images, the training set has 8" in \
        stale_reason(path, PositiveKey(8, "x", 0.0, key.teacher_fingerprint))
    assert "cross_margin 0.0, the run uses 0.3" in stale_reason(path, PositiveKey(7, key.labels_hash, 0.3,
                                                                                  key.teacher_fingerprint))
    teacher.write_bytes(b"teacher weights, trained longer")
    assert "teacher checkpoint changed" in stale_reason(path, PositiveKey(7, key.labels_hash, 0.0,
                                                                          file_fingerprint(teacher)))
    path.write_bytes(b"garbage")
    assert "unreadable" in stale_reason(path, key)


def test_files_with_int64_candidates_still_load(tmp_path: Path) -> None:
    # Files written before the candidates became int32 hold int64 ones: same table, no re-mining.
    embeddings, labels = _hand_made()
    table = build_positive_table(embeddings, labels, cross_margin=-1.0)
    key = PositiveKey(len(labels), labels_hash(labels), -1.0, "1:00")
    older = PositiveTable.__new__(PositiveTable)
    object.__setattr__(older, "offsets", table.offsets)
    object.__setattr__(older, "candidates", table.candidates.astype(np.int64))
    save_positives(tmp_path / "old.positives.npz", older, key)
    with np.load(tmp_path / "old.positives.npz") as stored:
        assert stored["candidates"].dtype == np.int64
    loaded, stored_key = load_positives(tmp_path / "old.positives.npz")
    assert stored_key == key and loaded.candidates.dtype == np.int32 and _as_lists(loaded) == _as_lists(table)
    assert [loaded.draw(6, seed=0, epoch=e) for e in range(20)] == [table.draw(6, seed=0, epoch=e) for e in range(20)]


def test_index_dtype_widens_only_past_int32() -> None:
    assert index_dtype(2**31) == np.int32 and index_dtype(2**31 + 1) == np.int64


class _Images(torch.utils.data.Dataset):
    """A training set of random uint8 images with a ``labels`` array (as the ``train.list`` layout has)."""

    def __init__(self, labels: list[int], seed: int = 0) -> None:
        self.labels = np.array(labels)
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (len(labels), 3, 112, 112), dtype=torch.uint8, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.labels[index])}


def test_refresh_mines_once_and_again_when_labels_or_teacher_change(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.ckpt"
    teacher.write_bytes(b"v1")
    embeddings, labels = _hand_made()
    calls = []

    def embed(dataset: _Images) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(dataset))
        return embeddings, dataset_labels(dataset)

    dataset = _Images(labels.tolist())
    path = tmp_path / "teacher.positives.npz"
    assert refresh_positives(path, teacher, dataset, 0.0, embed) is True
    assert _as_lists(load_positives(path)[0]) == [[1], [0, 6], [], [], [], [], [1]]
    inode = path.stat().st_ino, path.stat().st_mtime_ns
    assert refresh_positives(path, teacher, dataset, 0.0, embed) is False  # reused, untouched
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == inode and calls == [7]
    assert refresh_positives(path, teacher, _Images([0, 2, 0, 1, 1, 2, 0]), 0.0, embed) is True  # labels
    assert _as_lists(load_positives(path)[0])[5] == [1]
    teacher.write_bytes(b"v2")
    assert refresh_positives(path, teacher, _Images([0, 2, 0, 1, 1, 2, 0]), 0.0, embed) is True  # teacher
    assert refresh_positives(path, teacher, _Images([0, 2, 0, 1, 1, 2, 0]), 0.5, embed) is True  # margin
    assert calls == [7, 7, 7, 7]


def test_teacher_embeddings_are_those_of_normalised_hr_images() -> None:
    teacher = TeacherModule(**TINY).backbone.eval()
    dataset = _Images([0, 1, 0, 1, 2])
    embeddings, labels = teacher_embeddings(teacher, dataset, "cpu", batch_size=2)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(teacher(normalize(dataset.images)).embedding, dim=1)
    torch.testing.assert_close(torch.from_numpy(embeddings), expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [0, 1, 0, 1, 2]
    with pytest.raises(ValueError, match="eval mode"):
        teacher_embeddings(teacher.train(), dataset, "cpu")


# -- the DataModule's pairs ------------------------------------------------------------------------------------
def _random_table(module: FaceDataModule, seed: int = 0) -> PositiveTable:
    """A table with the training labels and random embeddings: some images have candidates, some none."""
    labels = dataset_labels(module.training_images())
    embeddings = np.random.default_rng(seed).normal(size=(len(labels), 4))
    return build_positive_table(embeddings, labels, cross_margin=0.3)


def _module(root: Path, **overrides) -> FaceDataModule:
    settings = {"batch_size": 16, "num_workers": 0, "train_resolution": "multi", "train_interpolation": "random",
                "seed": 3, **overrides}
    module = FaceDataModule(str(root), **settings)
    module.setup("fit")
    return module


def _batches(module: FaceDataModule, count: int) -> list[dict[str, torch.Tensor]]:
    loader = module.train_dataloader()
    out = []
    for raw in loader:
        out.append({"raw": raw, **module.on_after_batch_transfer(dict(raw), 0)})
        if len(out) == count:
            break
    return out


def test_each_positive_is_a_candidate_of_its_anchor(synth_root: Path) -> None:
    module = _module(synth_root)
    table = _random_table(module)
    counts = table.counts()
    assert (counts == 0).any() and (counts > 0).any()
    module.set_positives(table)
    assert module.positives is table
    base = module.training_images()
    for index in range(0, len(base), 7):
        for epoch in (0, 1):
            item = module.train_set[(index, epoch)]
            drawn = table.draw(index, module.seed, epoch)
            if drawn is None:
                assert item["has_positive"] is False and torch.equal(item["positive"], item["image"])
            else:
                assert item["has_positive"] is True and drawn in table.candidates_of(index)
                assert torch.equal(item["positive"], base[drawn]["image"])
            assert torch.equal(item["image"], base[index]["image"]) and item["label"] == base[index]["label"]


def test_positive_views_follow_the_anchor_rules(synth_root: Path) -> None:
    module = _module(synth_root, train_resolution=14, train_interpolation="nearest")
    module.set_positives(_random_table(module))
    batch = _batches(module, 1)[0]
    assert set(batch) - {"raw"} == {"hr", "lr", "label", "hr_positive", "lr_positive", "has_positive"}
    assert batch["has_positive"].dtype == torch.bool and batch["has_positive"].shape == (16,)
    torch.testing.assert_close(batch["lr_positive"], degrade_fixed(batch["hr_positive"], 14), rtol=0, atol=0)
    plain = normalize(batch["raw"]["positive"])
    for i in range(16):  # each positive is flipped or not, as a whole
        assert torch.equal(batch["hr_positive"][i], plain[i]) or torch.equal(batch["hr_positive"][i], plain[i].flip(-1))


def test_anchor_views_are_the_same_with_and_without_positives(synth_root: Path) -> None:
    """The positives' draws come after the anchors': from one generator state, the anchors' views of a batch are
    those of a run without positives (the next batch starts from another state, as the run has drawn more)."""
    plain = _module(synth_root)
    without = _batches(plain, 3)
    module = _module(synth_root)
    module.set_positives(_random_table(module))
    loader = iter(module.train_dataloader())
    for index in range(3):
        raw = next(loader)
        assert torch.equal(raw["image"], without[index]["raw"]["image"])  # the same anchors in the same order
        state = module.generator.get_state()
        paired = module.on_after_batch_transfer(dict(raw), 0)
        plain.generator.set_state(state)
        alone = plain.training_views(raw["image"], raw["label"])
        for key in ("hr", "lr", "label"):
            assert torch.equal(paired[key], alone[key]), key
        if index == 0:  # the first batch starts from the seed in both runs
            for key in ("hr", "lr", "label"):
                assert torch.equal(paired[key], without[0][key]), key
        assert not torch.equal(paired["lr"], paired["lr_positive"])


def test_pairs_are_the_same_after_a_resume_and_with_workers(synth_root: Path) -> None:
    def paired(module: FaceDataModule) -> FaceDataModule:
        module.set_positives(_random_table(module))
        return module

    reference = _batches(paired(_module(synth_root)), 3)
    # Another number of workers: the same positives, augmentation-free views, in the same order.
    for a, b in zip(reference, _batches(paired(_module(synth_root, num_workers=2)), 3), strict=True):
        for key in ("hr", "lr", "hr_positive", "lr_positive", "has_positive"):
            assert torch.equal(a[key], b[key]), key
    # A resume after two batches continues with the reference's third.
    first = paired(_module(synth_root))
    _batches(first, 2)
    state = first.state_dict()
    resumed = _module(synth_root)
    resumed.load_state_dict(state)
    resumed = paired(resumed)
    third = _batches(resumed, 1)[0]
    for key in ("hr", "lr", "hr_positive", "lr_positive", "has_positive", "label"):
        assert torch.equal(third[key], reference[2][key]), key


def test_augmented_positives_are_seeded_apart_from_their_anchor(synth_root: Path) -> None:
    module = _module(synth_root, photometric_p=1.0)
    table = _random_table(module)
    module.set_positives(table)
    index = int(np.flatnonzero(table.counts())[0])
    drawn = table.draw(index, module.seed, 0)
    item = module.train_set[(index, 0)]
    augmented = module.train_set.dataset  # the augmentation under the pairing
    assert torch.equal(item["image"], augmented[(index, 0)]["image"])  # anchors as without positives
    assert torch.equal(item["positive"], augmented.augmented(drawn, (0, index, 1))["image"])
    assert not torch.equal(item["positive"], augmented[(drawn, 0)]["image"])  # not the draw of drawn's own anchor
    assert module.train_dataloader().sampler.with_epoch
    module.set_positives(None)
    assert module.positives is None


def test_a_table_of_another_size_is_refused(synth_root: Path) -> None:
    module = _module(synth_root)
    with pytest.raises(ValueError, match="covers 7 images, the training set has 400"):
        module.set_positives(build_positive_table(*_hand_made()))


# -- the training step and the logit switch --------------------------------------------------------------------
def _save_teacher(tmp_path: Path, head: bool = True, **overrides) -> Path:
    teacher = TeacherModule(**{**TINY, **overrides})
    state = {k: v for k, v in teacher.state_dict().items() if head or not k.startswith("head.")}
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(teacher.hparams)}, path)
    return path


def _pair_batch(size: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hr, hr_positive = (torch.rand(size, 3, 112, 112, generator=generator) * 2 - 1 for _ in range(2))
    return {"hr": hr, "lr": degrade_fixed(hr, 14), "hr_positive": hr_positive,
            "lr_positive": degrade_fixed(hr_positive, 14), "label": torch.arange(size) % 7,
            "has_positive": torch.tensor([True, False, True, True])[:size]}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_cross_step_is_ce_plus_20_point_plus_4_cross(tmp_path: Path) -> None:
    module = DistillModule(teacher_ckpt=str(_save_teacher(tmp_path)), distill="fskd_cross", **TINY)
    assert (module.distill_weight, module.cross_weight) == (20.0, 4.0) and module.hints is not None
    module.train()
    batch = _pair_batch()
    torch.manual_seed(0)
    loss = module.training_step(batch, 0)
    # The same terms, recomputed from one student forward on anchors + positives (the BN statistics of the
    # step; the running statistics moved twice since, which the training-mode forward does not read).
    student = module.backbone(torch.cat([batch["lr"], batch["lr_positive"]]))
    with torch.no_grad():
        teacher = module.teacher(torch.cat([batch["hr"], batch["hr_positive"]]))
    maps = module.hints(student.features)
    ce = torch.nn.functional.cross_entropy(module.head(student.embedding[:4], batch["label"]), batch["label"])
    point = FeatureSimilarityLoss()([m[:4] for m in maps], [t[:4] for t in teacher.features])
    cross = CrossSampleRelationLoss()(maps[-1][:4], maps[-1][4:], teacher.features[-1][:4],
                                      teacher.features[-1][4:], mask=batch["has_positive"])
    torch.testing.assert_close(loss, ce + 20 * point + 4 * cross, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert module.hints.adapters[-1][0].weight.grad is not None
    with pytest.raises(ValueError, match="set_positives was not called"):
        module.training_step({k: v for k, v in batch.items() if "positive" not in k}, 0)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_logit_switch_adds_hinton_kd_with_weight_1(tmp_path: Path) -> None:
    teacher_ckpt = str(_save_teacher(tmp_path))
    plain = DistillModule(teacher_ckpt=teacher_ckpt, distill="fskd", **TINY)
    assert plain.teacher_head is None and plain.logit_loss is None
    module = DistillModule(teacher_ckpt=teacher_ckpt, distill="fskd", logit_distill=True, **TINY)
    module.load_state_dict(plain.state_dict(), strict=False)
    assert module.teacher_head is not None
    batch = _pair_batch()
    # Fixed BN statistics: the two modules compute the same forward passes.
    module.eval()
    plain.eval()
    with_kd, without = module.training_step(batch, 0), plain.training_step(batch, 0)
    student = plain.backbone(batch["lr"])
    with torch.no_grad():
        teacher = plain.teacher(batch["hr"])
    expected = LogitKDLoss(temperature=4.0)(module.head.logits(student.embedding),
                                            module.teacher_head.logits(teacher.embedding))
    torch.testing.assert_close(with_kd - without, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="logit distillation needs the teacher's margin head"):
        DistillModule(teacher_ckpt=str(_save_teacher(tmp_path, head=False)), logit_distill=True, **TINY)
    with pytest.raises(ValueError, match="second time"):
        DistillModule(teacher_ckpt=teacher_ckpt, distill="hkd", logit_distill=True, **TINY)
    with pytest.raises(ValueError, match="cross_weight applies to distill 'fskd_cross' only"):
        DistillModule(teacher_ckpt=teacher_ckpt, distill="fskd_hint", cross_weight=2.0, **TINY)


# -- a fit through the CLI -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fskd_cross_fit_mines_positives_once(tiny_teacher_ckpt: Path, synth_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "teacher/last.ckpt"
    teacher.parent.mkdir()
    teacher.write_bytes(tiny_teacher_ckpt.read_bytes())  # positives are written next to the teacher
    config = [arg for name in ("synthetic", "method/fskd_cross", "resolution/14") for arg in
              ("--config", str(CONFIGS / f"{name}.yaml"))]
    args = ["fit", *config, "--data.root", str(synth_root), "--model.teacher_ckpt", str(teacher),
            "--data.batch_size", "16", "--trainer.limit_val_batches", "0", *FAST]
    cli = lightning_main([*args, "--trainer.max_steps", "3"])
    positives = tmp_path / "teacher/last.positives.npz"
    table, key = load_positives(positives)
    assert len(table) == key.num_images == 400 and key.teacher_fingerprint == file_fingerprint(teacher)
    assert cli.datamodule.positives is not None and cli.model.head.m == 0.2
    metrics = cli.trainer.callback_metrics
    for name in ("train/ce", "train/distill", "train/cross", "train/loss"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    last = tmp_path / "runs/synthetic_fskd_cross_14/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    written = positives.stat().st_ino, positives.stat().st_mtime_ns
    # Resuming reuses the file (same images, labels, margin and teacher) and continues to step 4.
    lightning_main([*args, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert (positives.stat().st_ino, positives.stat().st_mtime_ns) == written
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert set(os.listdir(teacher.parent)) == {"last.ckpt", "last.positives.npz"}  # no partial file left


@pytest.mark.slow
def test_fskd_cross_stopped_and_resumed_equals_uninterrupted(tiny_root: Path, tmp_path: Path) -> None:
    """The reliability recipe (random resolution and interpolation, flips, dropout, a milestone, validations):
    a student stopped after 3 steps and resumed ends bit-identical to one trained 6 steps without a stop, so
    its positives (and their flips and degradations) were the same."""
    student = (TEACHER_CONFIG, str(CONFIGS / "method/fskd_cross.yaml"), str(CONFIGS / "resolution/multi.yaml"))
    with single_thread():
        fit(tmp_path / "teacher", "--data.root", str(tiny_root), "--trainer.max_steps", "2")
        args = ["--data.root", str(tiny_root), "--model.teacher_ckpt", str(checkpoint_path(tmp_path / "teacher")),
                "--data.train_resolution", "multi"]
        fit(tmp_path / "whole", *args, "--trainer.max_steps", "6", config=student)
        fit(tmp_path / "split", *args, "--trainer.max_steps", "3", config=student)
        fit(tmp_path / "split", *args, "--trainer.max_steps", "6", "--ckpt_path", "last", config=student)
    whole, split = checkpoint_path(tmp_path / "whole", student), checkpoint_path(tmp_path / "split", student)
    assert torch.load(split, weights_only=True)["global_step"] == 6
    assert training_state_differences(whole, split) == []

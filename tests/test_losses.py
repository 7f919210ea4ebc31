"""Tests of the distillation losses against independent float64 re-computations (numpy / explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fskd.losses import (
    DISTILL_LOSSES,
    DISTILL_NAMES,
    AttentionSimilarityLoss,
    AttentionTransferLoss,
    CrossSampleFeatureSimilarityLoss,
    FeatureSimilarityLoss,
    FitNetLoss,
    HintAdapters,
    HintedFeatureSimilarityLoss,
    LogitKDLoss,
    RelationalKDLoss,
    create_distill_loss,
)

# iResNet stage shapes for a 112x112 input (56, 28, 14, 7), with tiny channel counts.
STAGE_SHAPES = [(3, 4, 56, 56), (3, 6, 28, 28), (3, 8, 14, 14), (3, 10, 7, 7)]


def random_stages(seed: int, shapes=STAGE_SHAPES) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def to64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def reference_fskd(student, teacher) -> float:
    """mean over stages of mean over batch of (1 - cos of the fully flattened per-sample maps)."""
    stage_values = []
    for s, t in zip(student, teacher, strict=True):
        per_sample = []
        for b in range(s.shape[0]):
            u, v = to64(s[b]).ravel(), to64(t[b]).ravel()
            per_sample.append(1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
        stage_values.append(np.mean(per_sample))
    return float(np.mean(stage_values))


# ---------------------------------------------------------------- F-SKD


def test_fskd_matches_float64_reference():
    student, teacher = random_stages(0), random_stages(1)
    value = FeatureSimilarityLoss()(student, teacher)
    assert value.dim() == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(reference_fskd(student, teacher), abs=1e-6)
    # Correlated inputs (loss far from 1) to exercise more than the "orthogonal" regime.
    mixed = [0.9 * t + 0.3 * s for s, t in zip(student, teacher, strict=True)]
    assert FeatureSimilarityLoss()(mixed, teacher).item() == pytest.approx(
        reference_fskd(mixed, teacher), abs=1e-6
    )


def test_fskd_is_mean_over_stages_not_sum_and_flattens_whole_map():
    # One stage identical (0), one stage negated (2): mean = 1.
    a, b = random_stages(2, [(2, 3, 4, 4), (2, 5, 2, 2)])
    assert FeatureSimilarityLoss()([a, b], [a, -b]).item() == pytest.approx(1.0, abs=1e-7)
    # A per-channel (not per-map) scaling changes a whole-map cosine: not invariant per channel.
    scale = torch.tensor([1.0, 5.0, 0.2]).view(1, 3, 1, 1)
    assert FeatureSimilarityLoss()([a * scale], [a]).item() > 1e-3


def test_fskd_zero_for_identical_features():
    features = random_stages(3)
    assert abs(FeatureSimilarityLoss()(features, [f.clone() for f in features]).item()) <= 1e-7


def test_fskd_invariant_to_positive_per_sample_scaling():
    student, teacher = random_stages(4), random_stages(5)
    base = FeatureSimilarityLoss()(student, teacher).item()
    factors = torch.tensor([0.01, 3.0, 250.0]).view(3, 1, 1, 1)
    scaled_student = [s * factors for s in student]
    scaled_teacher = [t * factors.flip(0) for t in teacher]
    assert FeatureSimilarityLoss()(scaled_student, teacher).item() == pytest.approx(base, abs=1e-6)
    assert FeatureSimilarityLoss()(student, scaled_teacher).item() == pytest.approx(base, abs=1e-6)


def test_fskd_maximal_for_negated_features():
    features = random_stages(6)
    assert FeatureSimilarityLoss()(features, [-f for f in features]).item() == pytest.approx(2.0, abs=1e-7)


def test_fskd_zero_maps_are_finite():
    zeros = [torch.zeros(2, 3, 4, 4, requires_grad=True)]
    value = FeatureSimilarityLoss()(zeros, [torch.randn(2, 3, 4, 4)])
    assert value.item() == pytest.approx(1.0)  # cosine 0 by the eps convention
    value.backward()
    assert torch.isfinite(zeros[0].grad).all()
    assert FeatureSimilarityLoss()([torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 2, 2, 2)]).item() == 1.0


def test_fskd_gradient_only_into_student():
    student = [s.requires_grad_() for s in random_stages(7)]
    teacher = [t.requires_grad_() for t in random_stages(8)]
    FeatureSimilarityLoss()(student, teacher).backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)


def test_fskd_gradient_matches_autograd_of_reference_formula():
    student = [s.double().requires_grad_() for s in random_stages(9, [(2, 3, 4, 4)])]
    teacher = [t.double() for t in random_stages(10, [(2, 3, 4, 4)])]
    FeatureSimilarityLoss()(student, teacher).backward()
    s64 = student[0].detach().clone().requires_grad_()
    (1 - F.cosine_similarity(s64.flatten(1), teacher[0].flatten(1), dim=1)).mean().backward()
    torch.testing.assert_close(student[0].grad.double(), s64.grad, atol=1e-6, rtol=1e-5)


def test_fskd_shape_mismatch_names_stage_and_shapes():
    student, teacher = random_stages(11), random_stages(12)
    teacher[2] = torch.randn(3, 8, 7, 7)
    message = r"stage 2: student shape \(3, 8, 14, 14\) != teacher shape \(3, 8, 7, 7\)"
    with pytest.raises(ValueError, match=message):
        FeatureSimilarityLoss()(student, teacher)
    with pytest.raises(ValueError, match="student has 4 stages but teacher has 3"):
        FeatureSimilarityLoss()(student, teacher[:3])


def test_fskd_refuses_bare_tensor_and_empty_list():
    feature = torch.randn(2, 3, 4, 4)
    with pytest.raises(TypeError, match="single tensor"):
        FeatureSimilarityLoss()(feature, feature)
    with pytest.raises(ValueError, match="empty"):
        FeatureSimilarityLoss()([], [])


def test_fskd_float32_under_bf16_autocast():
    student = [s.bfloat16() for s in random_stages(13)]
    teacher = [t.bfloat16() for t in random_stages(14)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = FeatureSimilarityLoss()(student, teacher)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference_fskd(student, teacher), abs=1e-6)


def test_fskd_default_weight():
    assert FeatureSimilarityLoss.default_weight == 20.0


# ---------------------------------------------------------------- A-SKD


def random_attention(seed: int, batch: int = 3):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 8), (6, 4), (8, 2)]
    return [
        (torch.rand(batch, c, generator=generator), torch.rand(batch, 1, h, h, generator=generator))
        for c, h in shapes
    ]


def test_attention_similarity_matches_loops():
    student, teacher = random_attention(20), random_attention(21)
    block_values = []
    for (sc, ss), (tc, ts) in zip(student, teacher, strict=True):
        terms = []
        for s, t in ((sc, tc), (ss, ts)):
            cosines = [
                to64(s[b]).ravel()
                @ to64(t[b]).ravel()
                / (np.linalg.norm(to64(s[b])) * np.linalg.norm(to64(t[b])))
                for b in range(3)
            ]
            terms.append(np.mean([1 - c for c in cosines]))
        block_values.append((terms[0] + terms[1]) / 2)
    value = AttentionSimilarityLoss()(student, teacher)
    assert value.item() == pytest.approx(np.mean(block_values), abs=1e-6)
    assert AttentionSimilarityLoss.default_weight == 80.0


def test_attention_similarity_gradients_and_errors():
    student = [(c.requires_grad_(), s.requires_grad_()) for c, s in random_attention(22)]
    teacher = [(c.requires_grad_(), s.requires_grad_()) for c, s in random_attention(23)]
    AttentionSimilarityLoss()(student, teacher).backward()
    assert all(c.grad is None and s.grad is None for c, s in teacher)
    assert all(c.grad is not None and s.grad is not None for c, s in student)
    bad = random_attention(24)
    bad[1] = (bad[1][0], torch.rand(3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"block 1 spatial gate: student shape \(3, 1, 4, 4\)"):
        AttentionSimilarityLoss()(random_attention(25), bad)
    with pytest.raises(TypeError, match=r"teacher_attention\[0\] must be a \(channel_gate, spatial_gate\)"):
        AttentionSimilarityLoss()(random_attention(25), [torch.rand(3, 4)])


# ---------------------------------------------------------------- hint adapters / FitNet


def test_hint_adapters_shapes_and_gradients():
    adapters = HintAdapters([4, 6, 8, 10])
    student = [s.requires_grad_() for s in random_stages(30)]
    adapted = adapters(student)
    assert isinstance(adapted, tuple)
    assert [tuple(a.shape) for a in adapted] == [tuple(s.shape) for s in student]
    FitNetLoss()(adapted, random_stages(31)).backward()
    for adapter in adapters.adapters:
        conv, batch_norm = adapter
        assert conv.bias is None and conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        assert isinstance(batch_norm, torch.nn.BatchNorm2d) and batch_norm.weight.grad is not None
    assert all(s.grad is not None for s in student)


def test_hint_adapters_init_options():
    plain = HintAdapters([64], batch_norm=False)
    assert len(plain.adapters[0]) == 1
    assert plain.adapters[0][0].weight.std().item() == pytest.approx(0.1, rel=0.1)  # N(0, 0.1) as the authors
    identity = HintAdapters([3, 5], batch_norm=False, identity_init=True)
    features = random_stages(32, [(2, 3, 4, 4), (2, 5, 2, 2)])
    for out, feature in zip(identity(features), features, strict=True):
        torch.testing.assert_close(out, feature)


def test_hint_adapters_errors():
    adapters = HintAdapters([4, 6])
    with pytest.raises(ValueError, match="got 1 stage features for 2 adapters"):
        adapters([torch.randn(2, 4, 3, 3)])
    with pytest.raises(ValueError, match=r"stage 1: expected \(B, 6, H, W\), got \(2, 5, 3, 3\)"):
        adapters([torch.randn(2, 4, 3, 3), torch.randn(2, 5, 3, 3)])
    with pytest.raises(ValueError, match="positive integers"):
        HintAdapters([4, 0])


def test_fitnet_matches_numpy():
    student, teacher = random_stages(33), random_stages(34)
    expected = np.mean([np.mean((to64(s) - to64(t)) ** 2) for s, t in zip(student, teacher, strict=True)])
    assert FitNetLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert FitNetLoss.default_weight == 1.5
    teacher_grad = [t.requires_grad_() for t in teacher]
    FitNetLoss()([s.requires_grad_() for s in student], teacher_grad).backward()
    assert all(t.grad is None for t in teacher_grad)


# ---------------------------------------------------------------- attention transfer


def test_attention_transfer_matches_numpy_with_different_channels():
    student = random_stages(40, [(2, 3, 6, 6), (2, 4, 3, 3)])
    teacher = random_stages(41, [(2, 7, 6, 6), (2, 9, 3, 3)])

    def attention(feature: np.ndarray) -> np.ndarray:
        maps = []
        for sample in feature:
            energy = np.zeros(sample.shape[1:])
            for channel in sample:
                energy += channel**2
            vector = energy.ravel()
            maps.append(vector / (math.sqrt(float(vector @ vector)) + 1e-6))
        return np.stack(maps)

    def expected(student, teacher) -> float:
        return float(
            np.mean(
                [
                    np.mean((attention(to64(s)) - attention(to64(t))) ** 2)
                    for s, t in zip(student, teacher, strict=True)
                ]
            )
        )

    value = AttentionTransferLoss()(student, teacher).item()
    assert value == pytest.approx(expected(student, teacher), rel=1e-5)
    # Tiny activations: the +1e-6 in the normaliser is no longer negligible and must be where it belongs.
    tiny = [s * 1e-3 for s in student]
    assert AttentionTransferLoss()(tiny, teacher).item() == pytest.approx(expected(tiny, teacher), rel=1e-5)
    assert AttentionTransferLoss.default_weight == 1000.0
    with pytest.raises(ValueError, match="stage 1"):
        AttentionTransferLoss()(student, [teacher[0], torch.randn(2, 9, 4, 4)])


# ---------------------------------------------------------------- RKD


def reference_rkd(student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float]:
    def distances(e: np.ndarray) -> np.ndarray:
        n = len(e)
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if i != j:
                    d[i, j] = math.sqrt(float(np.sum((e[i] - e[j]) ** 2)))
        return d / d[d > 0].mean()

    def angles(e: np.ndarray) -> np.ndarray:
        n = len(e)
        values = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    values.append(0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv)))
        return np.array(values)

    def smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
        diff = np.abs(a - b)
        return float(np.mean(np.where(diff < 1, 0.5 * diff**2, diff - 0.5)))

    s, t = to64(student), to64(teacher)
    return smooth_l1(distances(s), distances(t)), smooth_l1(angles(s), angles(t))


def test_rkd_matches_explicit_loops():
    generator = torch.Generator().manual_seed(50)
    student = torch.randn(5, 6, generator=generator)
    teacher = torch.randn(5, 9, generator=generator) * 3  # different embedding size is allowed
    distance, angle = reference_rkd(student, teacher)
    loss = RelationalKDLoss()
    assert loss.distance_term(student, teacher).item() == pytest.approx(distance, abs=1e-6)
    assert loss.angle_term(student, teacher).item() == pytest.approx(angle, abs=1e-6)
    assert loss(student, teacher).item() == pytest.approx(distance + 2 * angle, abs=1e-6)
    weighted = RelationalKDLoss(distance_weight=0.5, angle_weight=0.0)
    assert weighted(student, teacher).item() == pytest.approx(0.5 * distance, abs=1e-6)
    assert RelationalKDLoss.default_weight == 40.0
    # both terms are clearly non-zero, so the comparisons above are not trivially 0 == 0
    assert distance > 1e-3 and angle > 1e-3


def test_rkd_scale_invariant_gradients_and_errors():
    generator = torch.Generator().manual_seed(51)
    student = torch.randn(4, 6, generator=generator).requires_grad_()
    teacher = torch.randn(4, 6, generator=generator).requires_grad_()
    loss = RelationalKDLoss()
    assert loss(student * 7.0, teacher).item() == pytest.approx(loss(student, teacher).item(), abs=1e-5)
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    loss(student, teacher).backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same B >= 2"):
        loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="same B >= 2"):
        loss(torch.randn(3, 3), torch.randn(4, 3))


# ---------------------------------------------------------------- Hinton KD


def test_logit_kd_matches_numpy():
    generator = torch.Generator().manual_seed(60)
    student = torch.randn(4, 7, generator=generator) * 5
    teacher = torch.randn(4, 7, generator=generator) * 5

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    for temperature in (4.0, 1.0):
        p_t, p_s = softmax(to64(teacher) / temperature), softmax(to64(student) / temperature)
        expected = np.sum(p_t * (np.log(p_t) - np.log(p_s))) / 4 * temperature**2
        value = LogitKDLoss(temperature)(student, teacher)
        assert value.item() == pytest.approx(expected, rel=1e-5)
    assert LogitKDLoss().temperature == 4.0 and LogitKDLoss.default_weight == 1.0
    with pytest.raises(ValueError, match="temperature must be positive"):
        LogitKDLoss(0.0)


def test_logit_kd_gradient_only_into_student_and_bf16():
    student = torch.randn(3, 5).requires_grad_()
    teacher = torch.randn(3, 5).requires_grad_()
    LogitKDLoss()(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = LogitKDLoss()(student.bfloat16(), teacher.bfloat16())
    assert value.dtype == torch.float32


# ---------------------------------------------------------------- factory


def test_factory_builds_each_loss_with_kwargs():
    expected_classes = {
        "fskd": FeatureSimilarityLoss,
        "fskd_hint": HintedFeatureSimilarityLoss,
        "askd": AttentionSimilarityLoss,
        "fitnet": FitNetLoss,
        "at": AttentionTransferLoss,
        "rkd": RelationalKDLoss,
        "hkd": LogitKDLoss,
        "fskd_cross": CrossSampleFeatureSimilarityLoss,
    }
    assert set(DISTILL_NAMES) == set(expected_classes) == set(DISTILL_LOSSES)
    for name, loss_class in expected_classes.items():
        assert type(create_distill_loss(name)) is loss_class
    # The authors' configuration of each method (their later code's --distill_type handling).
    assert {n for n, c in DISTILL_LOSSES.items() if c.needs_hint} == {"fskd_hint", "fitnet", "fskd_cross"}
    assert {n for n, c in DISTILL_LOSSES.items() if c.needs_positives} == {"fskd_cross"}
    assert {n: c.inputs for n, c in DISTILL_LOSSES.items()} == {
        "fskd": "features", "fskd_hint": "features", "askd": "attention", "fitnet": "features",
        "at": "features", "rkd": "embedding", "hkd": "logits", "fskd_cross": "features"}
    assert {n: c.default_weight for n, c in DISTILL_LOSSES.items()} == {
        "fskd": 20.0, "fskd_hint": 20.0, "askd": 80.0, "fitnet": 1.5, "at": 1000.0, "rkd": 40.0, "hkd": 1.0,
        "fskd_cross": 20.0}
    assert create_distill_loss("hkd", temperature=2.0).temperature == 2.0
    assert create_distill_loss("rkd", distance_weight=3.0).distance_weight == 3.0


def test_factory_errors():
    expected = (
        "unknown distillation loss 'F_SKD'; expected one of: fskd, fskd_hint, askd, fitnet, at, rkd, hkd, fskd_cross"
    )
    with pytest.raises(ValueError, match=expected):
        create_distill_loss("F_SKD")
    with pytest.raises(TypeError, match=r"'fitnet' \(FitNetLoss\) rejected arguments \['temperature'\]"):
        create_distill_loss("fitnet", temperature=4.0)

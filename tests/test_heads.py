"""Tests of fskd.models.heads against float64 NumPy re-computations of the margin formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fskd.models import AdaFace, ArcFace, ClassificationHead, CosFace, SoftmaxHead, create_head, list_heads

EMBEDDING_SIZE = 8
NUM_CLASSES = 5


def _normalised_cosine(embeddings: np.ndarray, weight: np.ndarray) -> np.ndarray:
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    return e @ w.T


def _reference_cosface(
    emb: np.ndarray, weight: np.ndarray, labels: np.ndarray, s: float, m: float
) -> np.ndarray:
    cos = _normalised_cosine(emb, weight)
    out = cos.copy()
    rows = np.arange(len(labels))
    out[rows, labels] -= m
    return s * out


def _reference_arcface(
    emb: np.ndarray, weight: np.ndarray, labels: np.ndarray, s: float, m: float, easy_margin: bool
) -> np.ndarray:
    cos = _normalised_cosine(emb, weight)
    out = cos.copy()
    for row, label in enumerate(labels):
        c = cos[row, label]
        theta = math.acos(min(max(c, -1.0), 1.0))
        if easy_margin:
            out[row, label] = math.cos(theta + m) if c > 0 else c
        elif theta + m <= math.pi:  # equivalent to c >= cos(pi - m): the margin keeps theta in [0, pi]
            out[row, label] = math.cos(theta + m)
        else:
            out[row, label] = c - math.sin(math.pi - m) * m
    return s * out


def _reference_adaface(
    emb: np.ndarray,
    weight: np.ndarray,
    labels: np.ndarray,
    s: float,
    m: float,
    h: float,
    mean: float,
    std: float,
    eps: float = 1e-3,
) -> np.ndarray:
    cos = _normalised_cosine(emb, weight)
    out = cos.copy()
    for row, label in enumerate(labels):
        norm = min(max(float(np.linalg.norm(emb[row])), 0.001), 100.0)
        scaler = min(max((norm - mean) / (std + eps) * h, -1.0), 1.0)
        theta = math.acos(min(max(cos[row, label], -1 + eps), 1 - eps))
        theta_m = min(max(theta - m * scaler, eps), math.pi - eps)
        out[row, label] = math.cos(theta_m) - (m + m * scaler)
    return s * out


def _random_inputs(seed: int, batch: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, EMBEDDING_SIZE, generator=generator) * 3.0
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=generator)
    return embeddings, labels


def _assert_margin_only_on_target(
    head: ClassificationHead, embeddings: torch.Tensor, labels: torch.Tensor
) -> None:
    with_margin = head(embeddings, labels)
    plain = head.logits(embeddings)
    off_target = torch.ones_like(plain, dtype=torch.bool)
    off_target[torch.arange(len(labels)), labels] = False
    torch.testing.assert_close(with_margin[off_target], plain[off_target], rtol=0, atol=0)
    assert not torch.allclose(with_margin[~off_target], plain[~off_target])


@pytest.mark.parametrize(("s", "m"), [(30.0, 0.25), (64.0, 0.4)])
def test_cosface_matches_reference(s: float, m: float) -> None:
    torch.manual_seed(0)
    head = CosFace(EMBEDDING_SIZE, NUM_CLASSES, s=s, m=m)
    embeddings, labels = _random_inputs(1)
    expected = _reference_cosface(
        embeddings.double().numpy(), head.weight.detach().double().numpy(), labels.numpy(), s, m
    )
    out = head(embeddings, labels)
    assert out.dtype == torch.float32 and out.shape == (7, NUM_CLASSES)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        head.logits(embeddings).detach().numpy(),
        s * _normalised_cosine(embeddings.double().numpy(), head.weight.detach().double().numpy()),
        rtol=1e-5,
        atol=1e-4,
    )
    _assert_margin_only_on_target(head, embeddings, labels)


def test_cosface_defaults_are_the_paper_era_values() -> None:
    head = CosFace(EMBEDDING_SIZE, NUM_CLASSES)
    assert (head.s, head.m) == (30.0, 0.25)
    arc = ArcFace(EMBEDDING_SIZE, NUM_CLASSES)
    assert (arc.s, arc.m, arc.easy_margin) == (30.0, 0.5, False)
    ada = AdaFace(EMBEDDING_SIZE, NUM_CLASSES)
    assert (ada.s, ada.m, ada.h, ada.t_alpha) == (64.0, 0.4, 0.333, 0.01)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_matches_reference_on_both_branches(easy_margin: bool) -> None:
    torch.manual_seed(0)
    s, m = 30.0, 0.5
    head = ArcFace(EMBEDDING_SIZE, NUM_CLASSES, s=s, m=m, easy_margin=easy_margin)
    embeddings, labels = _random_inputs(2, batch=9)
    weight = head.weight.detach()
    # rows 0-2: nearly opposite to the target (cos < cos(pi - m), fallback branch);
    # rows 3-4: close to the target (cos > 0); the rest random.
    noise = 0.05 * torch.randn(5, EMBEDDING_SIZE, generator=torch.Generator().manual_seed(3))
    embeddings[:3] = -weight[labels[:3]] + noise[:3]
    embeddings[3:5] = weight[labels[3:5]] + noise[3:5]
    expected = _reference_arcface(
        embeddings.double().numpy(), weight.double().numpy(), labels.numpy(), s, m, easy_margin
    )
    cos_target = _normalised_cosine(embeddings.double().numpy(), weight.double().numpy())[range(9), labels]
    assert (cos_target[:3] < math.cos(math.pi - m)).all() and (cos_target[3:5] > 0.9).all()
    out = head(embeddings, labels)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=2e-4)
    _assert_margin_only_on_target(head, embeddings, labels)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_gradients_are_finite_at_cos_plus_minus_one(easy_margin: bool) -> None:
    head = ArcFace(EMBEDDING_SIZE, NUM_CLASSES, easy_margin=easy_margin)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        # axis-aligned class weights and embeddings along (or against) them: cos is exactly +1 / -1 in fp32
        head.weight.copy_(0.7 * torch.eye(NUM_CLASSES, EMBEDDING_SIZE))
        embeddings = torch.stack([head.weight[0], -head.weight[1], 2 * head.weight[2], -3 * head.weight[3]])
    embeddings.requires_grad_(True)
    cosine = head.cosine(embeddings.detach())[torch.arange(4), labels]
    assert cosine.tolist() == [1.0, -1.0, 1.0, -1.0]
    logits = head(embeddings, labels)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    assert torch.isfinite(logits).all()
    assert torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_adaface_gradients_are_finite_at_cos_plus_minus_one() -> None:
    head = AdaFace(EMBEDDING_SIZE, NUM_CLASSES)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        head.weight.copy_(0.7 * torch.eye(NUM_CLASSES, EMBEDDING_SIZE))
        embeddings = torch.stack([5 * head.weight[0], -30 * head.weight[1]])
    embeddings.requires_grad_(True)
    head(embeddings, labels).sum().backward()
    assert torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("h", [0.333, 1.0])
def test_adaface_matches_reference_in_eval(h: float) -> None:
    torch.manual_seed(0)
    s, m = 64.0, 0.4
    head = AdaFace(EMBEDDING_SIZE, NUM_CLASSES, s=s, m=m, h=h).eval()
    head.batch_mean.fill_(10.0)
    head.batch_std.fill_(3.0)
    embeddings, labels = _random_inputs(4, batch=8)
    # norms spanning both clip limits of the scaler and of the norm itself (0.001 and 100)
    target_norms = torch.tensor([1e-4, 0.5, 4.0, 9.0, 10.0, 12.0, 30.0, 500.0])
    embeddings = embeddings / embeddings.norm(dim=1, keepdim=True) * target_norms[:, None]
    expected = _reference_adaface(
        embeddings.double().numpy(),
        head.weight.detach().double().numpy(),
        labels.numpy(),
        s,
        m,
        h,
        mean=10.0,
        std=3.0,
    )
    out = head(embeddings, labels)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=5e-4)
    _assert_margin_only_on_target(head, embeddings, labels)
    assert head.batch_mean.item() == 10.0 and head.batch_std.item() == 3.0


def test_adaface_running_statistics_update_only_in_training() -> None:
    torch.manual_seed(0)
    t_alpha = 0.25
    head = AdaFace(EMBEDDING_SIZE, NUM_CLASSES, t_alpha=t_alpha)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0
    embeddings, labels = _random_inputs(5, batch=6)
    embeddings[0] *= 100.0  # norm above the 100 clip
    norms = np.clip(np.linalg.norm(embeddings.double().numpy(), axis=1), 0.001, 100.0)

    head.eval()
    head(embeddings, labels)
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0

    head.train()
    out = head(embeddings, labels)
    expected_mean = (1 - t_alpha) * 20.0 + t_alpha * norms.mean()
    expected_std = (1 - t_alpha) * 100.0 + t_alpha * norms.std(ddof=1)
    assert head.batch_mean.item() == pytest.approx(expected_mean, rel=1e-5)
    assert head.batch_std.item() == pytest.approx(expected_std, rel=1e-5)
    # the logits of that call already use the updated statistics (as in the reference implementation)
    expected = _reference_adaface(
        embeddings.double().numpy(),
        head.weight.detach().double().numpy(),
        labels.numpy(),
        head.s,
        head.m,
        head.h,
        mean=expected_mean,
        std=expected_std,
    )
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=5e-4)

    # a single-sample batch has no std: only the mean moves
    head(embeddings[:1], labels[:1])
    assert head.batch_mean.item() == pytest.approx((1 - t_alpha) * expected_mean + t_alpha * 100.0, rel=1e-5)
    assert head.batch_std.item() == pytest.approx(expected_std, rel=1e-5)


def test_softmax_head_is_a_linear_layer_with_bias() -> None:
    torch.manual_seed(0)
    head = SoftmaxHead(EMBEDDING_SIZE, NUM_CLASSES)
    embeddings, labels = _random_inputs(6)
    expected = embeddings.double().numpy() @ head.weight.detach().double().numpy().T
    expected += head.bias.detach().double().numpy()
    np.testing.assert_allclose(head(embeddings, labels).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.logits(embeddings), head(embeddings, labels), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["cosface", "arcface", "adaface", "softmax"])
def test_logits_are_fp32_under_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    head = create_head(name, EMBEDDING_SIZE, NUM_CLASSES).eval()
    embeddings, labels = _random_inputs(7)
    embeddings_bf16 = embeddings.bfloat16()
    reference_margin = head(embeddings_bf16.float(), labels)
    reference_plain = head.logits(embeddings_bf16.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # an upstream autocast layer hands over a bf16 tensor
        upstream = torch.nn.functional.linear(embeddings, torch.eye(EMBEDDING_SIZE))
        assert upstream.dtype == torch.bfloat16
        with_margin = head(upstream, labels)
        plain = head.logits(upstream)
    assert with_margin.dtype == torch.float32 and plain.dtype == torch.float32
    torch.testing.assert_close(with_margin, reference_margin, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(plain, reference_plain, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["cosface", "arcface", "adaface", "softmax"])
@pytest.mark.parametrize("bad_label", [NUM_CLASSES, NUM_CLASSES + 12, -1])
def test_out_of_range_label_raises(name: str, bad_label: int) -> None:
    head = create_head(name, EMBEDDING_SIZE, NUM_CLASSES)
    embeddings, _ = _random_inputs(8, batch=3)
    labels = torch.tensor([0, bad_label, 1])
    with pytest.raises(ValueError, match=rf"label {bad_label} is out of range \[0, {NUM_CLASSES}\)"):
        head(embeddings, labels)


def test_label_and_embedding_shape_errors() -> None:
    head = CosFace(EMBEDDING_SIZE, NUM_CLASSES)
    embeddings, labels = _random_inputs(9, batch=3)
    with pytest.raises(ValueError, match="integer tensor"):
        head(embeddings, labels.float())
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        head(embeddings, labels[:, None])
    with pytest.raises(ValueError, match=rf"embeddings must have shape \(B, {EMBEDDING_SIZE}\)"):
        head(embeddings[:, :4], labels)


def test_check_labels_flag_skips_the_range_check() -> None:
    head = CosFace(EMBEDDING_SIZE, NUM_CLASSES, check_labels=False)
    embeddings, _ = _random_inputs(10, batch=2)
    # without our check the error (if any) comes from torch itself, not our ValueError message
    with pytest.raises(RuntimeError):
        head(embeddings, torch.tensor([0, NUM_CLASSES]))


def test_create_head_factory() -> None:
    assert list_heads() == ["cosface", "arcface", "adaface", "softmax"]
    head = create_head("ArcFace", 16, 10, s=32.0, m=0.3)
    assert isinstance(head, ArcFace) and head.weight.shape == (10, 16)
    assert (head.s, head.m) == (32.0, 0.3)
    assert isinstance(create_head("softmax", 16, 10), SoftmaxHead)
    with pytest.raises(ValueError, match=r"unknown head 'sphereface'.*cosface, arcface, adaface, softmax"):
        create_head("sphereface", 16, 10)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        CosFace(16, 0)
    with pytest.raises(ValueError, match="scale s must be > 0"):
        ArcFace(16, 10, s=0.0)


def test_heads_train_a_toy_problem() -> None:
    """A few SGD steps of CE on separable 2-class data make every margin head classify it correctly."""
    generator = torch.Generator().manual_seed(11)
    centres = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    labels = torch.randint(0, 2, (64,), generator=generator)
    embeddings = centres[labels] + 0.3 * torch.randn(64, 4, generator=generator)
    for name in list_heads():
        torch.manual_seed(0)
        head = create_head(name, 4, 2)
        optimiser = torch.optim.SGD(head.parameters(), lr=0.05)
        for _ in range(60):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(head(embeddings, labels), labels).backward()
            optimiser.step()
        accuracy = (head.logits(embeddings).argmax(1) == labels).float().mean().item()
        assert accuracy == 1.0, name

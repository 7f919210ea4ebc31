"""Tests of fskd.evaluation.verification against straightforward re-implementations of both references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from fskd.evaluation.verification import (
    _FastFskdScores,
    _fskd_fold_accuracies,
    _fskd_training_means,
    evaluate_pairs,
    fskd_best_threshold,
    fskd_thresholds,
    fuse_flip,
    insightface_best_threshold,
    insightface_thresholds,
    pair_scores,
    roc_points,
    verification_accuracy,
)

# ----------------------------------------------------------------------------------------------------
# Straightforward references (explicit loops, written from the protocol descriptions)
# ----------------------------------------------------------------------------------------------------

REFERENCE_FSKD_GRID = np.arange(-10000, 10000 + 1) * 1.0 / 10000  # eval_lfw.getThreshold, thrNum = 10000


def reference_fskd_accuracy(scores, flags, threshold):
    positive = np.sum(scores[flags == 1] > threshold)
    negative = np.sum(scores[flags == -1] < threshold)
    return 1.0 * (positive + negative) / len(scores)


def reference_fskd_threshold_loop(scores, flags):
    """Python loop over all 20001 thresholds (slow: used on few cases)."""
    accuracies = np.zeros((REFERENCE_FSKD_GRID.size, 1))
    for index in range(REFERENCE_FSKD_GRID.size):
        accuracies[index] = reference_fskd_accuracy(scores, flags, REFERENCE_FSKD_GRID[index])
    best = np.squeeze(accuracies == np.max(accuracies))
    return np.mean(REFERENCE_FSKD_GRID[best])


def reference_fskd_threshold_matrix(scores, flags):
    """Same definition with a (scores x thresholds) comparison matrix instead of the Python loop."""
    above = scores[flags == 1][:, None] > REFERENCE_FSKD_GRID[None, :]
    below = scores[flags == -1][:, None] < REFERENCE_FSKD_GRID[None, :]
    accuracies = 1.0 * (above.sum(0) + below.sum(0)) / len(scores)
    return np.mean(REFERENCE_FSKD_GRID[accuracies == np.max(accuracies)])


def reference_fskd(left, right, issame, folds=10, loop=False, per_fold=False):
    pairs = len(issame)
    fold = np.arange(pairs) // (pairs // folds)
    flags = np.where(np.asarray(issame), 1, -1)
    accuracies = np.zeros(folds)
    for k in range(folds):
        train = fold != k
        test = fold == k
        mu = np.expand_dims(np.mean(np.concatenate((left[train], right[train]), 0), 0), 0)
        centred_left = left - mu
        centred_right = right - mu
        centred_left = centred_left / np.expand_dims(np.sqrt(np.sum(np.power(centred_left, 2), 1)), 1)
        centred_right = centred_right / np.expand_dims(np.sqrt(np.sum(np.power(centred_right, 2), 1)), 1)
        scores = np.sum(np.multiply(centred_left, centred_right), 1)
        choose = reference_fskd_threshold_loop if loop else reference_fskd_threshold_matrix
        threshold = choose(scores[train], flags[train])
        accuracies[k] = reference_fskd_accuracy(scores[test], flags[test], threshold)
    if per_fold:
        return accuracies
    return np.mean(accuracies), np.std(accuracies)


def reference_insightface_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_positive = np.sum(np.logical_and(predict_issame, actual_issame))
    true_negative = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    return float(true_positive + true_negative) / dist.size


def reference_insightface_threshold(dist, actual_issame):
    thresholds = np.arange(0, 4, 0.01)
    train_accuracies = np.zeros(len(thresholds))
    for index, threshold in enumerate(thresholds):
        train_accuracies[index] = reference_insightface_accuracy(threshold, dist, actual_issame)
    return thresholds[np.argmax(train_accuracies)]


def reference_insightface(left, right, issame, folds=10):
    embeddings1 = normalize(left)
    embeddings2 = normalize(right)
    actual_issame = np.asarray(issame, dtype=bool)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    accuracies = np.zeros(folds)
    for k, (train_set, test_set) in enumerate(
        KFold(n_splits=folds, shuffle=False).split(np.arange(len(dist)))
    ):
        threshold = reference_insightface_threshold(dist[train_set], actual_issame[train_set])
        accuracies[k] = reference_insightface_accuracy(threshold, dist[test_set], actual_issame[test_set])
    return np.mean(accuracies), np.std(accuracies)


def clustered_pairs(seed: int, pairs: int, dim: int = 16, noise: float = 1.0):
    """Pairs whose 'same' partner is a noisy copy of the left feature: accuracy above chance, below 1."""
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    base = rng.normal(size=(pairs, dim)) + 0.5  # non-zero mean, so the fskd centring has an effect
    left = base + noise * rng.normal(size=(pairs, dim))
    other = rng.normal(size=(pairs, dim)) + 0.5
    right = np.where(issame[:, None], base, other) + noise * rng.normal(size=(pairs, dim))
    return left, right, issame


def separable_pairs(seed: int, pairs: int):
    """Alternating same/different pairs: same = left + tiny noise, different = -left."""
    rng = np.random.default_rng(seed)
    left = rng.normal(size=(pairs, 32))
    issame = np.arange(pairs) % 2 == 0
    right = np.where(issame[:, None], left + 0.01 * rng.normal(size=left.shape), -left)
    return left, right, issame


# ----------------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------------


def test_threshold_grids_are_built_like_the_references():
    fskd_grid = fskd_thresholds()
    assert fskd_grid.shape == (20001,) and fskd_grid[0] == -1.0 and fskd_grid[-1] == 1.0
    assert np.array_equal(fskd_grid, REFERENCE_FSKD_GRID)
    # the accumulated arange differs in the last bits; the protocol uses k / 10000
    assert not np.array_equal(fskd_grid, np.arange(-1, 1 + 1e-9, 1e-4))
    assert np.array_equal(insightface_thresholds(), np.arange(0, 4, 0.01))
    assert insightface_thresholds().shape == (400,)


# ----------------------------------------------------------------------------------------------------
# Full protocols against the references
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("pairs", [60, 600])
def test_fskd_protocol_equals_reference(seed, pairs):
    left, right, issame = clustered_pairs(seed, pairs)
    result = verification_accuracy(left, right, issame, protocol="fskd")
    expected = reference_fskd(left, right, issame)
    assert result == expected
    assert 0.6 < result[0] < 1.0 and result[1] > 0.0  # non-trivial case


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("pairs", [60, 600])
def test_insightface_protocol_equals_reference(seed, pairs):
    left, right, issame = clustered_pairs(seed, pairs)
    result = verification_accuracy(left, right, issame, protocol="insightface")
    expected = reference_insightface(left, right, issame)
    assert result == expected
    assert 0.6 < result[0] < 1.0 and result[1] > 0.0


def test_fskd_protocol_equals_reference_on_large_strided_features():
    # The real evaluation shape class: 1,024-d (512-d + flip, concatenated) and strided views fused[0::2].
    # The per-fold training means (one pass, running sums carried across blocks of rows) must be bit-identical
    # to the reference's copies, and the accuracies (certified fast scores) equal to the reference's.
    pairs = 1200
    left, right, issame = clustered_pairs(seed=12, pairs=pairs, dim=1024, noise=4.0)
    fused = np.empty((2 * pairs, 1024))
    fused[0::2], fused[1::2] = left, right
    left, right = fused[0::2], fused[1::2]
    assert not left.flags.c_contiguous and not right.flags.c_contiguous

    accuracies = _fskd_fold_accuracies(left, right, issame, 10)
    expected = reference_fskd(left, right, issame, per_fold=True)
    assert np.array_equal(accuracies, expected)
    result = verification_accuracy(left, right, issame, protocol="fskd")
    assert result == (np.mean(expected), np.std(expected))
    assert 0.6 < result[0] < 0.95 and result[1] > 0.0  # non-trivial thresholds in every fold

    both = np.concatenate((left, right), 0)
    fold = np.arange(pairs) // (pairs // 10)
    means = _fskd_training_means(both, np.concatenate((fold, fold)), 10)
    for k in range(10):
        train = fold != k
        reference_mean = np.mean(np.concatenate((left[train], right[train]), 0), 0)
        assert np.array_equal(means[k], reference_mean)


def test_fast_fskd_scores_are_within_their_bound_of_the_reference_scores():
    left, right, _ = clustered_pairs(seed=14, pairs=600, dim=1024, noise=4.0)
    fold = np.arange(600) // 60
    both = np.concatenate((left, right), 0)
    means = _fskd_training_means(both, np.concatenate((fold, fold)), 10)
    fast = _FastFskdScores(left, right, means)
    for k in range(10):
        scores, bound = fast.fold(k)
        centred_left, centred_right = left - means[k], right - means[k]
        exact = np.sum((centred_left / np.sqrt(np.sum(centred_left ** 2, 1))[:, None])
                       * (centred_right / np.sqrt(np.sum(centred_right ** 2, 1))[:, None]), 1)
        assert np.all(np.abs(scores - exact) <= bound)
        assert np.all(bound < 1e-10)  # well-conditioned features: the bound leaves almost nothing in doubt


@pytest.mark.parametrize("offset", [1e3, 1e6])
def test_fskd_protocol_equals_reference_when_features_share_a_large_offset(offset):
    # Features = a large common vector + small differences: the dot-product scores lose most of their digits
    # (l.l - 2 l.m + m.m cancels), so the bound puts many pairs in doubt and they are scored again exactly.
    left, right, issame = clustered_pairs(seed=15, pairs=600, dim=256, noise=4.0)
    common = np.random.default_rng(15).normal(size=256) * offset
    left, right = left + common, right + common
    assert verification_accuracy(left, right, issame, "fskd") == reference_fskd(left, right, issame)


@pytest.mark.parametrize("pair", [0, 3, 599])
def test_fskd_feature_equal_to_training_fold_mean_raises(pair):
    # A test-fold feature equal to the mean of the other nine folds has no direction after centring (0 / 0).
    left, right, issame = clustered_pairs(seed=13, pairs=600)
    fold = np.arange(600) // 60
    train = fold != fold[pair]
    mean = np.mean(np.concatenate((left[train], right[train]), 0), 0)
    (left if pair % 2 == 0 else right)[pair] = mean
    with np.errstate(invalid="ignore"), pytest.raises(ValueError, match="equals the training-fold mean"):
        verification_accuracy(left, right, issame, protocol="fskd")
    # the same features are fine for insightface, which subtracts no mean
    assert 0.5 < verification_accuracy(left, right, issame, protocol="insightface")[0] < 1.0


def test_fskd_protocol_equals_reference_with_explicit_threshold_loop():
    left, right, issame = clustered_pairs(seed=7, pairs=60)
    assert verification_accuracy(left, right, issame, "fskd") == reference_fskd(
        left, right, issame, loop=True
    )


def test_other_fold_counts_equal_reference():
    left, right, issame = clustered_pairs(seed=11, pairs=45)
    assert verification_accuracy(left, right, issame, "fskd", folds=5) == reference_fskd(
        left, right, issame, folds=5
    )
    assert verification_accuracy(left, right, issame, "insightface", folds=5) == reference_insightface(
        left, right, issame, folds=5
    )


def test_folds_are_contiguous_blocks():
    # Fold 0 (pairs 0..5) has inverted labels: it is the only fold scored badly, which pins the fold layout.
    left, right, issame = separable_pairs(seed=3, pairs=60)
    labels = issame.copy()
    labels[:6] = ~labels[:6]
    for protocol, reference in (("fskd", reference_fskd), ("insightface", reference_insightface)):
        mean, std = verification_accuracy(left, right, labels, protocol)
        assert (mean, std) == reference(left, right, labels)
        assert mean == pytest.approx(0.9)  # nine perfect folds, one fold fully wrong
        assert std == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------------
# Ties and strict inequalities
# ----------------------------------------------------------------------------------------------------


def test_fskd_threshold_sweep_matches_loop_with_scores_on_grid_points():
    rng = np.random.default_rng(5)
    grid = fskd_thresholds()
    for _ in range(3):
        scores = grid[rng.integers(9000, 11001, size=40)]  # scores exactly equal to grid thresholds
        issame = rng.random(40) < 0.5
        flags = np.where(issame, 1, -1)
        assert fskd_best_threshold(scores, issame) == reference_fskd_threshold_loop(scores, flags)


def test_fskd_score_equal_to_threshold_counts_as_neither_class():
    grid = fskd_thresholds()
    # same pairs at 0.0, different pairs at -1.0: best thresholds are exactly k = -9999 .. -1 (t = 0 would
    # misclassify the same pairs because 0 > 0 is false, t = -1 the different ones because -1 < -1 is false)
    scores = np.array([0.0, 0.0, -1.0, -1.0])
    issame = np.array([True, True, False, False])
    assert fskd_best_threshold(scores, issame) == np.mean(grid[1:10000])
    # a >= rule would also accept t = 0.0 and give a different mean
    assert np.mean(grid[1:10001]) != np.mean(grid[1:10000])


def test_fskd_test_fold_score_equal_to_chosen_threshold_is_wrong():
    # Every fold holds a pair and its negation, so training means are exactly zero. Folds 2-5 are same pairs
    # scoring ~ +5e-5, folds 6-9 different pairs scoring ~ -5e-5, so the only best grid threshold is 0.0.
    # Fold 0 (same) and fold 1 (different) score exactly 0.0: neither 0 > 0 nor 0 < 0 holds, both folds get 0.
    left = np.zeros((20, 3))
    right = np.zeros((20, 3))
    issame = np.zeros(20, dtype=bool)
    for fold in range(10):
        tilt = 0.0 if fold < 2 else (5e-5 if fold < 6 else -5e-5)
        for member, sign in enumerate((1.0, -1.0)):
            left[2 * fold + member] = sign * np.array([1.0, 0.0, 0.0])
            right[2 * fold + member] = sign * np.array([tilt, 1.0, 0.0])
            issame[2 * fold + member] = fold == 0 or 2 <= fold < 6
    result = verification_accuracy(left, right, issame, "fskd")
    assert result == (0.8, 0.4)
    assert result == reference_fskd(left, right, issame)


def test_insightface_threshold_sweep_ties_and_first_argmax():
    grid = insightface_thresholds()
    rng = np.random.default_rng(6)
    for _ in range(3):
        distances = grid[rng.integers(0, 400, size=50)]  # distances exactly on grid points
        issame = rng.random(50) < 0.5
        assert insightface_best_threshold(distances, issame) == reference_insightface_threshold(
            distances, issame
        )
    # same at 1.0, different at 2.0: thresholds 1.01 .. 2.0 are all perfect (dist < t same, dist >= t
    # different, so 2.0 itself is perfect too); the first one wins
    distances = np.array([1.0, 1.0, 2.0, 2.0])
    issame = np.array([True, True, False, False])
    assert insightface_best_threshold(distances, issame) == grid[101]


def test_protocols_equal_reference_on_features_with_exact_ties():
    # Integer features whose training means are exactly zero and whose scores are exactly -1, 0 or 1
    # (fskd grid points) and whose squared distances are exactly 0, 2 or 4 (insightface grid points).
    rng = np.random.default_rng(9)
    directions = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=float)
    left = np.empty((20, 2))
    right = np.empty((20, 2))
    for pair in range(0, 20, 2):
        left[pair] = directions[rng.integers(4)]
        right[pair] = directions[rng.integers(4)]
        left[pair + 1], right[pair + 1] = -left[pair], -right[pair]  # every fold is (x, -x): mean exactly 0
    issame = rng.random(20) < 0.5
    scores = np.sum(left * right, 1)
    assert set(scores) <= {-1.0, 0.0, 1.0} and 0.0 in scores
    assert verification_accuracy(left, right, issame, "fskd") == reference_fskd(
        left, right, issame, loop=True
    )
    assert verification_accuracy(left, right, issame, "insightface") == reference_insightface(
        left, right, issame
    )


# ----------------------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["fskd", "insightface"])
def test_perfectly_separable_features_score_one(protocol):
    left, right, issame = separable_pairs(seed=0, pairs=100)
    assert verification_accuracy(left, right, issame, protocol) == (1.0, 0.0)


def test_constant_offset_leaves_fskd_unchanged_but_changes_insightface():
    # The fskd protocol subtracts the training-fold mean, so adding the same vector to every feature cancels
    # (up to rounding far below the threshold grid); insightface normalises the raw features, and a large
    # common offset squeezes all distances together.
    left, right, issame = clustered_pairs(seed=4, pairs=600, noise=0.7)
    offset = np.full(left.shape[1], 20.0)
    fskd_plain = verification_accuracy(left, right, issame, "fskd")
    fskd_shifted = verification_accuracy(left + offset, right + offset, issame, "fskd")
    assert fskd_shifted[0] == fskd_plain[0]
    insightface_plain = verification_accuracy(left, right, issame, "insightface")
    insightface_shifted = verification_accuracy(left + offset, right + offset, issame, "insightface")
    assert insightface_shifted[0] < insightface_plain[0] - 0.1
    assert fskd_shifted[0] > insightface_shifted[0] + 0.1


def test_torch_and_float32_inputs():
    left, right, issame = clustered_pairs(seed=2, pairs=60)
    expected = verification_accuracy(left, right, issame, "fskd")
    assert verification_accuracy(torch.from_numpy(left), torch.from_numpy(right), issame, "fskd") == expected
    as_float32 = verification_accuracy(
        left.astype(np.float32), right.astype(np.float32), issame, "insightface"
    )
    upcast = verification_accuracy(
        left.astype(np.float32).astype(np.float64),
        right.astype(np.float32).astype(np.float64),
        issame,
        "insightface",
    )
    assert as_float32 == upcast
    assert verification_accuracy(left, right, torch.tensor(issame), "insightface") == verification_accuracy(
        left, right, issame.astype(int).tolist(), "insightface"
    )


def test_verification_accuracy_errors():
    left, right, issame = clustered_pairs(seed=0, pairs=60)
    with pytest.raises(
        ValueError, match=r"number of pairs \(55\) must be a positive multiple of folds \(10\)"
    ):
        verification_accuracy(left[:55], right[:55], issame[:55])
    with pytest.raises(ValueError, match="unknown verification protocol 'lfw'"):
        verification_accuracy(left, right, issame, protocol="lfw")
    with pytest.raises(ValueError, match="same shape"):
        verification_accuracy(left, right[:, :3], issame)
    with pytest.raises(ValueError, match="issame has 59 labels but there are 60 pairs"):
        verification_accuracy(left, right, issame[:59])
    with pytest.raises(ValueError, match="booleans"):
        verification_accuracy(left, right, np.full(60, 2))
    bad = left.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="left contains NaN"):
        verification_accuracy(bad, right, issame)


def test_fuse_flip_modes():
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    flipped = 10 * features + 1
    concatenated = fuse_flip(features, flipped, "concat")
    assert concatenated.dtype == np.float64
    assert np.array_equal(concatenated, [[0, 1, 2, 1, 11, 21], [3, 4, 5, 31, 41, 51]])
    assert np.array_equal(fuse_flip(features, flipped, "sum"), [[1, 12, 23], [34, 45, 56]])
    from_torch = fuse_flip(torch.from_numpy(features).bfloat16(), torch.from_numpy(flipped), "sum")
    assert np.array_equal(from_torch, [[1, 12, 23], [34, 45, 56]])
    with pytest.raises(ValueError, match="unknown flip fusion mode 'mean'"):
        fuse_flip(features, flipped, "mean")
    with pytest.raises(ValueError, match="same shape"):
        fuse_flip(features, flipped[:1], "sum")


def test_evaluate_pairs_fuses_per_protocol_and_pairs_consecutive_images():
    rng = np.random.default_rng(8)
    pairs = 60
    left, right, issame = clustered_pairs(seed=8, pairs=pairs)
    flipped_left = left + 0.3 * rng.normal(size=left.shape)
    flipped_right = right + 0.3 * rng.normal(size=right.shape)
    embeddings = np.empty((2 * pairs, left.shape[1]))
    flipped = np.empty_like(embeddings)
    embeddings[0::2], embeddings[1::2] = left, right
    flipped[0::2], flipped[1::2] = flipped_left, flipped_right

    results = evaluate_pairs(embeddings, flipped, issame)
    assert set(results) == {"fskd", "insightface"}
    assert results["fskd"] == reference_fskd(
        np.concatenate((left, flipped_left), 1), np.concatenate((right, flipped_right), 1), issame
    )
    assert results["insightface"] == reference_insightface(left + flipped_left, right + flipped_right, issame)
    assert evaluate_pairs(embeddings, flipped, issame, protocols=("insightface",)) == {
        "insightface": results["insightface"]
    }
    with pytest.raises(ValueError, match=r"shape \(2 \* 60, E\)"):
        evaluate_pairs(embeddings[:-1], flipped[:-1], issame)
    with pytest.raises(ValueError, match="unknown verification protocol"):
        evaluate_pairs(embeddings, flipped, issame, protocols=("fskd", "cosine"))


def test_roc_points_equal_sklearn():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=200), 1)  # many tied scores
    issame = rng.random(200) < 0.4
    fpr, tpr, thresholds = roc_points(scores, issame)
    expected_fpr, expected_tpr, expected_thresholds = roc_curve(issame, scores, drop_intermediate=False)
    assert np.array_equal(fpr, expected_fpr)
    assert np.array_equal(tpr, expected_tpr)
    assert np.array_equal(thresholds, expected_thresholds)
    with pytest.raises(ValueError, match="at least one same and one different"):
        roc_points(scores, np.ones(200, dtype=bool))


def test_pair_scores():
    left, right, _ = clustered_pairs(seed=0, pairs=30)
    unit_left = left / np.linalg.norm(left, axis=1, keepdims=True)
    unit_right = right / np.linalg.norm(right, axis=1, keepdims=True)
    np.testing.assert_allclose(pair_scores(left, right, "insightface"), np.sum(unit_left * unit_right, 1))
    mean = np.concatenate((left, right)).mean(0)
    centred_left = (left - mean) / np.linalg.norm(left - mean, axis=1, keepdims=True)
    centred_right = (right - mean) / np.linalg.norm(right - mean, axis=1, keepdims=True)
    np.testing.assert_allclose(pair_scores(left, right, "fskd"), np.sum(centred_left * centred_right, 1))
    assert not np.allclose(pair_scores(left, right, "fskd"), pair_scores(left, right, "insightface"))

"""10-fold face-verification accuracy on image pairs (LFW / AgeDB-30 / CFP-FP style).

Two protocols are implemented, both exactly as the reference code computes them (see
``docs/fskd-method.md`` sections 5.1 and 8 and ``docs/formats.md`` section 3.6):

* ``"fskd"`` - the F-SKD authors' ``evaluation/eval_lfw.py`` (SphereFace / Face_Pytorch style): flip fusion
  by concatenation; per test fold the mean feature of the nine training folds is subtracted, features are
  L2-normalised and the score is their dot product; the threshold is the mean of all grid thresholds that
  maximise the training-fold accuracy on a 20001-point grid over [-1, 1]. The paper's numbers use this one.
* ``"insightface"`` - ``arcface_torch/eval/verification.py``: flip fusion by summation; L2-normalised
  features, squared Euclidean distance, thresholds ``np.arange(0, 4, 0.01)``, first argmax on the training
  folds.

Folds are contiguous blocks of ``P / folds`` pairs (pair ``i`` belongs to fold ``i // (P / folds)``), as in
both references. All arithmetic is done in float64. The threshold sweeps are vectorised (sorted scores +
``np.searchsorted``) and give bit-identical results to the references' loops over every threshold, because
they only count integers and then apply the same floating-point operations to the same values.

The ``"fskd"`` protocol gives the reference's accuracies without the reference's cost (ten copies of the
training folds and ten full passes over every feature): the training means of all folds come from one
pass that adds the same rows in the same order as the reference (bit-identical, `_fskd_training_means`), the
scores of all folds from dot products computed once, each with an error bound, and every pair whose side of a
threshold that bound leaves in doubt is scored again with the reference's own operations
(`_FastFskdScores`). Only the side of the thresholds enters the accuracy, so it equals the reference's to the
last bit; on 6,000 pairs of 1,024-d features next to no pair needs the second scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PROTOCOLS: tuple[str, ...] = ("fskd", "insightface")
"""Names of the supported verification protocols."""

FUSION_BY_PROTOCOL: dict[str, str] = {"fskd": "concat", "insightface": "sum"}
"""How each protocol fuses the embedding of an image with the embedding of its horizontal flip."""

FSKD_THRESHOLD_STEPS = 10000
"""The F-SKD grid is ``k / FSKD_THRESHOLD_STEPS`` for ``|k| <= FSKD_THRESHOLD_STEPS``."""

FSKD_BLOCK_ROWS = 200
"""Feature rows per block when the ``"fskd"`` protocol sums the training folds (a block stays in cache)."""


def fskd_thresholds() -> np.ndarray:
    """The F-SKD threshold grid: ``np.arange(-10000, 10001) / 10000`` (20001 float64 values from -1 to 1).

    Built exactly like ``eval_lfw.getThreshold`` (``np.arange(-thrNum, thrNum + 1) * 1.0 / thrNum``), so every
    value is the correctly rounded ``k / 10000``; note this differs by a few ulps from
    ``np.arange(-1, 1 + eps, 1e-4)``, which accumulates rounding error.
    """
    return np.arange(-FSKD_THRESHOLD_STEPS, FSKD_THRESHOLD_STEPS + 1) / FSKD_THRESHOLD_STEPS


def insightface_thresholds() -> np.ndarray:
    """The insightface grid on squared L2 distance: ``np.arange(0, 4, 0.01)`` (400 float64 values)."""
    return np.arange(0, 4, 0.01)


def _as_float64(array: Any, name: str) -> np.ndarray:
    """Convert a numpy array or torch tensor (any device / float dtype) to a float64 numpy array."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu()
        if not array.dtype.is_floating_point or array.dtype.itemsize < 4:  # bf16/fp16 have no numpy twin
            array = array.float()
        array = array.numpy()
    result = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(result)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return result


def as_issame(issame: Any, num_pairs: int | None = None) -> np.ndarray:
    """Convert labels (bools or 0/1 values, list / numpy / torch) to a 1-D numpy bool array."""
    if hasattr(issame, "detach"):
        issame = issame.detach().cpu().numpy()
    labels = np.asarray(issame)
    if labels.ndim != 1:
        raise ValueError(f"issame must be 1-D, got shape {labels.shape}")
    if labels.dtype != np.bool_:
        if labels.size and not np.all((labels == 0) | (labels == 1)):
            raise ValueError("issame must contain booleans (or 0/1 values)")
        labels = labels.astype(bool)
    if num_pairs is not None and labels.size != num_pairs:
        raise ValueError(f"issame has {labels.size} labels but there are {num_pairs} pairs")
    return labels


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown verification protocol {protocol!r}; expected one of {PROTOCOLS}")


def fold_size(num_pairs: int, folds: int) -> int:
    """Pairs per fold; the folds must split the pairs into equal contiguous blocks."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if num_pairs == 0 or num_pairs % folds != 0:
        raise ValueError(f"the number of pairs ({num_pairs}) must be a positive multiple of folds ({folds})")
    return num_pairs // folds


def _check_pair_features(left: np.ndarray, right: np.ndarray) -> None:
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError(
            "left and right features must be 2-D arrays of the same shape, "
            f"got {left.shape} and {right.shape}"
        )


def fuse_flip(features: Any, flipped: Any, mode: str) -> np.ndarray:
    """Fuse per-image embeddings with the embeddings of the flipped images.

    ``"concat"`` (F-SKD authors): ``[f, f_flip]`` along dim 1, shape ``(N, 2E)``; ``"sum"`` (insightface):
    ``f + f_flip``, shape ``(N, E)``. Returns float64.
    """
    if mode not in ("concat", "sum"):
        raise ValueError(f"unknown flip fusion mode {mode!r}; expected 'concat' or 'sum'")
    original = _as_float64(features, "features")
    mirrored = _as_float64(flipped, "flipped")
    if original.ndim != 2 or original.shape != mirrored.shape:
        raise ValueError(
            "features and flipped must be 2-D arrays of the same shape, "
            f"got {original.shape} and {mirrored.shape}"
        )
    if mode == "concat":
        return np.concatenate((original, mirrored), axis=1)
    return original + mirrored


def _row_normalise(features: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm, as ``eval_lfw`` does (``x / sqrt(sum(x ** 2, 1))``)."""
    return features / np.expand_dims(np.sqrt(np.sum(np.power(features, 2), 1)), 1)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """L2-normalise rows like ``sklearn.preprocessing.normalize`` (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))
    norms[norms == 0.0] = 1.0
    return features / norms[:, np.newaxis]


def _fskd_centred_cosines(left: np.ndarray, right: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Cosine scores after subtracting ``mean`` from every feature (``eval_lfw.evaluation_10_fold``), unchecked."""
    centred_left = _row_normalise(left - mean)
    centred_right = _row_normalise(right - mean)
    return np.sum(np.multiply(centred_left, centred_right), 1)


def _check_fskd_scores(scores: np.ndarray) -> np.ndarray:
    """Raise if a score is NaN / infinite (a feature equal to the subtracted mean has no direction)."""
    if not np.all(np.isfinite(scores)):
        raise ValueError("a feature equals the training-fold mean, so its cosine score is undefined")
    return scores


def _fskd_scores(left: np.ndarray, right: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Cosine scores after subtracting ``mean`` from every feature (``eval_lfw.evaluation_10_fold``)."""
    return _check_fskd_scores(_fskd_centred_cosines(left, right, mean))


def fskd_best_threshold(scores: Any, issame: Any, thresholds: np.ndarray | None = None) -> float:
    """F-SKD threshold choice: the mean of ALL thresholds maximising
    ``#same with score > t + #different with score < t`` (a score equal to ``t`` counts as wrong).

    ``thresholds`` defaults to :func:`fskd_thresholds`. Vectorised with sorted scores and ``np.searchsorted``;
    equal to looping over the thresholds like ``eval_lfw.getThreshold``.
    """
    values = _as_float64(scores, "scores")
    labels = as_issame(issame, values.size)
    grid = fskd_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    same_sorted = np.sort(values[labels])
    different_sorted = np.sort(values[~labels])
    same_above = same_sorted.size - np.searchsorted(same_sorted, grid, side="right")
    different_below = np.searchsorted(different_sorted, grid, side="left")
    correct = same_above + different_below
    return float(np.mean(grid[correct == correct.max()]))


def _fskd_accuracy(scores: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    correct = np.sum(scores[issame] > threshold) + np.sum(scores[~issame] < threshold)
    return float(correct / scores.size)


def _fskd_training_means(both: np.ndarray, fold_of_row: np.ndarray, folds: int) -> np.ndarray:
    """The mean of the training rows of every fold, ``(folds, D)``, in one pass over ``both`` (the stacked
    left and right features, C-contiguous ``(2P, D)``); row ``f`` is bit-identical to the reference's
    ``np.mean(np.concatenate((left[train], right[train]), 0), 0)`` for test fold ``f``.

    Exact because numpy reduces axis 0 of a C-contiguous array row by row, in order (``out += row``;
    pairwise summation is used only along the contiguous axis), and ``np.mean`` is that reduce divided by the
    row count. Here each fold's running sum is carried from block to block: it is put in front of the next
    block of rows that fold trains on, and the reduce continues the same sequence of additions. Starting from
    ``0.0`` leaves the first row unchanged (only a ``-0.0`` becomes ``+0.0``, which no later subtraction, norm
    or comparison can tell apart). Blocks of `FSKD_BLOCK_ROWS` rows are read from cache, not memory, by
    the nine folds that use them.
    """
    sums = np.zeros((folds, both.shape[1]))
    buffer = np.empty((FSKD_BLOCK_ROWS + 1, both.shape[1]))
    boundaries = np.flatnonzero(np.diff(fold_of_row)) + 1
    for segment in np.split(np.arange(both.shape[0]), boundaries):  # rows of one fold, in order
        fold = fold_of_row[segment[0]]
        for start in range(segment[0], segment[-1] + 1, FSKD_BLOCK_ROWS):
            stop = min(start + FSKD_BLOCK_ROWS, segment[-1] + 1)
            block = buffer[:stop - start + 1]
            block[1:] = both[start:stop]
            for other in range(folds):
                if other != fold:
                    block[0] = sums[other]
                    np.add.reduce(block, axis=0, out=sums[other])
    counts = np.array([np.count_nonzero(fold_of_row != fold) for fold in range(folds)], dtype=np.float64)
    return sums / counts[:, np.newaxis]


def _nearest_grid_distance(scores: np.ndarray) -> np.ndarray:
    """Distance of each score to the nearest threshold of the F-SKD grid (``k / FSKD_THRESHOLD_STEPS``)."""
    scaled = scores * FSKD_THRESHOLD_STEPS
    return np.abs(scaled - np.round(scaled)) / FSKD_THRESHOLD_STEPS


class _FastFskdScores:
    """Scores of every pair under each fold's mean from dot products computed once, with a bound on their
    difference from the reference's scores, so that only pairs whose side of a threshold is in doubt are
    scored again exactly (`_fskd_centred_cosines`, the reference's operations).

    With ``x = l - m`` and ``y = r - m``: ``x.y = l.r - l.m - r.m + m.m`` and ``|x|^2 = l.l - 2 l.m + m.m``; the
    dot products with the fold means are one matrix product for all folds. Each computed dot product ``u.v``
    of ``D`` terms is within ``gamma |u| |v|`` of the exact value (``gamma = (D + 8) u``, ``u = 2^-53``,
    whatever the summation order), which bounds the error of the numerator by ``gamma (|l| + |m|)(|r| + |m|)``
    and of each squared norm by ``gamma (|l| + |m|)^2``; the score's error follows to first order, doubled for
    safety, plus the reference's own rounding (a few ``gamma``). A pair is scored exactly when that interval
    around its score holds a grid threshold (training pairs) or the chosen threshold (test pairs), or when
    the bound is not small against its norms (a feature close to the mean).
    """

    def __init__(self, left: np.ndarray, right: np.ndarray, means: np.ndarray) -> None:
        self.left, self.right, self.means = left, right, means
        self.ll = np.einsum("ij,ij->i", left, left)
        self.rr = np.einsum("ij,ij->i", right, right)
        self.lr = np.einsum("ij,ij->i", left, right)
        self.lm = left @ means.T
        self.rm = right @ means.T
        self.mm = np.einsum("ij,ij->i", means, means)
        self.gamma = (left.shape[1] + 8) * 2.0 ** -53

    def fold(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate scores under fold ``fold``'s mean and their error bounds (``inf`` where unusable)."""
        lm, rm, mm = self.lm[:, fold], self.rm[:, fold], self.mm[fold]
        numerator = self.lr - lm - rm + mm
        left_sq = self.ll - 2.0 * lm + mm
        right_sq = self.rr - 2.0 * rm + mm
        norm_m = np.sqrt(mm)
        left_spread = self.gamma * (np.sqrt(self.ll) + norm_m) ** 2
        right_spread = self.gamma * (np.sqrt(self.rr) + norm_m) ** 2
        usable = (left_sq > 4.0 * left_spread) & (right_sq > 4.0 * right_spread)
        with np.errstate(invalid="ignore", divide="ignore"):
            denominator = np.sqrt(left_sq * right_sq)
            scores = numerator / denominator
            bound = 2.0 * (np.sqrt(left_spread * right_spread) / denominator
                           + np.abs(scores) * (left_spread / left_sq + right_spread / right_sq) / 2.0)
        bound = np.where(usable & np.isfinite(scores), bound + 8.0 * self.gamma, np.inf)
        return scores, bound

    def rescore(self, scores: np.ndarray, fold: int, rows: np.ndarray) -> None:
        """Replace ``scores[rows]`` by the reference's exact scores under fold ``fold``'s mean."""
        if rows.size:
            scores[rows] = _check_fskd_scores(
                _fskd_centred_cosines(self.left[rows], self.right[rows], self.means[fold][np.newaxis]))


def _fskd_fold_accuracies(left: np.ndarray, right: np.ndarray, issame: np.ndarray, folds: int) -> np.ndarray:
    """The authors' 10-fold accuracies, equal to the reference's loop (each fold's mean of the other folds'
    features subtracted, cosine, mean of the best grid thresholds) without scoring every pair in every fold
    the reference's way: see `_fskd_training_means` (exact means) and `_FastFskdScores` (certified scores)."""
    fold_of_pair = np.arange(issame.size) // fold_size(issame.size, folds)
    thresholds = fskd_thresholds()
    # One C-contiguous copy for the whole evaluation (left / right are often strided views like fused[0::2]).
    both = np.concatenate((left, right), 0)
    pairs = issame.size
    left, right = both[:pairs], both[pairs:]
    means = _fskd_training_means(both, np.concatenate((fold_of_pair, fold_of_pair)), folds)
    fast = _FastFskdScores(left, right, means)
    margin = 1e-14  # the rounding of the distance computations themselves
    accuracies = np.zeros(folds)
    for fold in range(folds):
        test = fold_of_pair == fold
        train = ~test
        scores, bound = fast.fold(fold)
        # "not (distance > bound)" so that a NaN score counts as in doubt
        in_doubt = ~(_nearest_grid_distance(scores) > bound + margin)
        fast.rescore(scores, fold, np.flatnonzero(train & in_doubt))
        threshold = fskd_best_threshold(scores[train], issame[train], thresholds)
        in_doubt = ~(np.abs(scores - threshold) > bound + margin)
        fast.rescore(scores, fold, np.flatnonzero(test & in_doubt))
        accuracies[fold] = _fskd_accuracy(scores[test], issame[test], threshold)
    return accuracies


def _insightface_correct_counts(
    distances: np.ndarray, issame: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Per threshold: ``#same with dist < t + #different with dist >= t``."""
    same_sorted = np.sort(distances[issame])
    different_sorted = np.sort(distances[~issame])
    same_below = np.searchsorted(same_sorted, thresholds, side="left")
    different_at_or_above = different_sorted.size - np.searchsorted(different_sorted, thresholds, side="left")
    return same_below + different_at_or_above


def insightface_best_threshold(distances: Any, issame: Any, thresholds: np.ndarray | None = None) -> float:
    """insightface threshold choice: the FIRST threshold maximising
    ``#same with dist < t + #different with dist >= t``.

    ``thresholds`` defaults to :func:`insightface_thresholds`. Vectorised; equal to the loop in
    ``verification.calculate_roc``.
    """
    values = _as_float64(distances, "distances")
    labels = as_issame(issame, values.size)
    grid = insightface_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return float(grid[int(np.argmax(_insightface_correct_counts(values, labels, grid)))])


def _insightface_fold_accuracies(
    left: np.ndarray, right: np.ndarray, issame: np.ndarray, folds: int
) -> np.ndarray:
    fold_of_pair = np.arange(issame.size) // fold_size(issame.size, folds)
    thresholds = insightface_thresholds()
    distances = np.sum(np.square(np.subtract(_unit_rows(left), _unit_rows(right))), 1)
    accuracies = np.zeros(folds)
    for fold in range(folds):
        test = fold_of_pair == fold
        train = ~test
        threshold = insightface_best_threshold(distances[train], issame[train], thresholds)
        correct = np.sum(distances[test][issame[test]] < threshold) + np.sum(
            distances[test][~issame[test]] >= threshold
        )
        accuracies[fold] = float(correct) / int(test.sum())
    return accuracies


def verification_accuracy(
    left: Any, right: Any, issame: Sequence[bool] | np.ndarray, protocol: str = "fskd", folds: int = 10
) -> tuple[float, float]:
    """Mean and population std (``np.std``) of the per-fold accuracies, as fractions in [0, 1].

    ``left[i]`` and ``right[i]`` are the already flip-fused features of pair ``i``; ``issame[i]`` says
    whether the pair shows the same person. Pair ``i`` belongs to fold ``i // (P / folds)``; ``P`` must be
    divisible by ``folds``.

    * ``"fskd"``: for each test fold subtract the mean of all left and right features of the other folds,
      L2-normalise, score = dot product; on the training folds the accuracy at threshold ``t`` is
      ``(#same with score > t + #different with score < t) / N`` (a score equal to ``t`` counts as wrong);
      the chosen threshold is the mean of all thresholds of the grid ``np.arange(-10000, 10001) / 10000``
      (see :func:`fskd_thresholds`) that reach the maximum; the test fold is scored with the same rule.
    * ``"insightface"``: L2-normalise (no mean subtraction), squared Euclidean distance, predicted same if
      ``dist < t``; threshold = first argmax over ``np.arange(0, 4, 0.01)`` on the training folds.
    """
    _check_protocol(protocol)
    left_features = _as_float64(left, "left")
    right_features = _as_float64(right, "right")
    _check_pair_features(left_features, right_features)
    labels = as_issame(issame, left_features.shape[0])
    if protocol == "fskd":
        accuracies = _fskd_fold_accuracies(left_features, right_features, labels, folds)
    else:
        accuracies = _insightface_fold_accuracies(left_features, right_features, labels, folds)
    return float(np.mean(accuracies)), float(np.std(accuracies))


def pair_scores(left: Any, right: Any, protocol: str = "insightface") -> np.ndarray:
    """Per-pair cosine similarity (higher = more likely the same person), e.g. for ROC curves.

    ``"insightface"``: plain cosine of the L2-normalised features (equals ``1 - dist / 2``).
    ``"fskd"``: cosine after subtracting the mean of ALL left and right features (the 10-fold protocol
    subtracts the training-fold mean instead, so its scores differ slightly per fold).
    """
    _check_protocol(protocol)
    left_features = _as_float64(left, "left")
    right_features = _as_float64(right, "right")
    _check_pair_features(left_features, right_features)
    if protocol == "fskd":
        mean = np.mean(np.concatenate((left_features, right_features), 0), 0)
        return _fskd_scores(left_features, right_features, np.expand_dims(mean, 0))
    return np.einsum("ij,ij->i", _unit_rows(left_features), _unit_rows(right_features))


def roc_points(scores: Any, issame: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of "same if score >= threshold" at every distinct score (like sklearn ``roc_curve`` with
    ``drop_intermediate=False``).

    Returns ``(fpr, tpr, thresholds)`` with thresholds decreasing, starting at ``+inf`` (the point (0, 0)).
    Both classes must be present.
    """
    values = _as_float64(scores, "scores")
    if values.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {values.shape}")
    labels = as_issame(issame, values.size)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("roc_points needs at least one same and one different pair")
    order = np.argsort(-values, kind="stable")
    sorted_scores = values[order]
    last_of_each_value = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
    true_positives = np.cumsum(labels[order])[last_of_each_value]
    false_positives = last_of_each_value + 1 - true_positives
    fpr = np.r_[0.0, false_positives / negatives]
    tpr = np.r_[0.0, true_positives / positives]
    thresholds = np.r_[np.inf, sorted_scores[last_of_each_value]]
    return fpr, tpr, thresholds


def evaluate_pairs(
    embeddings: Any,
    flipped: Any,
    issame: Sequence[bool] | np.ndarray,
    protocols: Sequence[str] = PROTOCOLS,
    folds: int = 10,
) -> dict[str, tuple[float, float]]:
    """Verification accuracy (mean, std) per protocol from per-image embeddings.

    ``embeddings`` and ``flipped`` have shape ``(2P, E)``: images ``2i`` and ``2i + 1`` form pair ``i`` (the
    ``.bin`` file order). Each protocol fuses the flips its own way (``FUSION_BY_PROTOCOL``).
    """
    if isinstance(protocols, str) or len(protocols) == 0:
        raise ValueError(f"protocols must be a non-empty sequence of names, got {protocols!r}")
    for protocol in protocols:
        _check_protocol(protocol)
    original = _as_float64(embeddings, "embeddings")
    mirrored = _as_float64(flipped, "flipped")
    labels = as_issame(issame)
    if original.ndim != 2 or original.shape[0] != 2 * labels.size:
        raise ValueError(
            f"embeddings must have shape (2 * {labels.size}, E) for {labels.size} pairs, got {original.shape}"
        )
    results: dict[str, tuple[float, float]] = {}
    for protocol in protocols:
        fused = fuse_flip(original, mirrored, FUSION_BY_PROTOCOL[protocol])
        results[protocol] = verification_accuracy(fused[0::2], fused[1::2], labels, protocol, folds)
    return results

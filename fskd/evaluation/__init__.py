"""fskd.evaluation: face-verification protocols (numpy) and their torchmetrics wrapper."""

from fskd.evaluation.metric import VerificationMetric
from fskd.evaluation.verification import (
    FUSION_BY_PROTOCOL,
    PROTOCOLS,
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

__all__ = [
    "FUSION_BY_PROTOCOL",
    "PROTOCOLS",
    "VerificationMetric",
    "evaluate_pairs",
    "fskd_best_threshold",
    "fskd_thresholds",
    "fuse_flip",
    "insightface_best_threshold",
    "insightface_thresholds",
    "pair_scores",
    "roc_points",
    "verification_accuracy",
]

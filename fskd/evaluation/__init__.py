"""fskd.evaluation: face verification (both 10-fold protocols) and identification, in numpy and plain PyTorch.

The torchmetrics wrapper that runs verification inside validation is `fskd.systems.metric.VerificationMetric`.
"""

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

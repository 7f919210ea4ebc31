"""Lightning callbacks: exact resumption and graceful stops (`resume`), failures of one DDP process
(`failures`), embedding files from ``predict`` (`embeddings`), a quiet console (`console`)."""

from fskd.callbacks.console import ParameterSummary, ProgressBar
from fskd.callbacks.embeddings import EmbeddingWriter
from fskd.callbacks.failures import PeerFailureWatch
from fskd.callbacks.resume import FskdCheckpoint, GlobalRNGState, GracefulSigterm

__all__ = ["EmbeddingWriter", "FskdCheckpoint", "GlobalRNGState", "GracefulSigterm", "ParameterSummary",
           "PeerFailureWatch", "ProgressBar"]

"""Lightning callbacks: k-shot selection (any anomalib model) and prediction files."""

from .kshot import KShotSelection
from .predictions import PredictionWriter

__all__ = ["KShotSelection", "PredictionWriter"]

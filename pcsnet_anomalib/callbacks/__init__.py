"""Lightning callbacks: k-shot selection (any anomalib model), a resumable training loader, prediction files."""

from .kshot import KShotSelection
from .predictions import PredictionWriter
from .resumable import ResumableTrainLoader

__all__ = ["KShotSelection", "PredictionWriter", "ResumableTrainLoader"]

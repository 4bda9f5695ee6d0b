"""Opt-in Lightning callbacks any anomalib model can take: k-shot selection, prediction files."""

from .kshot import KShotSelection
from .predictions import PredictionWriter

__all__ = ["KShotSelection", "PredictionWriter"]

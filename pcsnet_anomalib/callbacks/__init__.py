"""Opt-in Lightning callbacks any anomalib model can take: k-shot selection, threshold calibration, prediction files."""

from .calibration import CalibrationReport, OperatingPoint, ThresholdCalibration
from .kshot import KShotSelection
from .predictions import PredictionWriter

__all__ = ["CalibrationReport", "KShotSelection", "OperatingPoint", "PredictionWriter", "ThresholdCalibration"]

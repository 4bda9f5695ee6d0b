"""PFM and PEFM: pre-trained feature mapping between two frozen backbones (PEFM adds position encoding)."""

from .anomaly_map import AnomalyMapGenerator, level_error_map
from .lightning_model import Pefm, Pfm
from .loss import PfmLoss
from .torch_model import FeatureMapping, PfmModel, PfmTrainingOutput, position_encoding_2d

__all__ = [
    "AnomalyMapGenerator",
    "FeatureMapping",
    "Pefm",
    "Pfm",
    "PfmLoss",
    "PfmModel",
    "PfmTrainingOutput",
    "level_error_map",
    "position_encoding_2d",
]

"""PRN: prototypical residual networks (CVPR 2023), trained with a few real anomalies and generated ones."""

from .anomaly_generator import Kind, PrnAnomalyGenerator, default_texture_folder
from .anomaly_map import AnomalyMapGenerator
from .lightning_model import Prn
from .loss import PrnLoss, focal_loss
from .prototypes import MultiScalePrototypes, kmeans, number_of_prototypes
from .torch_model import (
    Decoder,
    MultiScaleFusion,
    MultiSizeSelfAttention,
    PatchAttention,
    PrnModel,
    ResidualBlock,
    check_input_size,
)

__all__ = [
    "AnomalyMapGenerator",
    "Decoder",
    "Kind",
    "MultiScaleFusion",
    "MultiScalePrototypes",
    "MultiSizeSelfAttention",
    "PatchAttention",
    "Prn",
    "PrnAnomalyGenerator",
    "PrnLoss",
    "PrnModel",
    "ResidualBlock",
    "check_input_size",
    "default_texture_folder",
    "focal_loss",
    "kmeans",
    "number_of_prototypes",
]

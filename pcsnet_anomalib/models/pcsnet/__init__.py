"""PCSNet: Prototypical learning guided Context-aware Segmentation Network (few-shot)."""

from .lightning_model import IncompatibleCheckpointError, NonFiniteLossError, Pcsnet
from .loss import PcsnetLoss, PcsnetLossWeights
from .torch_model import PcsnetModel

__all__ = [
    "IncompatibleCheckpointError",
    "NonFiniteLossError",
    "Pcsnet",
    "PcsnetLoss",
    "PcsnetLossWeights",
    "PcsnetModel",
]

"""PCSNet: Prototypical learning guided Context-aware Segmentation Network (few-shot)."""

from .lightning_model import NonFiniteLossError, Pcsnet
from .loss import PcsnetLoss, PcsnetLossWeights
from .torch_model import PcsnetModel

__all__ = ["NonFiniteLossError", "Pcsnet", "PcsnetLoss", "PcsnetLossWeights", "PcsnetModel"]

"""PCSNet: Prototypical learning guided Context-aware Segmentation Network (few-shot)."""

from pcsnet_anomalib.models.components import IncompatibleCheckpointError, NonFiniteLossError

from .lightning_model import Pcsnet
from .loss import PcsnetLoss, PcsnetLossWeights
from .synthesis import PatchExchange, object_mask
from .synthesis_presets import PatchExchangeConfig, available_presets, load_preset, preset_for_datamodule
from .torch_model import PcsnetModel

__all__ = [
    "IncompatibleCheckpointError",
    "NonFiniteLossError",
    "PatchExchange",
    "PatchExchangeConfig",
    "Pcsnet",
    "PcsnetLoss",
    "PcsnetLossWeights",
    "PcsnetModel",
    "available_presets",
    "load_preset",
    "object_mask",
    "preset_for_datamodule",
]

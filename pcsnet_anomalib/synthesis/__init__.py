"""Pseudo-anomaly synthesis (PCSNet patch exchange) and its per-dataset presets."""

from pcsnet_anomalib.synthesis.patch_exchange import PatchExchange, PatchExchangeConfig, object_mask
from pcsnet_anomalib.synthesis.presets import available_presets, load_preset, preset_for_datamodule

__all__ = [
    "PatchExchange",
    "PatchExchangeConfig",
    "available_presets",
    "load_preset",
    "object_mask",
    "preset_for_datamodule",
]

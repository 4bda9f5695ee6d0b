"""Models of pcsnet-anomalib, shaped like anomalib's own model folders."""

from .pcsnet import PatchExchange, PatchExchangeConfig, Pcsnet, PcsnetModel, load_preset

__all__ = ["PatchExchange", "PatchExchangeConfig", "Pcsnet", "PcsnetModel", "load_preset"]

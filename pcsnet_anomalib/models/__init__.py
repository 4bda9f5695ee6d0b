"""Models of pcsnet-anomalib, shaped like anomalib's own model folders."""

from .pcsnet import PatchExchange, PatchExchangeConfig, Pcsnet, PcsnetModel, load_preset
from .pfm import Pefm, Pfm, PfmModel

__all__ = ["PatchExchange", "PatchExchangeConfig", "Pcsnet", "PcsnetModel", "Pefm", "Pfm", "PfmModel", "load_preset"]

"""Models of pcsnet-anomalib, shaped like anomalib's own model folders."""

from .pcsnet import PatchExchange, PatchExchangeConfig, Pcsnet, PcsnetModel, load_preset
from .pfm import Pefm, Pfm, PfmModel
from .prn import Prn, PrnModel

__all__ = [
    "PatchExchange",
    "PatchExchangeConfig",
    "Pcsnet",
    "PcsnetModel",
    "Pefm",
    "Pfm",
    "PfmModel",
    "Prn",
    "PrnModel",
    "load_preset",
]

"""Models of pcsnet-anomalib, shaped like anomalib's own model folders."""

from .pcsnet import Pcsnet, PcsnetModel

__all__ = ["Pcsnet", "PcsnetModel"]

"""pcsnet-anomalib: the PCSNet few-shot anomaly detection model as an anomalib plugin."""

from pcsnet_anomalib.callbacks import KShotSelection, PredictionWriter
from pcsnet_anomalib.data import PcsnetDemo
from pcsnet_anomalib.models import Pcsnet, PcsnetModel
from pcsnet_anomalib.synthesis import PatchExchange, PatchExchangeConfig, load_preset

__all__ = [
    "KShotSelection",
    "PatchExchange",
    "PatchExchangeConfig",
    "Pcsnet",
    "PcsnetDemo",
    "PcsnetModel",
    "PredictionWriter",
    "load_preset",
]
__version__ = "0.2.0"

# Last: make Pcsnet and PcsnetDemo visible to anomalib's lookups (also done by the start-up hook).
from pcsnet_anomalib._plugin import register as _register

_register()

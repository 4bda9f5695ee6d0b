"""pcsnet-anomalib: few-shot anomaly detection models as an anomalib plugin (PCSNet).

Layers, each importing only from those before it: ``data`` (datamodules, the k-shot protocol) <- ``models``
<- ``callbacks`` (opt-in, for any anomalib model) <- ``benchmark`` (behind the ``benchmark`` extra, not
imported here).
"""

from pcsnet_anomalib.callbacks import KShotSelection, PredictionWriter
from pcsnet_anomalib.data import KShotMPDD, KShotMVTecAD, KShotPcsnetDemo, PcsnetDemo, select_k_shot
from pcsnet_anomalib.models import PatchExchange, PatchExchangeConfig, Pcsnet, PcsnetModel, load_preset

__all__ = [
    "KShotMPDD",
    "KShotMVTecAD",
    "KShotPcsnetDemo",
    "KShotSelection",
    "PatchExchange",
    "PatchExchangeConfig",
    "Pcsnet",
    "PcsnetDemo",
    "PcsnetModel",
    "PredictionWriter",
    "load_preset",
    "select_k_shot",
]
__version__ = "0.2.0"

# Last: make Pcsnet and PcsnetDemo visible to anomalib's lookups (also done by the start-up hook).
from pcsnet_anomalib._plugin import register as _register

_register()

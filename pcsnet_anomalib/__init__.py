"""pcsnet-anomalib: anomaly detection models anomalib lacks, as an anomalib plugin (PCSNet, PFM, PEFM, PRN).

Layers, each importing only from those before it: ``data`` (datamodules, the k-shot and anomalous-shots
protocols) <- ``models`` <- ``callbacks`` (opt-in, for any anomalib model) <- ``benchmark`` (behind the
``benchmark`` extra, not imported here).
"""

from pcsnet_anomalib.callbacks import KShotSelection, PredictionWriter, ThresholdCalibration
from pcsnet_anomalib.data import (
    KShotFolder,
    KShotMPDD,
    KShotMVTecAD,
    KShotPcsnetDemo,
    PcsnetDemo,
    select_anomalous_shots,
    select_k_shot,
)
from pcsnet_anomalib.models import (
    PatchExchange,
    PatchExchangeConfig,
    Pcsnet,
    PcsnetModel,
    Pefm,
    Pfm,
    PfmModel,
    Prn,
    PrnModel,
    load_preset,
)

__all__ = [
    "KShotFolder",
    "KShotMPDD",
    "KShotMVTecAD",
    "KShotPcsnetDemo",
    "KShotSelection",
    "PatchExchange",
    "PatchExchangeConfig",
    "Pcsnet",
    "PcsnetDemo",
    "PcsnetModel",
    "Pefm",
    "Pfm",
    "PfmModel",
    "PredictionWriter",
    "Prn",
    "PrnModel",
    "ThresholdCalibration",
    "load_preset",
    "select_anomalous_shots",
    "select_k_shot",
]
__version__ = "0.5.0"

# Last: make the models and datamodules visible to anomalib's lookups (also done by the start-up hook).
from pcsnet_anomalib._plugin import register as _register

_register()

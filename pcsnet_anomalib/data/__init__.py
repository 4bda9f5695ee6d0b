"""Data: the offline demo dataset in MVTec AD layout, the k-shot and few-real-anomalies protocols, resumable loaders.

The bottom layer of the package: it imports nothing from ``models``, ``callbacks`` or ``benchmark``.
"""

from pcsnet_anomalib.data.anomalous_shots import (
    AnomalousShotsMixin,
    check_anomalous_shots,
    defect_type,
    select_anomalous_shots,
)
from pcsnet_anomalib.data.demo import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    PcsnetDemo,
    demo_dataset_root,
    generate_demo_dataset,
    resolve_demo_root,
)
from pcsnet_anomalib.data.kshot import (
    KShotFolder,
    KShotMixin,
    KShotMPDD,
    KShotMVTecAD,
    KShotPcsnetDemo,
    check_k_shot,
    restrict_to,
    select_k_shot,
)
from pcsnet_anomalib.data.resumable import ResumableDataLoader, ResumableTrainLoaderMixin

__all__ = [
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "AnomalousShotsMixin",
    "KShotFolder",
    "KShotMPDD",
    "KShotMVTecAD",
    "KShotMixin",
    "KShotPcsnetDemo",
    "PcsnetDemo",
    "ResumableDataLoader",
    "ResumableTrainLoaderMixin",
    "check_anomalous_shots",
    "check_k_shot",
    "defect_type",
    "demo_dataset_root",
    "generate_demo_dataset",
    "resolve_demo_root",
    "restrict_to",
    "select_anomalous_shots",
    "select_k_shot",
]

"""Data: an offline demo dataset in MVTec AD layout, and k-shot variants of it, MVTec AD and MPDD."""

from pcsnet_anomalib.data.demo import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    PcsnetDemo,
    demo_dataset_root,
    generate_demo_dataset,
    resolve_demo_root,
)
from pcsnet_anomalib.data.kshot import KShotMixin, KShotMPDD, KShotMVTecAD, KShotPcsnetDemo

__all__ = [
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "KShotMPDD",
    "KShotMVTecAD",
    "KShotMixin",
    "KShotPcsnetDemo",
    "PcsnetDemo",
    "demo_dataset_root",
    "generate_demo_dataset",
    "resolve_demo_root",
]

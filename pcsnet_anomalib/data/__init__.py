"""Data: an offline demo dataset in MVTec AD layout, and MVTec AD with a k-shot training set."""

from pcsnet_anomalib.data.demo import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    PcsnetDemo,
    demo_dataset_root,
    generate_demo_dataset,
    resolve_demo_root,
)
from pcsnet_anomalib.data.kshot import KShotMVTecAD

__all__ = [
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "KShotMVTecAD",
    "PcsnetDemo",
    "demo_dataset_root",
    "generate_demo_dataset",
    "resolve_demo_root",
]

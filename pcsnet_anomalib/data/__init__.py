"""Data: an offline demo dataset in MVTec AD layout and its anomalib datamodule."""

from pcsnet_anomalib.data.demo import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    PcsnetDemo,
    demo_dataset_root,
    generate_demo_dataset,
    resolve_demo_root,
)

__all__ = [
    "DEFECT_TYPES",
    "DEMO_CATEGORIES",
    "PcsnetDemo",
    "demo_dataset_root",
    "generate_demo_dataset",
    "resolve_demo_root",
]

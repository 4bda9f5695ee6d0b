"""Backbone helpers: offline weights for timm feature extractors."""

from pcsnet_anomalib.backbones.weights import (
    PACKAGED_EFFICIENTNET_LITE0,
    TF_EFFICIENTNET_LITE0_LAYERS,
    build_feature_extractor,
    load_backbone_weights,
)

__all__ = [
    "PACKAGED_EFFICIENTNET_LITE0",
    "TF_EFFICIENTNET_LITE0_LAYERS",
    "build_feature_extractor",
    "load_backbone_weights",
]

"""Backbone helpers: offline weights for timm feature extractors."""

from pcsnet_anomalib.backbones.weights import (
    PACKAGED_EFFICIENTNET_LITE0,
    PACKAGED_EFFICIENTNET_LITE2,
    PACKAGED_WEIGHTS,
    TF_EFFICIENTNET_LITE0_LAYERS,
    PackagedWeights,
    build_feature_extractor,
    input_normalization,
    load_backbone_weights,
)

__all__ = [
    "PACKAGED_EFFICIENTNET_LITE0",
    "PACKAGED_EFFICIENTNET_LITE2",
    "PACKAGED_WEIGHTS",
    "TF_EFFICIENTNET_LITE0_LAYERS",
    "PackagedWeights",
    "build_feature_extractor",
    "input_normalization",
    "load_backbone_weights",
]

"""Anomaly map of PCSNet: CAS scores resized to the input and smoothed, as in the paper."""

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """Resize grid-level CAS scores to the image (bilinear) and apply a Gaussian blur (sigma 4 in the paper)."""

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.blur = GaussianBlur2d(sigma=sigma, channels=1) if sigma > 0 else nn.Identity()

    def forward(self, scores: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return the anomaly map ``(B, 1, *image_size)`` of ``scores (B, 1, h, w)``."""
        resized = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=True)
        return self.blur(resized)

"""Anomaly map of PCSNet: CAS scores resized to the input and smoothed, as in the paper."""

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from anomalib.models.components.filters.blur import compute_kernel_size
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """Resize grid-level CAS scores to the image (bilinear) and apply a Gaussian blur (sigma 4 in the paper)."""

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.blur = GaussianBlur2d(sigma=sigma, channels=1) if sigma > 0 else nn.Identity()
        self.sigma = sigma
        # The blur pads by reflection, which needs more pixels per side than the kernel's radius.
        self.min_size = compute_kernel_size(sigma) // 2 + 1 if sigma > 0 else 1

    def check_size(self, image_size: tuple[int, int] | torch.Size) -> None:
        """Raise ``ValueError`` if maps of ``image_size`` are too small for the blur."""
        if min(image_size) < self.min_size:
            msg = (
                f"Images of {tuple(image_size)} px are too small for the anomaly-map blur (blur_sigma={self.sigma} "
                f"needs at least {self.min_size} px a side): use larger images or a smaller blur_sigma."
            )
            raise ValueError(msg)

    def forward(self, scores: torch.Tensor, image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return the anomaly map ``(B, 1, *image_size)`` of ``scores (B, 1, h, w)``."""
        resized = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=True)
        return self.blur(resized)

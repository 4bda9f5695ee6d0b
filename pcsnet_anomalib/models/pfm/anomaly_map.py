"""Anomaly map of PFM/PEFM: per-level squared mapping errors, upsampled to the input and averaged."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def level_error_map(
    features: torch.Tensor,
    mapped: torch.Tensor,
    reverse_features: torch.Tensor,
    reverse_mapped: torch.Tensor,
) -> torch.Tensor:
    """One level's map ``(B, 1, h, w)``: the two directions' squared errors, summed over channels, averaged.

    A sum over channels (not a mean, unlike the loss): the features have unit norm per position and the
    mappings are not renormalised, so values lie roughly in ``[0, 4]`` (the authors' ``PEFM_AD.py:472-475``).
    """
    forward_error = (features - mapped).pow(2).sum(dim=1, keepdim=True)
    reverse_error = (reverse_features - reverse_mapped).pow(2).sum(dim=1, keepdim=True)
    return (forward_error + reverse_error) / 2


class AnomalyMapGenerator(nn.Module):
    """Upsample each level's error map to the input size (bilinear, ``align_corners=False``) and average them.

    No smoothing: the authors' Gaussian blur (sigma 4) is commented out in every published run.
    """

    def forward(self, level_maps: Sequence[torch.Tensor], image_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Return the anomaly map ``(B, 1, *image_size)``: the mean of the upsampled ``level_maps``."""
        size = tuple(image_size)
        upsampled = [F.interpolate(level, size=size, mode="bilinear", align_corners=False) for level in level_maps]
        return torch.stack(upsampled).mean(dim=0)

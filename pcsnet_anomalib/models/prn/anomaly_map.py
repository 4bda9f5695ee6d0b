"""Anomaly map and image score of PRN: the sigmoid of the decoder's logits and the mean of its top pixels."""

import torch
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """Map = ``sigmoid(logits)`` (no smoothing, as U); score = mean of the map's ``k`` highest pixels.

    ``k = max(1, round(topk_fraction * H * W))``: U's 100 pixels at 256 x 256 (``topk_fraction = 100 / 65536``),
    scaled with the resolution so that the score means the same at other input sizes.
    """

    def __init__(self, topk_fraction: float = 100 / 65536) -> None:
        super().__init__()
        if not 0.0 < topk_fraction <= 1.0:
            msg = f"topk_fraction must be in (0, 1], got {topk_fraction}."
            raise ValueError(msg)
        self.topk_fraction = topk_fraction

    def top_k(self, height: int, width: int) -> int:
        """Number of pixels averaged into the score of an ``height x width`` map."""
        return max(1, round(self.topk_fraction * height * width))

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the anomaly map ``(B, 1, H, W)`` of ``logits (B, 1, H, W)`` and the image scores ``(B,)``."""
        anomaly_map = torch.sigmoid(logits)
        k = self.top_k(*logits.shape[-2:])
        score = torch.topk(anomaly_map.flatten(1), k, dim=1).values.mean(dim=1)
        return anomaly_map, score

"""PCSNet losses: normal compactness, pseudo-anomalous separation, disparity classification (PDC), segmentation.

Total = w_normal * L_normal + w_anomalous * L_anomalous + w_pdc * L_PDC + w_seg * L_SEG,
with the paper's weights 1, 1, 50, 40.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .torch_model import PcsnetTrainingOutput


@dataclass(frozen=True)
class PcsnetLossWeights:
    """Weights of the four loss terms (the paper: 1, 1, 50, 40)."""

    normal: float = 1.0
    anomalous: float = 1.0
    pdc: float = 50.0
    segmentation: float = 40.0


def normal_compactness_loss(nearest: torch.Tensor, radius: torch.Tensor, nu: float) -> torch.Tensor:
    """Mean of ``relu(d_k - r^2)`` over the nearest prototypes of every position, divided by ``nu``.

    Zero when every normal feature lies within ``r^2`` of its nearest prototypes.
    """
    return F.relu(nearest - radius**2).mean() / nu


def anomalous_separation_loss(
    nearest: torch.Tensor,
    mask_weights: torch.Tensor,
    radius: torch.Tensor,
    alpha: float,
    nu: float,
) -> torch.Tensor:
    """Push pseudo-anomalous features out of the ``(r + alpha)^2`` margin, as the paper describes.

    ``nearest (B, HW, k)``: nearest-prototype distances; ``mask_weights (B, HW)``: the fraction of
    each grid cell covered by the synthetic defect. The result is the mask-weighted mean of
    ``relu((r + alpha)^2 - d_k)`` over the k nearest prototypes, divided by ``nu``; zero when no
    cell is covered.
    """
    per_position = F.relu((radius + alpha) ** 2 - nearest).mean(dim=-1)
    covered = mask_weights.sum()
    if covered <= 0:
        return per_position.sum() * 0.0
    return (per_position * mask_weights).sum() / covered / nu


def official_anomalous_separation_loss(
    distances: torch.Tensor,
    grid_mask: torch.Tensor,
    grid_size: tuple[int, int],
    radius: torch.Tensor,
    alpha: float,
    nu: float,
    n_nearest: int,
) -> torch.Tensor:
    """The anomalous term exactly as the official code computes it, kept for comparison.

    All distances ``(B, HW, N)`` are laid out as ``(B, N, h, w)``, multiplied by the grid mask
    (zeroing positions outside it), and the ``n_nearest`` smallest values are taken along the
    grid's width axis, not over the prototypes.
    """
    batch, _, num_prototypes = distances.shape
    laid_out = distances.transpose(1, 2).reshape(batch, num_prototypes, *grid_size) * grid_mask
    smallest = torch.topk(laid_out, n_nearest, dim=-1, largest=False).values
    return F.relu((radius + alpha) ** 2 - smallest).mean() / nu


def disparity_classification_loss(nearest: torch.Tensor, is_anomalous: torch.Tensor, top_k: int) -> torch.Tensor:
    """PDC: rank the mixed-in anomalous images above the normal ones across the batch.

    Each image's score is the mean of its ``top_k`` largest nearest-prototype distances
    (over all positions and neighbours); the loss is the softmax cross-entropy across the
    batch with the anomalous images as (summed) targets.
    """
    flat = nearest.flatten(1)
    scores = torch.topk(flat, min(top_k, flat.shape[1]), dim=1).values.mean(dim=1)
    return -(is_anomalous.to(scores.dtype) * F.log_softmax(scores, dim=0)).sum()


class PcsnetLoss(nn.Module):
    """The PCSNet training objective.

    Args:
        weights: weights of the four terms (1, 1, 50, 40).
        nu: divisor of the two prototype terms (1e-3).
        alpha: separation margin added to the radius for anomalous features (0.2).
        pdc_top_k: largest distances averaged into an image's PDC score (50).
        official_anomalous_term: compute the anomalous term as the official code does
            (nearly constant; see :func:`official_anomalous_separation_loss`) instead of the paper's.
    """

    def __init__(
        self,
        weights: PcsnetLossWeights | None = None,
        nu: float = 1e-3,
        alpha: float = 0.2,
        pdc_top_k: int = 50,
        official_anomalous_term: bool = False,
    ) -> None:
        super().__init__()
        self.weights = weights or PcsnetLossWeights()
        self.nu = nu
        self.alpha = alpha
        self.pdc_top_k = pdc_top_k
        self.official_anomalous_term = official_anomalous_term

    def forward(
        self,
        outputs: PcsnetTrainingOutput,
        radius: torch.Tensor,
        anomaly_mask: torch.Tensor,
        mixed_is_anomalous: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Return each term and the weighted ``loss``.

        ``anomaly_mask (B, 1, H, W)``: the synthetic-defect mask of the anomalous view;
        ``mixed_is_anomalous (B,)``: which images of the mixed view are anomalous.
        """
        grid_mask = F.adaptive_avg_pool2d(anomaly_mask, outputs.grid_size)
        normal = normal_compactness_loss(outputs.normal_nearest, radius, self.nu)
        if self.official_anomalous_term:
            if outputs.anomalous_distances is None:
                msg = (
                    "The official anomalous term needs all distances: "
                    "call training_outputs(keep_anomalous_distances=True)."
                )
                raise ValueError(msg)
            anomalous = official_anomalous_separation_loss(
                outputs.anomalous_distances,
                grid_mask,
                outputs.grid_size,
                radius,
                self.alpha,
                self.nu,
                outputs.anomalous_nearest.shape[-1],
            )
        else:
            anomalous = anomalous_separation_loss(
                outputs.anomalous_nearest, grid_mask.flatten(1), radius, self.alpha, self.nu
            )
        pdc = disparity_classification_loss(outputs.mixed_nearest, mixed_is_anomalous, self.pdc_top_k)
        mixed_mask = anomaly_mask * mixed_is_anomalous.view(-1, 1, 1, 1).to(anomaly_mask.dtype)
        segmentation = F.mse_loss(outputs.segmentation, mixed_mask)
        loss = (
            self.weights.normal * normal
            + self.weights.anomalous * anomalous
            + self.weights.pdc * pdc
            + self.weights.segmentation * segmentation
        )
        return {"loss": loss, "normal": normal, "anomalous": anomalous, "pdc": pdc, "segmentation": segmentation}

"""Loss of PRN: an L1-type term plus a weighted focal term on the per-pixel anomaly probabilities (U's formulas)."""

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

FOCAL_SMOOTHING = 1e-5
"""U's focal loss clamps the one-hot target to ``[1e-5, 1 - 1e-5]`` and adds ``1e-5`` to ``p_t`` (log of 0)."""


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Mean over pixels of ``-alpha (1 - p_t)^gamma log(p_t)`` for two classes (normal, anomalous).

    ``p_t = t_s * s + (1 - t_s) * (1 - s) + 1e-5`` with the smoothed target ``t_s = clamp(t, 1e-5, 1 - 1e-5)`` and
    ``s`` the anomaly probability: U's ``FocalLoss(alpha=0.5, gamma=4)`` (one ``alpha`` for both classes).
    """
    smoothed = target.clamp(FOCAL_SMOOTHING, 1.0 - FOCAL_SMOOTHING)
    p_t = smoothed * probabilities + (1.0 - smoothed) * (1.0 - probabilities) + FOCAL_SMOOTHING
    return (-alpha * (1.0 - p_t).pow(gamma) * p_t.log()).mean()


class PrnLoss(nn.Module):
    """``L = L_1 + focal_weight * L_focal`` on ``s = sigmoid(logits)`` against the binary mask (``PRN.md`` §4).

    Args:
        focal_weight: weight of the focal term (5 in U).
        focal_gamma: focusing exponent (4 in U).
        focal_alpha: class weight, the same for both classes (0.5 in U).
        l1_kind: ``"smooth_l1"`` (U: smooth L1 with beta 1, which on ``[0, 1]`` values is half the squared error)
            or ``"l1"`` (mean absolute error).
    """

    def __init__(
        self,
        focal_weight: float = 5.0,
        focal_gamma: float = 4.0,
        focal_alpha: float = 0.5,
        l1_kind: str = "smooth_l1",
    ) -> None:
        super().__init__()
        if l1_kind not in {"smooth_l1", "l1"}:
            msg = f"l1_kind must be 'smooth_l1' or 'l1', got {l1_kind!r}."
            raise ValueError(msg)
        self.focal_weight, self.focal_gamma, self.focal_alpha, self.l1_kind = (
            focal_weight,
            focal_gamma,
            focal_alpha,
            l1_kind,
        )

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss", "l1", "focal"}`` for ``logits (B, 1, H, W)`` and ``masks`` of the same shape in {0, 1}."""
        probabilities = torch.sigmoid(logits)
        masks = masks.to(probabilities.dtype)
        if self.l1_kind == "smooth_l1":
            l1 = F.smooth_l1_loss(probabilities, masks, beta=1.0)
        else:
            l1 = F.l1_loss(probabilities, masks)
        focal = focal_loss(probabilities, masks, self.focal_alpha, self.focal_gamma)
        return {"loss": l1 + self.focal_weight * focal, "l1": l1, "focal": focal}

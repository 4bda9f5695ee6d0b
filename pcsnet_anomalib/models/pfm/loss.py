"""Loss of PFM/PEFM: mean squared mapping error of both directions, summed over levels."""

import torch
from torch import nn

from .torch_model import PfmTrainingOutput


class PfmLoss(nn.Module):
    """Σ_levels [mean((f_S - ŝ)²) + mean((f_T - t̂)²)], each mean over batch, channels and positions.

    The authors train the three levels with three Adam optimizers (one per level) on each level's term; the
    levels' parameters are disjoint and each term depends on its own level only, so one Adam over the sum with
    a parameter group per level gives the same updates (``Pfm.configure_optimizers``).
    """

    def forward(self, outputs: PfmTrainingOutput) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "level_<i>": term}`` for the levels of ``outputs``."""
        terms = {
            f"level_{index}": (source - source_mapped).pow(2).mean() + (target - target_mapped).pow(2).mean()
            for index, (source, target, source_mapped, target_mapped) in enumerate(
                zip(
                    outputs.source_features,
                    outputs.target_features,
                    outputs.source_mapped,
                    outputs.target_mapped,
                    strict=True,
                ),
                start=1,
            )
        }
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}

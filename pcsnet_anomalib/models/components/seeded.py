"""Modules that draw random numbers from a generator of their own, saved in their own state.

A model trained with pseudo-anomalies, random batch mixing or dropout draws random numbers every step.
Drawing them from torch's global RNG makes a result depend on whatever else used that RNG (a data
loader, another model, the user's code), and a resumed fit continues with another stream unless
someone saves and restores the global state by hand. Here each module that draws owns a
``torch.Generator`` seeded from its constructor's ``seed``; its state is part of the module's
``state_dict`` (``get_extra_state`` / ``set_extra_state``, as anomalib's SuperSimpleNet does), so a
Lightning checkpoint carries it and a resumed fit continues the same stream with no bookkeeping.

Generators live on the CPU: the draws are small (a few numbers per image or channel) and are moved
to the data's device, so results do not depend on the accelerator.
"""

from typing import Any

import numpy as np
import torch
from torch import nn


def stream_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for the random stream ``stream`` of ``seed``: independent streams from one user seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededModule(nn.Module):
    """Base of modules that draw from their own seeded ``torch.Generator`` (kept in ``state_dict``).

    Args:
        seed: the user's seed.
        stream: tells apart the streams of several modules built from the same ``seed``.
    """

    def __init__(self, seed: int, stream: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(stream_seed(seed, stream))

    def get_extra_state(self) -> dict[str, Any]:
        """The generator's state, saved with the weights."""
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Continue the random stream saved by :meth:`get_extra_state`."""
        self.generator.set_state(state["generator"])


class SeededDropout2d(SeededModule):
    """``nn.Dropout2d`` (zero whole channels with probability ``p``, scale the rest) drawing from its own generator."""

    def __init__(self, p: float, seed: int, stream: int = 0) -> None:
        super().__init__(seed, stream)
        if not 0.0 <= p < 1.0:
            msg = f"Dropout probability must be in [0, 1), got {p}."
            raise ValueError(msg)
        self.p = p

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Drop channels of ``features (B, C, H, W)`` in training mode; identity in eval mode."""
        if not self.training or self.p == 0.0:
            return features
        keep = torch.rand(features.shape[:2], generator=self.generator) >= self.p
        scale = keep.to(device=features.device, dtype=features.dtype) / (1.0 - self.p)
        return features * scale[..., None, None]


class RandomSubset(SeededModule):
    """Choose ``ceil(fraction * n)`` of ``n`` items at random, drawing from its own generator."""

    def __init__(self, seed: int, fraction: float = 0.5, stream: int = 0) -> None:
        super().__init__(seed, stream)
        if not 0.0 <= fraction <= 1.0:
            msg = f"fraction must be in [0, 1], got {fraction}."
            raise ValueError(msg)
        self.fraction = fraction

    def forward(self, count: int, device: torch.device | None = None) -> torch.Tensor:
        """A boolean mask ``(count,)`` with ``ceil(fraction * count)`` randomly placed ``True`` values."""
        chosen = torch.randperm(count, generator=self.generator)[: int(np.ceil(self.fraction * count))]
        mask = torch.zeros(count, dtype=torch.bool)
        mask[chosen] = True
        return mask.to(device)
